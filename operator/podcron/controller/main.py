"""``podcron operator``: the engine and the kopf handlers in one asyncio loop.

Start-up takes the API credentials, the metrics port and the control socket
before anything else, so that a configuration that cannot work ends at once
with one line (:class:`StartupError`). The operator is ready once it holds
every ScheduledJob that existed when it started (:mod:`.readiness`).

Shutdown has one budget, ``shutdownTimeoutSeconds`` from the signal on, so
that it ends inside the pod's grace period; docs/operations.md gives the
order and the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
import yaml

from podcron import latency, resources
from podcron.config import Settings
from podcron.controller import resource
from podcron.controller.control_socket import ControlServer
from podcron.controller.events import EventRecorder
from podcron.controller.handlers import Reconciler
from podcron.controller.kubeapi import KubeApi
from podcron.controller.probes import ProbeServer
from podcron.controller.readiness import Key, StartupGate, watch_startup
from podcron.controller.replicas import Replicas
from podcron.controller.status import StatusWriter
from podcron.engine import Engine
from podcron.engine.clock import SYSTEM_CLOCK, OffsetClock
from podcron.errors import JobConfigError, StartupError
from podcron.jobconfig import ConfigSource
from podcron.telemetry import logs, span_export
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.resource_metrics import ResourceMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

log = logging.getLogger("podcron.operator")

#: Of the shutdown budget, what is kept for after the runs (at most half of
#: it): recording the runs it interrupts, which the engine gives up to a
#: second, then writing every job's last status and exporting the last spans.
STATUS_RESERVE_SECONDS = 5.0
#: How long kopf's watchers get at shutdown to finish the event in hand. The
#: events still queued are echoes of status patches, or changes the next
#: operator handles anyway: kopf compares each object with the state it
#: last handled, recorded in the object's annotations.
KOPF_EXIT_SECONDS = 0.3
#: kopf's per-object workers at once. Unbounded (kopf's default), start-up handles every
#: ScheduledJob at once: 10,000 handler calls, annotation patches and their replies in
#: flight together left a 600 MiB peak that Python's allocator kept (docs/performance.md,
#: "Memory at 10,000 jobs"). Bounded, they are handled a batch at a time: 240-266 MiB.
KOPF_WORKERS = 50
#: A worker's place is held this long after its object's last event (kopf: 5 s): with the
#: workers bounded, that wait would pace start-up.
KOPF_WORKER_IDLE_SECONDS = 0.2
#: Status patches in flight at once when the last status is written at shutdown.
FLUSH_CONCURRENCY = 64
#: A shutdown still running this long after its budget is cut short.
HARD_EXIT_SECONDS = 10.0
#: How long the exit waits for idle worker threads to end.
EXIT_JOIN_SECONDS = 0.2


def run_budget(shutdown_timeout: float) -> float:
    """How long running jobs get at shutdown, out of the whole budget."""
    return shutdown_timeout - min(STATUS_RESERVE_SECONDS, shutdown_timeout / 2)


def _configure_kopf(operator: kopf.OperatorSettings, handled: kopf.DiffBaseStorage) -> None:
    # podcron posts its own Events (state changes and failures only); kopf's
    # per-handler Events would flood the namespace.
    operator.posting.enabled = False
    # Written only while kopf retries a handler that raised.
    operator.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=resource.KOPF_PREFIX
    )
    operator.persistence.diffbase_storage = handled
    operator.queueing.exit_timeout = KOPF_EXIT_SECONDS
    operator.queueing.worker_limit = KOPF_WORKERS
    operator.queueing.idle_timeout = KOPF_WORKER_IDLE_SECONDS
    operator.watching.server_timeout = 300
    # kopf logs every handler call at INFO, and the deletion watcher is called
    # for every watch event (every status patch): a thousand jobs would log
    # hundreds of empty lines a second. Warnings still show; DEBUG shows all.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _kube_api() -> KubeApi:
    try:
        # One connection per thread that calls: the status writer's and the event recorder's.
        return KubeApi.from_environment(pool_size=FLUSH_CONCURRENCY + 4)
    except kubernetes.config.ConfigException as error:
        raise StartupError(
            f"no Kubernetes credentials ({error}): outside a pod, point KUBECONFIG at a "
            "kubeconfig file or create ~/.kube/config"
        ) from None
    except (OSError, TypeError, ValueError, yaml.YAMLError) as error:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise StartupError(f"the kubeconfig {where} cannot be used ({error}); fix it") from None


class _Shutdown:
    """The one shutdown budget, from the signal on, and what must stop the moment it starts."""

    def __init__(
        self,
        budget: float,
        stop: asyncio.Event,
        control: ControlServer,
        replicas: Replicas | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.budget = budget
        self._stop = stop
        self._control = control
        self._replicas = replicas
        self._deadline: float | None = None
        self._control_stopped: asyncio.Task[None] | None = None
        #: With several replicas: the release of this one's jobs, begun at the signal.
        self.released: asyncio.Task[None] | None = None

    def begin(self, why: str) -> float:
        """Start the shutdown, once; returns when its budget ends (loop time).

        ``/readyz`` answers 503 and kopf stops its watchers (both watch
        ``stop``), and the control socket closes: no more manual runs, and
        the sidecar reports the operator gone at once.
        """
        if self._deadline is None:
            self._deadline = self._loop.time() + self.budget
            log.info("%s: shutting down within %ss", why, self.budget)
            self._stop.set()
            self.stop_control()
            if self._replicas is not None:
                # First of all, so that the jobs move on while this replica drains.
                self.released = self._loop.create_task(
                    self._replicas.agent.release(), name="podcron release"
                )
            self._loop.call_later(self.budget + HARD_EXIT_SECONDS, _hard_exit)
        return self._deadline

    def stop_control(self) -> asyncio.Task[None]:
        """The control socket's one stop: every caller awaits the same task."""
        if self._control_stopped is None:
            self._control_stopped = self._loop.create_task(
                self._control.stop(), name="podcron control stop"
            )
        return self._control_stopped


