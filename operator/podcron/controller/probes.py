"""The operator's one TCP port: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 whenever the event loop does, which is what a
liveness probe needs to know: a wedged loop runs no job. ``/readyz`` answers
200 while ``ready()`` says so: the operator holds every ScheduledJob that
existed when it started, and is not shutting down. ``/readyz?verbose`` adds
one line per shared resource, in the API server's own format
(``[+]resource:http up``, ``[-]resource:db failed (3 attempts): …``): a
failing resource does not make the operator unready, since its other jobs run on.
The metrics are rendered in a worker thread: with thousands of jobs the text
takes a fifth of a second to build, and the loop's timers must not wait for
it. The per-job families write their own text (``written``): through
prometheus-client's objects they took eight times as long. A
scraper that asks for OpenMetrics (``Accept: application/openmetrics-text``,
as Prometheus does) gets it, with the runs' trace ids as exemplars; any other
gets the classic text format. ``podcron_ready`` exports what ``/readyz`` says,
so an alert sees a pod that stays unready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

log = logging.getLogger("podcron.probes")

_OPENMETRICS = "application/openmetrics-text"
_EOF = b"# EOF\n"


class Exposition(Protocol):
    """Families that write their own lines (:class:`~podcron.telemetry.metrics.JobMetrics`)."""

    def exposition(self, openmetrics: bool) -> str:
        """Their lines in the classic text format, or in OpenMetrics without ``# EOF``."""
        ...


class ProbeServer:
    """An aiohttp server for the metrics and health endpoints; ``ready()`` drives ``/readyz``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ready: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
        details: Callable[[], Iterable[str]] = tuple,
        written: Sequence[Exposition] = (),
    ) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._registry = registry
        self._details = details
        self._written = written
        self._runner: web.AppRunner | None = None
        registry.register(_Readiness(ready))

    @property
    def port(self) -> int:
        """The port listened on: the configured one, or the one the system chose for port 0."""
        if self._runner is None or not self._runner.addresses:
            return self._port
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        """Listen; raises :class:`OSError` when the address is taken or cannot be used."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # No access log: a scrape every few seconds would drown the jobs' lines.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        openmetrics = content_type.startswith(_OPENMETRICS)
        body = await asyncio.to_thread(self._render, encode, openmetrics)
        # Written, not held: a web.Response keeps its body until the connection's next
        # request, and at 10,000 jobs that is 17 MB per scraper between scrapes.
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    def _render(self, encode: Callable[[CollectorRegistry], bytes], openmetrics: bool) -> bytes:
        text = encode(self._registry)
        if not self._written:
            return text
        own = "".join(source.exposition(openmetrics) for source in self._written).encode()
        # OpenMetrics text ends at "# EOF": the written families go before it.
        return text.removesuffix(_EOF) + own + _EOF if openmetrics else text + own

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self._ready()
        verdict = "ready\n" if ready else "not ready\n"
        if "verbose" in request.query:
            verdict = "".join(f"{line}\n" for line in self._details()) + verdict
        return web.Response(status=200 if ready else 503, text=verdict)


class _Readiness:
    """``podcron_ready``: 1 while ``/readyz`` answers 200, else 0; read at each scrape."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        family.add_metric([], 1.0 if self._ready() else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "podcron_ready",
            "Whether the operator is ready (/readyz answers 200): it holds every ScheduledJob"
            " that existed at its start and is not shutting down.",
        )
