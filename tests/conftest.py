"""Shared test set-up. Fixtures live in tests/fixtures/*, one module per concern."""

pytest_plugins = [
    "tests.fixtures.media",
    "tests.fixtures.rtsp",
    "tests.fixtures.api",
    "tests.fixtures.services",
]
