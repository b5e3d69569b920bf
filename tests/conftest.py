"""The suite's shared fixtures, loaded from ``tests/support`` (see there for what each module gives)."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.services",
    "tests.support.settings",
    "tests.support.pipeline",
    "tests.support.crash",
    "tests.support.guard",
]
