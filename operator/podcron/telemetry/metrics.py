"""The Prometheus metrics podcron exports, fed by the engine with plain values.

Labels are bounded: a job is ``namespace`` and ``name`` (one series set per
ScheduledJob, removed with it), ``trigger`` and ``status`` have three values
each; nothing per run. Lateness is one histogram over all jobs, so its
cost does not grow with the number of jobs.

The values are plain numbers (one flat ``array`` per job), which this class,
a custom collector (prometheus-client's documented way to export values it
does not hold), turns into samples when scraped. prometheus-client's own
labelled metrics cost about forty objects per job that the garbage collector
tracks: at 10,000 jobs they tripled the time of each of its full passes
(30 ms to 90 ms), which stall the event loop and so every job's start; and
each update takes a lock. An array of floats is one tracked object with
nothing inside for the collector to follow, and an update is a few additions
(docs/performance.md).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Timer precision is the point of this histogram, so it resolves half a
# millisecond and still places a run that started ten seconds late.
LATENESS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Jobs last from milliseconds to an hour; few buckets, since every job has its own.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# The values of the engine's Trigger and RunStatus (a test keeps them equal):
# telemetry sits below the engine and does not import it.
TRIGGERS = ("scheduled", "manual", "catch-up")
STATUSES = ("success", "failure", "skipped")
# Created at zero when a job registers, so that the first failure is an
# increase a rate() or increase() can see rather than a new series.
INITIAL_RUN_LABELS = (("scheduled", "success"), ("scheduled", "failure"), ("scheduled", "skipped"))
LATENESS_TRIGGER = "scheduled"
SUCCESS = "success"

# Where each value sits in a job's array: the run counters by (trigger,
# status), the duration histogram's per-bucket counts (not cumulative; +Inf
# last) and sum, and the last success time (NaN until there is one).
_RUN_SERIES = tuple((trigger, status) for trigger in TRIGGERS for status in STATUSES)
_RUN_AT = {labels: index for index, labels in enumerate(_RUN_SERIES)}
_SHOWN_AT_ZERO = frozenset(_RUN_AT[labels] for labels in INITIAL_RUN_LABELS)
_BUCKETS_AT = len(_RUN_SERIES)
_SUM_AT = _BUCKETS_AT + len(DURATION_BUCKETS) + 1
_LAST_SUCCESS_AT = _SUM_AT + 1
_NEW_JOB = array("d", [0.0] * _LAST_SUCCESS_AT + [math.nan])
# The "le" labels, as prometheus-client writes them for these bounds.
_DURATION_LABELS = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")
_LATENESS_LABELS = (*(repr(bound) for bound in LATENESS_BUCKETS), "+Inf")

_RUNS_HELP = "Runs of a job that ended, and ticks it skipped, by trigger and status."
_DURATION_HELP = (
    "How long a job's runs took, from the body's start to the run's outcome, failed runs included."
)
_LAST_SUCCESS_HELP = "When a job's last successful run ended, in seconds since the Unix epoch."


class JobMetrics:
    """The podcron metrics on ``registry``; every method is quick and never blocks.

    The engine calls the methods from its event loop's thread; a scrape reads
    from another thread. Each read copies a job's array in one step (the GIL
    makes the copy atomic), so a scrape sees no half-updated job.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._registered = 0
        self._queued = 0
        self._running = 0
        self._abandoned_threads = 0
        # Lateness and loop lag: per-bucket counts (not cumulative; +Inf last), then the sum.
        self._lateness = array("d", [0.0] * (len(LATENESS_BUCKETS) + 2))
        self._loop_lag = array("d", [0.0] * (len(LATENESS_BUCKETS) + 2))
        self._jobs: dict[tuple[str, str], array[float]] = {}
        registry.register(self)

    def job_added(self, namespace: str, name: str) -> None:
        """A job was registered: count it and create its series."""
        self._registered += 1
        self._series(namespace, name)

    def job_removed(self, namespace: str, name: str) -> None:
        """A job was removed: stop counting it and drop its series."""
        self._registered -= 1
        self.forget(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series labelled with the job, so a deleted job leaves none behind."""
        self._jobs.pop((namespace, name), None)

    def run_queued(self) -> None:
        """A run was accepted and waits for its turn (a run slot, a thread)."""
        self._queued += 1

    def run_dropped(self) -> None:
        """A queued run left the queue without starting (replaced, deleted, shut down)."""
        self._queued -= 1

    def run_started(self, trigger: str, lateness_seconds: float) -> None:
        """A queued run's body started ``lateness_seconds`` after it was due.

        Only scheduled runs count towards lateness: a manual run is due when
        asked for, and a catch-up run is late by design.
        """
        self._queued -= 1
        self._running += 1
        if trigger == LATENESS_TRIGGER:
            lateness = self._lateness
            lateness[bisect_left(LATENESS_BUCKETS, lateness_seconds)] += 1
            lateness[-1] += lateness_seconds

    def run_ended(self) -> None:
        """The body of a run that :meth:`run_started` counted has returned."""
        self._running -= 1

    def abandoned_threads(self, count: int) -> None:
        """How many job threads now outlive the run they belong to."""
        self._abandoned_threads = count

    def loop_lag(self, seconds: float) -> None:
        """The event loop ran a callback ``seconds`` after it was due."""
        lag = self._loop_lag
        lag[bisect_left(LATENESS_BUCKETS, seconds)] += 1
        lag[-1] += seconds

    def run_recorded(
        self,
        namespace: str,
        name: str,
        *,
        trigger: str,
        status: str,
        duration_seconds: float | None,
        ended_at: float,
    ) -> None:
        """A run's outcome (``duration_seconds`` is ``None`` for a skipped tick)."""
        values = self._series(namespace, name)
        values[_RUN_AT[trigger, status]] += 1
        if duration_seconds is not None:
            # bisect_left finds the first bound >= the duration: Prometheus's "le".
            values[_BUCKETS_AT + bisect_left(DURATION_BUCKETS, duration_seconds)] += 1
            values[_SUM_AT] += duration_seconds
        if status == SUCCESS:
            values[_LAST_SUCCESS_AT] = ended_at

    def _series(self, namespace: str, name: str) -> array[float]:
        values = self._jobs.get((namespace, name))
        if values is None:
            values = self._jobs[namespace, name] = _NEW_JOB[:]
        return values

    def describe(self) -> list[Metric]:
        """The families without samples: the registry checks their names."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        """Every family with its samples; called by each scrape."""
        (
            runs,
            duration,
            last_success,
            running,
            registered,
            lateness,
            queued,
            abandoned,
            loop_lag,
        ) = self._families()
        running.add_metric([], self._running)
        queued.add_metric([], self._queued)
        abandoned.add_metric([], self._abandoned_threads)
        registered.add_metric([], self._registered)
        for family, live in ((lateness, self._lateness), (loop_lag, self._loop_lag)):
            values = live[:]
            family.add_metric([], _cumulative(values[:-1], _LATENESS_LABELS), sum_value=values[-1])
        # list() copies the items in one step: jobs come and go during a scrape.
        for (namespace, name), live in list(self._jobs.items()):
            values = live[:]
            for index, (trigger, status) in enumerate(_RUN_SERIES):
                if values[index] or index in _SHOWN_AT_ZERO:
                    runs.add_metric([namespace, name, trigger, status], values[index])
            duration.add_metric(
                [namespace, name],
                _cumulative(values[_BUCKETS_AT:_SUM_AT], _DURATION_LABELS),
                sum_value=values[_SUM_AT],
            )
            if not math.isnan(values[_LAST_SUCCESS_AT]):
                last_success.add_metric([namespace, name], values[_LAST_SUCCESS_AT])
        yield from (
            runs,
            duration,
            last_success,
            running,
            registered,
            lateness,
            queued,
            abandoned,
            loop_lag,
        )

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        HistogramMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    ]:
        job = ["namespace", "name"]
        return (
            CounterMetricFamily(
                "podcron_job_runs_total", _RUNS_HELP, labels=[*job, "trigger", "status"]
            ),
            HistogramMetricFamily("podcron_job_duration_seconds", _DURATION_HELP, labels=job),
            GaugeMetricFamily(
                "podcron_job_last_success_timestamp_seconds", _LAST_SUCCESS_HELP, labels=job
            ),
            GaugeMetricFamily(
                "podcron_jobs_running", "Runs whose body is executing now, over all jobs."
            ),
            GaugeMetricFamily(
                "podcron_jobs_registered",
                "ScheduledJobs registered with the engine, suspended ones included.",
            ),
            HistogramMetricFamily(
                "podcron_job_schedule_lateness_seconds",
                "How late scheduled runs started: body start time minus due time.",
            ),
            GaugeMetricFamily(
                "podcron_jobs_queued",
                "Runs waiting for a run slot, a thread or the run they replace, over all jobs.",
            ),
            GaugeMetricFamily(
                "podcron_job_threads_abandoned",
                "Threads of plain def runs still running after their run's outcome was recorded.",
            ),
            HistogramMetricFamily(
                "podcron_event_loop_lag_seconds",
                "How late the event loop ran a heartbeat due every 0.25 s: how long it was held.",
            ),
        )


def _cumulative(counts: Sequence[float], labels: Sequence[str]) -> list[tuple[str, float]]:
    """Prometheus's cumulative ``(le, count)`` buckets from per-bucket counts."""
    total, buckets = 0.0, []
    for le, count in zip(labels, counts, strict=True):
        total += count
        buckets.append((le, total))
    return buckets
