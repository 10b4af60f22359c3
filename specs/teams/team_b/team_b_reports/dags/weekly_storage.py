"""team_b: a weekly table of storage use per dataset, sizes in human units."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

DATASETS = {"clicks": 73_400_320_000, "orders": 1_288_490_188, "refunds": 12_582_912}


@dag(
    dag_id="team_b_weekly_storage",
    schedule="@weekly",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    tags=["team_b", "reports"],
)
def weekly_storage():
    @task(queue="team_b")
    def sizes() -> dict[str, int]:
        return dict(DATASETS)

    @task(queue="team_b")
    def render(sizes: dict[str, int]) -> str:
        import humanize
        from tabulate import tabulate

        rows = [(name, humanize.naturalsize(size)) for name, size in sorted(sizes.items())]
        table = tabulate(rows, headers=["dataset", "size"], tablefmt="github")
        print(table)
        return table

    render(sizes())


weekly_storage()
