"""team_a: a small report of the current time in the offices' time zones."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

OFFICES = {"amsterdam": "Europe/Amsterdam", "new_york": "America/New_York", "singapore": "Asia/Singapore"}


@dag(
    dag_id="team_a_timezone_report",
    schedule="0 6 * * 1-5",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["team_a"],
)
def timezone_report():
    @task(queue="team_a")
    def local_times() -> dict[str, str]:
        now = pendulum.now("UTC")
        return {office: now.in_timezone(tz).format("YYYY-MM-DD HH:mm") for office, tz in OFFICES.items()}

    local_times()


timezone_report()