async def _listen(
    probes: ProbeServer,
    control: ControlServer,
    shutdown: _Shutdown,
    settings: Settings,
    teardown: contextlib.AsyncExitStack,
) -> None:
    """Take the metrics port and the control socket, or raise :class:`StartupError`."""
    address = f"{settings.metrics_host}:{settings.metrics_port}"
    try:
        await probes.start()
    except OSError as error:
        reason = "the port is in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise StartupError(
            f"cannot serve /metrics on {address} ({reason}): set metricsPort "
            "(PODCRON_METRICS_PORT) or metricsHost to a free address"
        ) from None
    teardown.push_async_callback(probes.stop)
    try:
        await control.start()
    except (OSError, RuntimeError) as error:
        if isinstance(error, OSError):
            reason = f"cannot serve the control socket {settings.control_socket}: {error.strerror}"
        else:
            reason = str(error)
        raise StartupError(
            f"{reason}; stop the operator that serves it, or set controlSocket "
            "(PODCRON_CONTROL_SOCKET)"
        ) from None
    teardown.push_async_callback(shutdown.stop_control)
    log.info(
        "serving /metrics, /healthz and /readyz on %s:%d; control socket %s",
        settings.metrics_host,
        probes.port,
        settings.control_socket,
    )


def _job_config(settings: Settings) -> ConfigSource:
    """``ctx.config``'s source, read once now; raises :class:`StartupError` naming a bad directory.

    From here on, no log line carries one of its Secret values.
    """
    config = ConfigSource(settings.job_config_dir or None, settings.job_secrets_dir or None)
    try:
        config.load()
    except JobConfigError as error:
        raise StartupError(str(error)) from None
    if settings.job_secrets_dir:
        logs.redact_with(config.redact_known)
    return config


def _failed(status: Mapping[str, Any]) -> bool:
    """Whether a status update reports a failed run: interrupted ones at shutdown among them."""
    return status.get("lastRunStatus") == "failure"


def _hard_exit() -> None:
    log.error("shutdown still running %ss past its budget: exiting now", HARD_EXIT_SECONDS)
    logs.stop_background_writer()
    os._exit(1)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they have ended."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)


