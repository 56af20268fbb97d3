"""``podcron operator``: the engine and the kopf handlers in one asyncio loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import kopf

from podcron import latency
from podcron.config import Settings
from podcron.controller.control import ControlServer
from podcron.controller.events import EventRecorder
from podcron.controller.handlers import Reconciler
from podcron.controller.kubeapi import KubeApi
from podcron.controller.probes import ProbeServer
from podcron.controller.readiness import Key, StartupGate, watch_startup
from podcron.controller.status import StatusWriter
from podcron.engine import Engine
from podcron.telemetry import logs, tracing
from podcron.telemetry.metrics import JobMetrics

log = logging.getLogger("podcron.operator")

# kopf treats every annotation under its prefix as its own bookkeeping and
# leaves it out of the object's essence, so with plain `podcron.dev` it would
# never see a change of `podcron.dev/run-now`.
KOPF_PREFIX = "kopf.podcron.dev"


def _configure_kopf(operator: kopf.OperatorSettings, settings: Settings) -> None:
    # podcron posts its own Events (state changes and failures only); kopf's
    # per-handler Events would flood the namespace.
    operator.posting.enabled = False
    operator.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    operator.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    # kopf SIGKILLs itself if shutting down takes longer than this; the jobs
    # get their shutdown timeout first, plus time to flush status.
    operator.process.ultimate_exiting_timeout = settings.shutdown_timeout_seconds + 10
    operator.watching.server_timeout = 300
    # kopf logs every handler call at INFO, and the deletion watcher is called
    # for every watch event (every status patch): a thousand jobs would log
    # hundreds of empty lines a second. Warnings still show; DEBUG shows all.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


async def run(settings: Settings) -> None:
    """Run the operator until SIGTERM/SIGINT, then shut down as DESIGN.md says."""
    api = KubeApi.from_environment()
    flush_spans = tracing.configure_tracing()
    latency.tune_process()
    engine = Engine(
        max_concurrent_runs=settings.max_concurrent_runs,
        worker_threads=settings.worker_threads,
        shutdown_timeout_seconds=settings.shutdown_timeout_seconds,
        metrics=JobMetrics(),
    )
    writer = StatusWriter(api.patch_status, patches_per_second=settings.status_patches_per_second)
    events = EventRecorder(api)
    gate = StartupGate()
    stopping = False
    registry = kopf.OperatorRegistry()
    Reconciler(
        engine=engine,
        writer=writer,
        events=events,
        settings=settings,
        on_reconciled=gate.reconciled,
    ).register(registry)

    # A registry of our own gets none of kopf's default login handlers.
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(**kwargs: Any) -> None:
        _configure_kopf(kwargs["settings"], settings)
        log.info("podcron operator started")

    # kopf stops the watchers before cleanup handlers run, and cancels every
    # task it did not see at start-up only after them: so this is the place
    # where runs can still finish and their outcome reach status.
    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        nonlocal stopping
        stopping = True
        # No triggers during shutdown: the sidecar reports the operator gone at once.
        await control.stop()
        await engine.shutdown()
        # Every run's span has ended: export them while status is flushed.
        spans_flushed = (
            asyncio.create_task(asyncio.to_thread(flush_spans, 5.0), name="podcron span flush")
            if flush_spans is not None
            else None
        )
        # Stopped, the writer puts back a key it was waiting to send.
        writer_task.cancel()
        await asyncio.wait([writer_task])
        unsent = await writer.flush(until=asyncio.get_running_loop().time() + 5.0)
        if unsent:
            log.warning("the last status of %d jobs was not written at shutdown", unsent)
        writer.close()
        await events.close()
        if spans_flushed is not None:
            await spans_flushed

    probes = ProbeServer(
        host=settings.metrics_host,
        port=settings.metrics_port,
        ready=lambda: gate.complete and not stopping,
    )
    await probes.start()
    control = ControlServer(engine, settings.control_socket, ready=lambda: gate.complete)
    await control.start()
    log.info(
        "serving /metrics, /healthz and /readyz on %s:%d; control socket %s",
        settings.metrics_host,
        probes.port,
        settings.control_socket,
    )
    # Started before kopf so that kopf's sweep of leftover tasks leaves them alone.
    writer_task = asyncio.create_task(writer.run(), name="podcron status writer")
    freezer_task = asyncio.create_task(
        latency.freeze_after_registrations(lambda: engine.job_count), name="podcron heap freezer"
    )

    def list_jobs() -> set[Key]:
        if not settings.namespaces:
            return api.list_job_keys()
        return set().union(*(api.list_job_keys(namespace) for namespace in settings.namespaces))

    readiness_task = asyncio.create_task(watch_startup(gate, list_jobs), name="podcron readiness")
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
        )
    finally:
        readiness_task.cancel()
        freezer_task.cancel()
        await control.stop()
        await probes.stop()


def main(settings: Settings) -> int:
    """Run the operator; returns the process exit code."""
    asyncio.run(run(settings))
    stuck = [t for t in threading.enumerate() if t.name.startswith("podcron-job")]
    if stuck:
        # Plain-def jobs that ignored cancellation cannot be stopped, and the
        # interpreter would wait for them at exit: their runs are already
        # recorded as Interrupted, so leave without waiting.
        log.warning("exiting with %d job threads still running", len(stuck))
        logs.stop_background_writer()
        logging.shutdown()
        os._exit(0)
    return 0
