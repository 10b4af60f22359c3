"""team_a: pull yesterday's event counts from the events API and report the busiest hour."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(
    dag_id="team_a_daily_events",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["team_a", "analytics"],
)
def daily_events():
    @task(queue="team_a")
    def fetch(data_interval_start=None) -> dict[str, int]:
        import requests

        day = pendulum.instance(data_interval_start).to_date_string()
        response = requests.get("https://events.acme.internal/api/v1/counts", params={"day": day}, timeout=30)
        response.raise_for_status()
        return {str(k): int(v) for k, v in response.json().get("hourly", {}).items()}

    @task(queue="team_a")
    def busiest_hour(counts: dict[str, int]) -> str:
        if not counts:
            return "no events"
        hour = max(counts, key=counts.__getitem__)
        return f"busiest hour {hour}: {counts[hour]} events"

    busiest_hour(fetch())


daily_events()
