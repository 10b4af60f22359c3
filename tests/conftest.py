"""Shared pytest configuration. Fixtures live in `tests/fixtures/<area>.py`, one module per area,
registered here as plugins so every suite can use them."""

pytest_plugins = [
    "tests.fixtures.tools",
    "tests.fixtures.wheelhouse",
    "tests.fixtures.build",
    "tests.fixtures.registry",
    "tests.fixtures.s3",
    "tests.fixtures.sigstore",
    "tests.fixtures.airflow",
    "tests.fixtures.debian",
]