@dataclass
class _Drain:
    """The runs end; then the shared resources close beside the last status, Events and spans.

    docs/operations.md, steps 3-5.
    """

    shutdown: _Shutdown
    engine: Engine
    shared: resources.ResourceManager
    writer: StatusWriter
    writer_task: asyncio.Task[None]
    events: EventRecorder
    flush_spans: Callable[[float], object] | None

    async def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        end = self.shutdown.begin("kopf stopped")
        await self.shutdown.stop_control()
        if self.shutdown.released is not None:
            await self.shutdown.released
        await self.engine.shutdown()
        log.info("runs ended %.2fs after the signal", loop.time() - (end - self.shutdown.budget))
        # No run holds a resource any more. They close (newest first) beside the
        # status flush and the span export, which need none of them.
        resources_closed = asyncio.create_task(
            self.shared.close(max(0.0, end - loop.time())), name="podcron resources close"
        )
        flush_spans = self.flush_spans
        spans_flushed = (
            asyncio.create_task(
                asyncio.to_thread(flush_spans, end - loop.time()), name="podcron span flush"
            )
            if flush_spans is not None
            else None
        )
        await _cancel([self.writer_task])
        started, pending = loop.time(), self.writer.pending
        unsent, _closed = await asyncio.gather(
            self.writer.flush(until=end, first=_failed), self.events.close()
        )
        log.info(
            "wrote the last status of %d of %d jobs in %.2fs",
            pending - unsent,
            pending,
            loop.time() - started,
        )
        if unsent:
            log.warning(
                "the last status of %d jobs was not written within shutdownTimeoutSeconds (%ss)",
                unsent,
                self.shutdown.budget,
            )
        self.writer.close()
        await resources_closed
        if spans_flushed is not None:
            await spans_flushed


async def run(settings: Settings) -> None:
    """Run the operator until SIGTERM/SIGINT, then shut down within the budget.

    Everything is built first, then the ports are taken, then the tasks and
    kopf's handlers start. One exit stack tears it all down, in this order
    (docs/operations.md gives the budget of each step): at the signal,
    ``/readyz`` turns 503, kopf stops and the control socket closes; then the
    runs end, the shared resources close while the last status, Events and
    spans go out (:class:`_Drain`); the
    readiness and heap-freezer tasks are cancelled, the control socket's stop
    is awaited, and the metrics port closes. kopf's cleanup handler unwinds
    the stack while kopf still runs, so that the runs' outcomes still reach
    status; should it never run, leaving the ``async with`` unwinds it.
    """
    loop = asyncio.get_running_loop()
    api = _kube_api()
    config = _job_config(settings)
    shared = resources.ResourceManager(resources.discover(), config=config)
    ResourceMetrics(lambda: ((state.name, state.up, state.failures) for state in shared.states()))
    # Without a Secret there is nothing to take out of spans: no copy of each before export.
    spans = span_export.configure_tracing(config.redact_known if settings.job_secrets_dir else None)
    # With replicas, ticks go by the API server's clock (docs/ha.md, "Time"); alone, by the node's.
    clock = OffsetClock()
    replicas = Replicas.from_settings(settings, clock) if settings.ha_ring else None
    # It tells the reconciler of the jobs it gains; the reconciler needs the engine: set below.
    firing_gate = None if replicas is None else replicas.gate()
    # Not in the registry: /metrics takes its text directly, eight times faster (probes).
    job_metrics = JobMetrics(registry=None)
    engine = Engine(
        max_concurrent_runs=settings.max_concurrent_runs,
        max_manual_runs=settings.max_manual_runs,
        worker_threads=settings.worker_threads,
        threads_per_job=settings.threads_per_job,
        shutdown_timeout_seconds=run_budget(settings.shutdown_timeout_seconds),
        telemetry=RunTelemetry(metrics=job_metrics, spans=spans),
        resources=shared,
        config=config,
        gate=firing_gate,
        run_history_limit=settings.run_history_limit,
        clock=SYSTEM_CLOCK if replicas is None else clock,
    )
    if replicas is not None and replicas.server_time is not None:
        replicas.server_time.moved = engine.clock_moved
    writer = StatusWriter(
        api.patch_status,
        patches_per_second=settings.status_patches_per_second,
        flush_concurrency=FLUSH_CONCURRENCY,
        read=api.read_status,
    )
    events = EventRecorder(api)
    gate = StartupGate()
    reconciler = Reconciler(
        engine=engine,
        writer=writer,
        events=events,
        settings=settings,
        on_reconciled=gate.reconciled,
        resources=shared,
        replicas=replicas,
    )
    if firing_gate is not None:
        firing_gate.hooks = reconciler
    stop = asyncio.Event()
    probes = ProbeServer(
        host=settings.metrics_host,
        port=settings.metrics_port,
        ready=lambda: gate.complete and not stop.is_set(),
        details=shared.readyz_lines,
        written=(job_metrics,),
    )
    control = ControlServer(
        engine,
        settings.control_socket,
        ready=lambda: gate.complete,
        elsewhere=None if replicas is None else reconciler.refuse_if_elsewhere,
        owners=None if replicas is None else replicas.assignment,
    )
    shutdown = _Shutdown(settings.shutdown_timeout_seconds, stop, control, replicas)

    def list_jobs() -> set[Key]:
        if not settings.namespaces:
            return api.list_job_keys()
        return set().union(*(api.list_job_keys(namespace) for namespace in settings.namespaces))

    async with contextlib.AsyncExitStack() as teardown:
        await _listen(probes, control, shutdown, settings, teardown)
        flush_spans = None if spans is None else functools.partial(span_export.flush, spans)
        latency.tune_process()
        # Started before kopf, so that kopf's sweep of leftover tasks leaves them alone.
        background = [
            asyncio.create_task(
                latency.freeze_after_registrations(lambda: engine.job_count),
                name="podcron heap freezer",
            ),
            asyncio.create_task(
                latency.collect_when_quiet(lambda: engine.quiet_for),
                name="podcron quiet collector",
            ),
            asyncio.create_task(watch_startup(gate, list_jobs), name="podcron readiness"),
        ]
        if replicas is not None:
            await replicas.set_clock()  # before kopf registers (and arms) any job
            background.append(asyncio.create_task(replicas.run(gate.wait), name="podcron replica"))
            replicas.watch(asyncio.get_running_loop())
            teardown.callback(replicas.close)
        teardown.push_async_callback(_cancel, background)
        writer_task = asyncio.create_task(writer.run(), name="podcron status writer")
        teardown.push_async_callback(
            _Drain(shutdown, engine, shared, writer, writer_task, events, flush_spans)
        )
        # Eager factories begin now, so that a failing one shows before any run is
        # due; before kopf, whose sweep of leftover tasks must leave theirs alone.
        shared.start()
        ours = asyncio.all_tasks()
        registry = _registry(reconciler, teardown, ours)
        tasks = await kopf.spawn_tasks(
            registry=registry,
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            stop_flag=stop,
        )
        # In place of kopf's own handlers, which do not say when the signal came.
        for received in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(received, shutdown.begin, f"{received.name} received")
        await kopf.run_tasks(tasks, ignored=ours)


