"""A module outside ``allowedModules``: nothing here may run as a ScheduledJob.

Each callable leaves a file named after the job in ``$PODCRON_TEST_CANARY_DIR`` when it is
called, so that a test can show it never was.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podcron import JobContext


def touch(ctx: JobContext) -> None:
    """Record that this was called."""
    Path(os.environ["PODCRON_TEST_CANARY_DIR"], ctx.name).write_text(ctx.job_id)


class Toucher:
    """An object that touches the canary when called."""

    def __call__(self, ctx: JobContext) -> None:
        touch(ctx)


def wrapping(function: Callable[[JobContext], Any]) -> Callable[[JobContext], Any]:
    """A decorator that keeps the function's identity (functools.wraps)."""

    @functools.wraps(function)
    def wrapper(ctx: JobContext) -> Any:
        return function(ctx)

    return wrapper


def replacing(function: Callable[[JobContext], Any]) -> Callable[[JobContext], Any]:
    """A decorator that replaces the function with its own code."""

    def wrapper(ctx: JobContext) -> Any:
        touch(ctx)
        return function(ctx)

    return wrapper
