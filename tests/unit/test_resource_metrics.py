"""Resource metrics as Prometheus scrapes them, fed by a real resource manager."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from podcron.errors import ResourceUnavailable
from podcron.resources import ResourceManager
from podcron.telemetry.resource_metrics import ResourceMetrics


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[str]:
    yield "client"


@contextlib.asynccontextmanager
async def refused() -> AsyncIterator[str]:
    raise ConnectionRefusedError("db:5432")
    yield "never"


async def test_up_and_failures_per_resource() -> None:
    registry = CollectorRegistry()
    manager = ResourceManager({"http": lambda: client, "db": lambda: refused})
    ResourceMetrics(
        lambda: ((s.name, s.up, s.failures) for s in manager.states()), registry=registry
    )
    text = generate_latest(registry).decode()
    assert 'podcron_resource_up{resource="http"} 0.0' in text
    assert 'podcron_resource_failures_total{resource="db"} 0.0' in text
    await manager.acquire(("http",))
    with pytest.raises(ResourceUnavailable):
        await manager.acquire(("db",))
    text = generate_latest(registry).decode()
    assert 'podcron_resource_up{resource="http"} 1.0' in text
    assert 'podcron_resource_up{resource="db"} 0.0' in text
    assert 'podcron_resource_failures_total{resource="db"} 1.0' in text
    assert "# TYPE podcron_resource_failures_total counter" in text
    await manager.close(1.0)
    assert 'podcron_resource_up{resource="http"} 0.0' in generate_latest(registry).decode()