def _registry(
    reconciler: Reconciler, teardown: contextlib.AsyncExitStack, ours: set[asyncio.Task[Any]]
) -> kopf.OperatorRegistry:
    """kopf's handlers: the reconciler's, log-in, settings, and the shutdown in cleanup."""
    # A registry of our own gets none of kopf's default login handlers.
    registry = kopf.OperatorRegistry()
    reconciler.register(registry)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(**kwargs: Any) -> None:
        _configure_kopf(kwargs["settings"], reconciler.handled)
        log.info("podcron operator started")

    # kopf stops the watchers before cleanup handlers run, and cancels every
    # task it did not see at start-up only after them: so this is the place
    # where runs can still finish and their outcome reach status.
    @kopf.on.cleanup(registry=registry)
    async def shut_down(**_: Any) -> None:
        await teardown.aclose()
        # Every task of ours has ended. What is left is kopf's: a watcher
        # cancelled in the middle of its stream leaves its pause-waiter task
        # behind, and kopf waits 5 s for such tasks before it cancels them.
        for task in asyncio.all_tasks() - ours - {asyncio.current_task()}:
            task.cancel()

    return registry


def main(settings: Settings) -> int:
    """Run the operator; returns the process exit code."""
    try:
        asyncio.run(run(settings))
    except StartupError as error:
        logs.stop_background_writer()
        print(f"podcron: {error}", file=sys.stderr)
        return 2
    # Idle pool threads are on their way out: give them a moment, all together.
    until = time.monotonic() + EXIT_JOIN_SECONDS
    stuck = []
    for thread in threading.enumerate():
        # A resource's thread may be stuck in a factory's __enter__ or __exit__.
        if thread.name.startswith(("podcron-job", "podcron-status", "podcron-resource-")):
            thread.join(max(0.0, until - time.monotonic()))
            if thread.is_alive():
                stuck.append(thread)
    if stuck:
        # Plain-def jobs that ignored cancellation cannot be stopped, nor can
        # status patches the API server does not answer, and the interpreter
        # would wait for them at exit: the runs are recorded as Interrupted
        # and the budget is spent, so leave without waiting.
        log.warning("exiting with %d job or status threads still running", len(stuck))
        logs.stop_background_writer()
        logging.shutdown()
        os._exit(0)
    return 0
