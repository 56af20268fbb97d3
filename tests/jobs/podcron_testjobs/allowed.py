"""The module tests put in ``allowedModules``: jobs that may run, and paths out of the module
that must not.

Runnable: functions written here (``def``, ``async def``, a lambda), methods of classes
defined here, instances of those whose ``__call__`` is written here, and functions wrapped by
a decorator that keeps their identity. Everything imported from elsewhere is refused, however
it is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os  # noqa: F401 - a path out of the module: "podcron_testjobs.allowed:os.system"
import sys  # noqa: F401 - "podcron_testjobs.allowed:sys.exit"
import time  # noqa: F401 - "podcron_testjobs.allowed:time.sleep"
import types
from os import system  # noqa: F401 - a re-export: "podcron_testjobs.allowed:system"

from podcron import JobContext

from . import outside
from .outside import Toucher, touch

_runs: dict[str, int] = {}


def _count(ctx: JobContext) -> int:
    """How many runs of this job this process has started, this one included."""
    _runs[ctx.job_id] = _runs.get(ctx.job_id, 0) + 1
    return _runs[ctx.job_id]


async def hello(ctx: JobContext) -> None:
    """A job that may run."""
    ctx.log.info("allowed hello from %s", ctx.job_id)


def plain(ctx: JobContext) -> None:
    """A plain ``def`` job that may run."""
    ctx.log.info("allowed plain from %s", ctx.job_id)


def calls_outside(ctx: JobContext) -> None:
    """Written here, so it may run; what it calls is its own business."""
    outside.touch(ctx)


# A lambda written here is code written here: it may run.
short = lambda ctx: None  # noqa: E731


async def fails_then_succeeds(ctx: JobContext) -> None:
    """Fail the first ``args.failures`` runs, then succeed."""
    run = _count(ctx)
    if run <= int(ctx.args.get("failures", 0)):
        raise RuntimeError(f"planned failure {run}")


async def succeeds_then_hangs(ctx: JobContext) -> None:
    """Succeed on the first run; later runs last until cancelled (at most ``args.seconds``)."""
    if _count(ctx) > 1:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.cancelled.wait(), float(ctx.args.get("seconds", 120)))


class Jobs:
    """A class defined here: its own methods may run."""

    def nightly(self, ctx: JobContext) -> None:
        ctx.log.info("allowed nightly from %s", ctx.job_id)

    @staticmethod
    def static(ctx: JobContext) -> None:
        ctx.log.info("allowed static from %s", ctx.job_id)

    @classmethod
    def of_class(cls, ctx: JobContext) -> None:
        ctx.log.info("allowed class method from %s", ctx.job_id)


jobs = Jobs()


class CallableJob:
    """Instances are jobs: ``__call__`` is written here."""

    def __call__(self, ctx: JobContext) -> None:
        ctx.log.info("allowed callable from %s", ctx.job_id)


callable_job = CallableJob()


@outside.wrapping
def decorated(ctx: JobContext) -> None:
    """Wrapped by a decorator that keeps the function's identity: still a job of this module."""
    ctx.log.info("allowed decorated from %s", ctx.job_id)


# -- paths out of the module: each must be refused ----------------------------------------


class InheritsCall(Toucher):
    """Defined here, but its ``__call__`` is inherited from outside."""


inherited_call = InheritsCall()
toucher = Toucher()
partial_touch = functools.partial(touch)
# A method object around a built-in, bound to an object of a class defined here: it runs print.
bound_print = types.MethodType(print, jobs)
# Even around a function written here: a partial object is not a function.
partial_plain = functools.partial(plain)


@outside.replacing
def replaced(ctx: JobContext) -> None:
    """Replaced by a decorator's own code from outside: not a job of this module."""
