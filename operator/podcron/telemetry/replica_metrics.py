"""The metrics of a replica in a ring: jobs owned, epochs adopted, renewals refused, fences,
ticks held for a renewal, how far its fire bound leads its clock, and how far its clock is
off the API server's.

A custom collector like the resources' one: counters are plain integers the
replica's agent bumps through :class:`ReplicaMetrics`' methods (it is the
agent's observer), and the owned-jobs and fire-lead gauges are read at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

_OWNED_HELP = "ScheduledJobs whose ticks this replica starts (it owns them in its epoch)."
_EPOCHS_HELP = "Epochs (member lists of the ring) this replica adopted: each is a handover."
_GAINED_HELP = "Jobs this replica gained in a handover or failover."
_RENEW_FAILURES_HELP = (
    "Renewals of this replica's Lease that failed, by reason: unavailable (no answer from the "
    "API server) or conflict (someone else wrote it)."
)
_FENCED_HELP = "Times this replica found itself fenced and rejoined under a new identity."
_HOLDS_HELP = (
    "Times this replica held ticks until its bounds moved: above the fire bound its last "
    "acknowledged renewal set (renewals slower than fireBoundSeconds allows), or of a job "
    "gained before its start bound was known."
)
_HELD_SECONDS_HELP = (
    "Seconds this replica's ticks were held in all, from the first tick held to the move "
    "that let them go: the most those ticks started late by it."
)
_FIRE_LEAD_HELP = (
    "How far ahead of this replica's clock its last renewal set its fire bound: "
    "fireBoundSeconds, or up to twice that while renewals come slowly. A crash's uncertain "
    "window (ticks counted, not run again) is this wide."
)
_CLOCK_OFFSET_HELP = (
    "The API server's clock minus this node's, in seconds, as estimated from the Date of its "
    "replies (to within about half a second); ticks start by the API server's clock."
)


class ReplicaMetrics:
    """``podcron_replica_*`` series; :attr:`owned` and :attr:`fire_lead` are called at each
    scrape."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        #: How many jobs the replica owns; set once the agent that knows exists.
        self.owned: Callable[[], int] = lambda: 0
        #: The lead of its fire bound, in seconds; set with :attr:`owned`.
        self.fire_lead: Callable[[], float] = lambda: 0.0
        self._epochs = 0
        self._gained = 0
        self._renew_failures: dict[str, int] = {"unavailable": 0, "conflict": 0}
        self._fenced = 0
        self._holds = 0
        self._held_seconds = 0.0
        self._clock_offset = 0.0
        registry.register(self)

    # -- the agent's observer ------------------------------------------------

    def renew_failed(self, reason: str) -> None:
        self._renew_failures[reason] = self._renew_failures.get(reason, 0) + 1

    def epoch_adopted(self, epoch: int, gained: int, lost: int) -> None:
        self._epochs += 1
        self._gained += gained

    def fenced(self) -> None:
        self._fenced += 1

    def ticks_held(self, seconds: float) -> None:
        self._holds += 1
        self._held_seconds += seconds

    def clock_offset(self, seconds: float) -> None:
        """The latest estimate of the API server's clock minus this process's."""
        self._clock_offset = seconds

    # -- the collector ----------------------------------------------------------

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        owned, epochs, gained, failures, fenced, holds, held, lead, offset = self._families()
        owned.add_metric([], self.owned())
        epochs.add_metric([], self._epochs)
        gained.add_metric([], self._gained)
        for reason, count in sorted(self._renew_failures.items()):
            failures.add_metric([reason], count)
        fenced.add_metric([], self._fenced)
        holds.add_metric([], self._holds)
        held.add_metric([], self._held_seconds)
        lead.add_metric([], self.fire_lead())
        offset.add_metric([], self._clock_offset)
        yield from (owned, epochs, gained, failures, fenced, holds, held, lead, offset)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily("podcron_replica_owned_jobs", _OWNED_HELP),
            CounterMetricFamily("podcron_replica_epochs", _EPOCHS_HELP),
            CounterMetricFamily("podcron_replica_jobs_gained", _GAINED_HELP),
            CounterMetricFamily(
                "podcron_replica_renew_failures", _RENEW_FAILURES_HELP, labels=["reason"]
            ),
            CounterMetricFamily("podcron_replica_fenced", _FENCED_HELP),
            CounterMetricFamily("podcron_replica_holds", _HOLDS_HELP),
            CounterMetricFamily("podcron_replica_held_seconds", _HELD_SECONDS_HELP),
            GaugeMetricFamily("podcron_replica_fire_lead_seconds", _FIRE_LEAD_HELP),
            GaugeMetricFamily("podcron_clock_offset_seconds", _CLOCK_OFFSET_HELP),
        )
