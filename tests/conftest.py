"""Shared pytest configuration: real-service fixtures live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.kube",
    "tests.fixtures.postgres",
    "tests.fixtures.witness",
    "tests.fixtures.prometheus",
]
