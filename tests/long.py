"""The long runs (faults, load, the full tamper count) run when REEF_LONG_TESTS=1: CI sets it once
per build (.ci/run); a developer's `make test` skips them unless asked."""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("REEF_LONG_TESTS", "") not in ("", "0")

long_run = pytest.mark.skipif(
    not LONG, reason="a long run: set REEF_LONG_TESTS=1 (CI does, once per build)"
)
