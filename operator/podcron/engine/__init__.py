"""The scheduling engine: timers, dispatch, overlap policies, timeouts, shutdown.

Pure asyncio: it knows nothing of Kubernetes or kopf. The operator registers
jobs with :meth:`Engine.upsert` and learns what happens through listeners.
docs/engine.md explains the model and its budgets; the modules here:

* :mod:`~podcron.engine.engine`: :class:`Engine`, registration and ticks;
* :mod:`~podcron.engine.runner`: dispatch, and each run's start → execute → record;
* :mod:`~podcron.engine.runs`: a run's state and the execution of its body;
* :mod:`~podcron.engine.recording`: an outcome into the job's history and run history;
* :mod:`~podcron.engine.budgets`, :mod:`~podcron.engine.threads`: run slots,
  threads, and threads that outlive their run;
* :mod:`~podcron.engine.duequeue`: every job's next tick, for the engine's one timer;
* :mod:`~podcron.engine.gate`: what the engine asks before a tick with several replicas;
  :mod:`~podcron.engine.gating`: ticks held back, and the catch-up of a gained job;
* :mod:`~podcron.engine.clock`: the wall clock, injectable for tests.
"""

from podcron.engine.budgets import MANUAL_RETRY_AFTER_SECONDS
from podcron.engine.clock import SYSTEM_CLOCK, Clock
from podcron.engine.engine import DISPATCH_BATCH, MAX_SLEEP_SECONDS, Engine
from podcron.engine.events import (
    ABANDON_AFTER_SECONDS,
    JobEvent,
    Listener,
    RunFinished,
    RunStarted,
    ThreadAbandoned,
    ThreadReturned,
)
from podcron.engine.runner import RUN_TASK_PREFIX
from podcron.engine.runs import ERROR_TEXT_LIMIT
from podcron.engine.shutdown import INTERRUPTED, NOT_STARTED
from podcron.engine.spec import ConcurrencyPolicy, JobSnapshot, JobSpec
from podcron.runrecord import FailedRun, History, PastRun, RunCounts, RunStatus

__all__ = [
    "ABANDON_AFTER_SECONDS",
    "DISPATCH_BATCH",
    "ERROR_TEXT_LIMIT",
    "INTERRUPTED",
    "MANUAL_RETRY_AFTER_SECONDS",
    "MAX_SLEEP_SECONDS",
    "NOT_STARTED",
    "RUN_TASK_PREFIX",
    "SYSTEM_CLOCK",
    "Clock",
    "ConcurrencyPolicy",
    "Engine",
    "FailedRun",
    "History",
    "JobEvent",
    "JobSnapshot",
    "JobSpec",
    "Listener",
    "PastRun",
    "RunCounts",
    "RunFinished",
    "RunStarted",
    "RunStatus",
    "ThreadAbandoned",
    "ThreadReturned",
]
