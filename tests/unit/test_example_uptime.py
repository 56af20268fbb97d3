"""The example job with a shared HTTP client and a Secret, against a real HTTP server.

The manager loads the client's factory from its entry point; the job gets a JobContext
with ``config`` and ``resources`` as the engine builds it for a run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from podcron.context import Cancellation, JobContext, Trigger
from podcron.jobconfig import ConfigSource, JobConfig
from podcron.resources import ResourceManager, RunResources, discover
from podcron_examples.uptime import uptime

from .kubelet_volume import KubeletVolume

TOKEN = "uptime-token-6c1d2e"


def run_context(*, config: JobConfig, resources: RunResources) -> JobContext:
    """A run's JobContext, in a sampled trace, with ``config`` and ``resources``."""
    span = NonRecordingSpan(
        SpanContext(
            trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
            span_id=0x00F067AA0BA902B7,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    )
    return JobContext(
        job_id="shop/uptime",
        namespace="shop",
        name="uptime",
        trigger=Trigger.SCHEDULED,
        scheduled_time=datetime.now(UTC),
        args={},
        log=logging.LoggerAdapter(logging.getLogger("podcron.job"), {"job_id": "shop/uptime"}),
        deadline=None,
        cancelled=Cancellation(),
        trace_context=trace.set_span_in_context(span),
        config=config,
        resources=resources,
    )


@dataclass
class Service:
    """A real HTTP server on loopback that notes who called it and answers ``status``."""

    url: str = ""
    status: int = 200
    calls: list[dict[str, str]] = field(default_factory=list)
    peers: set[object] = field(default_factory=set)

    async def health(self, request: web.Request) -> web.Response:
        self.calls.append(dict(request.headers))
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        return web.Response(status=self.status, text="ok")


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    service = Service()
    app = web.Application()
    app.router.add_get("/health", service.health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    service.url = f"http://127.0.0.1:{port}/health"
    yield service
    await runner.cleanup()


@pytest.fixture
def source(tmp_path: Path, service: Service) -> ConfigSource:
    KubeletVolume(tmp_path / "config").write({"uptimeUrl": service.url})
    KubeletVolume(tmp_path / "secrets").write({"uptimeToken": TOKEN})
    loaded = ConfigSource(config_dir=tmp_path / "config", secrets_dir=tmp_path / "secrets")
    loaded.load()
    return loaded


async def test_runs_share_one_client_and_send_the_secret_only_to_the_service(
    service: Service, source: ConfigSource, caplog: pytest.LogCaptureFixture
) -> None:
    manager = ResourceManager(discover(), config=source)
    manager.start()
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            resources = await manager.acquire(("http",))
            await uptime(run_context(config=source.snapshot(), resources=resources))
    session = resources.typed("http", aiohttp.ClientSession)
    assert [call["Authorization"] for call in service.calls] == [f"Bearer {TOKEN}"] * 3
    assert all(call["traceparent"].startswith("00-4bf92f35") for call in service.calls)
    assert len(service.peers) == 1, "one kept-alive connection, reused by every run"
    assert f"{service.url} answered 200" in caplog.text
    assert TOKEN not in caplog.text
    await manager.close(5.0)
    assert session.closed


async def test_a_failing_service_fails_the_run_with_no_secret_in_the_error(
    service: Service, source: ConfigSource
) -> None:
    service.status = 503
    manager = ResourceManager(discover(), config=source)
    resources = await manager.acquire(("http",))
    with pytest.raises(RuntimeError) as failed:
        await uptime(run_context(config=source.snapshot(), resources=resources))
    assert str(failed.value) == f"{service.url} answered 503 Service Unavailable"
    await manager.close(5.0)
