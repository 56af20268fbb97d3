"""The engine hands runs their shared resources and job configuration, and keeps Secrets out.

Real resource managers with real context managers, a real configuration directory
written as the kubelet writes one, and the engine on a real loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from podcron.context import JobContext
from podcron.engine import Engine, RunStatus
from podcron.errors import ResourceNotDeclared, ResourceTypeMismatch
from podcron.jobconfig import REDACTED, ConfigSource, Secret
from podcron.resources import ResourceManager
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import Recorder, spans_in_memory, spec
from .kubelet_volume import KubeletVolume


class Pool:
    """A stand-in for a connection pool: counts how often it was opened and closed."""

    opened = 0
    closed = 0


def factories(**made: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """Loaders as :func:`podcron.resources.discover` returns them."""
    return {
        name: functools.partial(lambda factory: factory, factory) for name, factory in made.items()
    }


@contextlib.asynccontextmanager
async def async_pool() -> AsyncIterator[Pool]:
    Pool.opened += 1
    try:
        yield Pool()
    finally:
        Pool.closed += 1


@contextlib.contextmanager
def thread_pool() -> Iterator[list[str]]:
    yield [threading.current_thread().name]


@contextlib.asynccontextmanager
async def refused() -> AsyncIterator[None]:
    raise ConnectionRefusedError("connect to 127.0.0.1:5432 refused")
    yield  # pragma: no cover - unreachable, makes this a generator


@pytest.fixture
async def manager() -> AsyncIterator[ResourceManager]:
    Pool.opened = Pool.closed = 0
    manager = ResourceManager(
        factories(db=async_pool, files=thread_pool, broken=refused), backoff_initial=60.0
    )
    manager.start()
    yield manager
    await manager.close(5.0)


async def test_runs_of_two_jobs_share_one_object_per_resource(manager: ResourceManager) -> None:
    engine = Engine(shutdown_timeout_seconds=1.0, resources=manager)
    recorder = Recorder(engine)
    seen: list[object] = []

    async def async_job(ctx: JobContext) -> None:
        seen.append(ctx.resource("db", Pool))

    def thread_job(ctx: JobContext) -> None:
        seen.append(ctx.resources["db"])

    engine.upsert(spec(async_job, "a", resources=("db",)))
    engine.upsert(spec(thread_job, "b", resources=("db",)))
    await recorder.until(lambda: len(recorder.finished()) >= 6)
    await engine.shutdown()
    assert {e.status for e in recorder.finished()} == {RunStatus.SUCCESS}
    assert len(seen) >= 6
    assert len({id(pool) for pool in seen}) == 1
    assert (Pool.opened, Pool.closed) == (1, 0)  # closed by the operator, after the engine
    await manager.close(1.0)
    assert Pool.closed == 1


async def test_a_job_sees_only_what_it_lists_with_the_right_type(manager: ResourceManager) -> None:
    engine = Engine(shutdown_timeout_seconds=1.0, resources=manager)
    recorder = Recorder(engine)
    problems: list[BaseException] = []

    async def job(ctx: JobContext) -> None:
        assert list(ctx.resources) == ["files"]
        attempts: list[Callable[[], object]] = [
            lambda: ctx.resources["db"],
            lambda: ctx.resource("files", Pool),
        ]
        for attempt in attempts:
            try:
                attempt()
            except (ResourceNotDeclared, ResourceTypeMismatch) as error:
                problems.append(error)

    engine.upsert(spec(job, resources=("files",)))
    await recorder.until(lambda: len(recorder.finished()) >= 1)
    await engine.shutdown()
    assert [str(p) for p in problems] == [
        "resource 'db' is not in this job's spec.resources (it lists: files)",
        f"resource 'files' is a builtins.list, not a {__name__}.Pool",
    ]


async def test_a_job_without_resources_gets_none_and_waits_for_nothing() -> None:
    engine = Engine(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    contexts: list[JobContext] = []

    async def job(ctx: JobContext) -> None:
        contexts.append(ctx)

    engine.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) >= 1)
    await engine.shutdown()
    assert len(contexts[0].resources) == 0
    assert len(contexts[0].config) == 0


async def test_an_unavailable_resource_fails_the_run_in_one_line_and_others_run_on(
    manager: ResourceManager, caplog: pytest.LogCaptureFixture
) -> None:
    exported, pipeline = spans_in_memory()
    telemetry = RunTelemetry(spans=pipeline)
    engine = Engine(shutdown_timeout_seconds=1.0, resources=manager, telemetry=telemetry)
    recorder = Recorder(engine)
    called: list[str] = []

    async def job(ctx: JobContext) -> None:
        called.append(ctx.name)

    engine.upsert(spec(job, "needs-broken", resources=("broken",)))
    engine.upsert(spec(job, "needs-db", resources=("db",)))
    with caplog.at_level(logging.ERROR, logger="podcron.job"):
        await recorder.until(lambda: len(recorder.finished("ns/needs-broken")) >= 2)
        await recorder.until(lambda: len(recorder.finished("ns/needs-db")) >= 2)
    await engine.shutdown()
    pipeline.provider.shutdown()
    failed = recorder.finished("ns/needs-broken")
    assert {e.status for e in failed} == {RunStatus.FAILURE}
    assert failed[0].error is not None
    assert failed[0].error.startswith(
        "resource 'broken' is unavailable: ConnectionRefusedError: connect to 127.0.0.1:5432"
    )
    errors = {e.error for e in failed}
    assert "needs-broken" not in called
    assert called.count("needs-db") >= 2
    lines = [r for r in caplog.records if r.getMessage().startswith("run not started")]
    assert lines
    assert {r.getMessage() for r in lines} <= {f"run not started: {error}" for error in errors}
    assert all(r.exc_info is None for r in lines)  # not the job's bug: no traceback
    # Its spans say why, as a failure's would, with the exception that says it.
    spans = [
        span
        for span in exported.get_finished_spans()
        if (span.attributes or {})["podcron.job.id"] == "ns/needs-broken"
    ]
    assert spans
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description in errors
        (event,) = span.events
        assert (event.attributes or {})["exception.type"] == "podcron.errors.ResourceUnavailable"
    assert engine.snapshot("ns/needs-broken").history.counts.failed >= 2


async def test_a_job_listing_resources_in_an_engine_without_them_fails_its_runs() -> None:
    engine = Engine(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, resources=("db",)))
    await recorder.until(lambda: len(recorder.finished()) >= 1)
    await engine.shutdown()
    assert recorder.finished()[0].status is RunStatus.FAILURE
    assert "no resource factory named 'db'" in (recorder.finished()[0].error or "")


async def test_config_follows_the_files_and_secrets_stay_out_of_errors(tmp_path: Path) -> None:
    config_volume = KubeletVolume(tmp_path / "config")
    secrets_volume = KubeletVolume(tmp_path / "secrets")
    config_volume.write({"greeting": "hello"})
    secrets_volume.write({"token": "s3cr3t-token-value\n"})
    source = ConfigSource(config_volume.path, secrets_volume.path)
    source.load()
    engine = Engine(shutdown_timeout_seconds=1.0, config=source)
    recorder = Recorder(engine)
    greetings: list[str] = []
    tokens: list[Secret] = []

    def job(ctx: JobContext) -> None:
        greetings.append(ctx.config.text("greeting"))
        tokens.append(ctx.config.secret("token"))
        raise PermissionError(f"the server refused {ctx.config.secret('token').reveal()}")

    engine.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) >= 1)
    config_volume.write({"greeting": "bonjour"})
    await recorder.until(lambda: "bonjour" in greetings)
    await engine.shutdown()
    assert greetings[0] == "hello"
    assert tokens[0].reveal() == "s3cr3t-token-value\n"
    errors = [e.error or "" for e in recorder.finished()]
    assert all(REDACTED in error and "s3cr3t" not in error for error in errors)
    assert "s3cr3t" not in (engine.snapshot("ns/job").history.last_error or "")
    # The run history and the recent failures show the same redacted summary.
    shown = [run.error or "" for run in engine.runs("ns/job")]
    shown += [failure.error or "" for failure in engine.snapshot("ns/job").history.recent_failures]
    assert shown
    assert all(REDACTED in error and "s3cr3t" not in error for error in shown)
