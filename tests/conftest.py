"""Shared test set-up. Fixtures live in tests/fixtures/*, one module per concern."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.media",
    "tests.fixtures.rtsp",
    "tests.fixtures.api",
    "tests.fixtures.services",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (CI=true runs them too)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (CI runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
