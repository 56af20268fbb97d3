"""The metrics of shared resources: whether each is up, and how often its factory failed.

A custom collector, as for the jobs' metrics: the values are read from the
resource manager's states at each scrape, so nothing is updated per run. It
takes a callable rather than the manager: telemetry imports no other layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

#: One resource as the metrics see it: its name, whether runs get it now, failed attempts.
ResourceSample = tuple[str, bool, int]

_UP_HELP = "Whether a shared resource is created and handed to runs (1), or not (0)."
_FAILURES_HELP = "Attempts to create a shared resource that failed, since the operator started."


class ResourceMetrics:
    """``podcron_resource_up{resource}`` and ``podcron_resource_failures_total{resource}``.

    ``samples`` is called at each scrape; one series per registered factory.
    """

    def __init__(
        self,
        samples: Callable[[], Iterable[ResourceSample]],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._samples = samples
        registry.register(self)

    def describe(self) -> list[Metric]:
        """The families without samples, so that registering does not call ``samples``."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        """One sample of each family per resource."""
        up, failures = self._families()
        for name, is_up, failed in self._samples():
            up.add_metric([name], 1.0 if is_up else 0.0)
            failures.add_metric([name], failed)
        yield up
        yield failures

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("podcron_resource_up", _UP_HELP, labels=["resource"]),
            CounterMetricFamily("podcron_resource_failures", _FAILURES_HELP, labels=["resource"]),
        )
