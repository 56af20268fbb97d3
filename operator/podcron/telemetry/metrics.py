"""The Prometheus metrics podcron exports, fed by the engine with plain values.

Labels are bounded: a job is ``namespace`` and ``name`` (one series set per
ScheduledJob, removed with it), ``trigger`` and ``status`` have three values
each; nothing per run. Lateness is one histogram over all jobs, so its
cost does not grow with the number of jobs.

The values are plain numbers (one flat ``array`` per job), which this class
writes as text when scraped (:mod:`~podcron.telemetry.exposition`: at 10,000
jobs prometheus-client's samples took eight times as long). It is also a
custom collector (prometheus-client's documented way to export values it does
not hold), for reads in this process. prometheus-client's own
labelled metrics cost about forty objects per job that the garbage collector
tracks: at 10,000 jobs they tripled the time of each of its full passes
(30 ms to 90 ms), which stall the event loop and so every job's start; and
each update takes a lock. An array of floats is one tracked object with
nothing inside for the collector to follow, and an update is a few additions
(docs/performance.md).

Lateness and duration buckets carry an OpenMetrics exemplar: the trace id of
the latest sampled run that fell in the bucket, so a slow bucket leads to its
trace. Exemplars live in a ``bytearray`` (nothing inside for the collector to
follow), per job only once a traced run has ended; only the OpenMetrics format
shows them (``/metrics`` with ``Accept: application/openmetrics-text``).
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from .exposition import Family, exemplar, labels, value

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
FAILURE = "failure"

# Where each value sits in a job's array: the run counters by (trigger,
# status), the duration histogram's per-bucket counts (not cumulative; +Inf
# last) and sum, the last success time (NaN until there is one), the runs
# that failed since the last success, and the gap between the job's latest
# tick and its next one (NaN while it has no next tick: suspended).
_RUN_SERIES = tuple((trigger, status) for trigger in TRIGGERS for status in STATUSES)
_RUN_AT = {labels: index for index, labels in enumerate(_RUN_SERIES)}
_SHOWN_AT_ZERO = frozenset(_RUN_AT[labels] for labels in INITIAL_RUN_LABELS)
_BUCKETS_AT = len(_RUN_SERIES)
_SUM_AT = _BUCKETS_AT + len(DURATION_BUCKETS) + 1
_LAST_SUCCESS_AT = _SUM_AT + 1
_FAILURES_IN_A_ROW_AT = _LAST_SUCCESS_AT + 1
_INTERVAL_AT = _FAILURES_IN_A_ROW_AT + 1
_MISSED_AT = _INTERVAL_AT + 1
_UNCERTAIN_AT = _MISSED_AT + 1
_NEW_JOB = array("d", [0.0] * _LAST_SUCCESS_AT + [math.nan, 0.0, math.nan, 0.0, 0.0])
# One exemplar: the trace id (16 bytes, all zero while the bucket has none),
# the observed value and when it was observed.
_EXEMPLAR = struct.Struct("<16sdd")
_NO_TRACE = bytes(16)
_NO_DURATION_EXEMPLARS = bytes(_EXEMPLAR.size * (len(DURATION_BUCKETS) + 1))
# The "le" labels, as prometheus-client writes them for these bounds.
_DURATION_LABELS = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")
_LATENESS_LABELS = (*(repr(bound) for bound in LATENESS_BUCKETS), "+Inf")

_RUNS_HELP = "Runs of a job that ended, and ticks it skipped, by trigger and status."
_DURATION_HELP = (
    "How long a job's runs took, from the body's start to the run's outcome, failed runs included."
)
_LAST_SUCCESS_HELP = "When a job's last successful run ended, in seconds since the Unix epoch."
_FAILURES_IN_A_ROW_HELP = (
    "Runs of a job that failed since its last successful run (since the operator started)."
)
_INTERVAL_HELP = (
    "Seconds from a job's latest tick to its next one; absent while it has none (suspended)."
)

_TICKS_MISSED_HELP = (
    "Ticks of a job this replica owns that it never started: too late, or too many, to catch up."
)
_TICKS_UNCERTAIN_HELP = (
    "Ticks of a job gained from a fenced replica that it may have started; not started again."
)

_RUNS = Family("podcron_job_runs_total", "counter", _RUNS_HELP)
_DURATION = Family("podcron_job_duration_seconds", "histogram", _DURATION_HELP)
_LAST_SUCCESS = Family("podcron_job_last_success_timestamp_seconds", "gauge", _LAST_SUCCESS_HELP)
_RUNNING = Family(
    "podcron_jobs_running", "gauge", "Runs whose body is executing now, over all jobs."
)
_REGISTERED = Family(
    "podcron_jobs_registered",
    "gauge",
    "ScheduledJobs registered with the engine, suspended ones included.",
)
_LATENESS = Family(
    "podcron_job_schedule_lateness_seconds",
    "histogram",
    "How late scheduled runs started: body start time minus due time.",
)
_QUEUED = Family(
    "podcron_jobs_queued",
    "gauge",
    "Runs waiting for a run slot, a thread or the run they replace, over all jobs.",
)
_ABANDONED = Family(
    "podcron_job_threads_abandoned",
    "gauge",
    "Threads of plain def runs still running after their run's outcome was recorded.",
)
_LOOP_LAG = Family(
    "podcron_event_loop_lag_seconds",
    "histogram",
    "How late the event loop ran a heartbeat due every 0.25 s: how long it was held.",
)
_FAILURES_IN_A_ROW = Family("podcron_job_failures_in_a_row", "gauge", _FAILURES_IN_A_ROW_HELP)
_INTERVAL = Family("podcron_job_interval_seconds", "gauge", _INTERVAL_HELP)
_TICKS_MISSED = Family("podcron_ticks_missed_total", "counter", _TICKS_MISSED_HELP)
_TICKS_UNCERTAIN = Family("podcron_ticks_uncertain_total", "counter", _TICKS_UNCERTAIN_HELP)
# A job's one-value families and where each value sits in its array; absent while NaN.
_JOB_VALUES = (
    (_LAST_SUCCESS, _LAST_SUCCESS_AT),
    (_FAILURES_IN_A_ROW, _FAILURES_IN_A_ROW_AT),
    (_INTERVAL, _INTERVAL_AT),
    (_TICKS_MISSED, _MISSED_AT),
    (_TICKS_UNCERTAIN, _UNCERTAIN_AT),
)
_FAMILIES = (
    _RUNS,
    _DURATION,
    _RUNNING,
    _REGISTERED,
    _LATENESS,
    _QUEUED,
    _ABANDONED,
    _LOOP_LAG,
    *(family for family, _ in _JOB_VALUES),
)
# The run counters' own labels, after a job's.
_RUN_LABELS = tuple(
    labels((("trigger", trigger), ("status", status))) for trigger, status in _RUN_SERIES
)


class JobMetrics:
    """The podcron metrics on ``registry``; every method is quick and never blocks.

    The engine calls the methods from its event loop's thread; a scrape reads
    from another thread. Each read copies a job's array in one step (the GIL
    makes the copy atomic), so a scrape sees no half-updated job. The operator
    keeps it out of the registry (``registry=None``) and hands it to the
    ``/metrics`` server, which serves :meth:`exposition` beside the registry's text.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._registered = 0
        self._queued = 0
        self._running = 0
        self._abandoned_threads = 0
        # Lateness and loop lag: per-bucket counts (not cumulative; +Inf last), then the sum.
        self._lateness = array("d", [0.0] * (len(LATENESS_BUCKETS) + 2))
        self._loop_lag = array("d", [0.0] * (len(LATENESS_BUCKETS) + 2))
        self._lateness_exemplars = bytearray(_EXEMPLAR.size * (len(LATENESS_BUCKETS) + 1))
        self._jobs: dict[tuple[str, str], array[float]] = {}
        # Duration exemplars, for the jobs that have had a traced run.
        self._exemplars: dict[tuple[str, str], bytearray] = {}
        if registry is not None:
            registry.register(self)

    def job_added(self, namespace: str, name: str, *, last_success: float | None = None) -> None:
        """A job was registered: count it and create its series.

        ``last_success`` is when its last successful run ended, if known from
        before (the status the operator restored).
        """
        self._registered += 1
        values = self._series(namespace, name)
        if last_success is not None:
            values[_LAST_SUCCESS_AT] = last_success

    def job_interval(self, namespace: str, name: str, seconds: float | None) -> None:
        """The gap from the job's latest tick to its next; ``None`` while it has no next tick."""
        self._series(namespace, name)[_INTERVAL_AT] = math.nan if seconds is None else seconds

    def job_removed(self, namespace: str, name: str) -> None:
        """A job was removed: stop counting it and drop its series."""
        self._registered -= 1
        self.forget(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series labelled with the job, so a deleted job leaves none behind."""
        self._jobs.pop((namespace, name), None)
        self._exemplars.pop((namespace, name), None)

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

    def run_traced(self, trigger: str, lateness_seconds: float, trace_id: int, at: float) -> None:
        """The run :meth:`run_started` counted has the sampled trace ``trace_id``.

        Its lateness bucket's exemplar becomes this run (scheduled runs only,
        as for the lateness itself), observed at ``at``: when it started (wall clock).
        """
        if trigger == LATENESS_TRIGGER:
            _EXEMPLAR.pack_into(
                self._lateness_exemplars,
                _EXEMPLAR.size * bisect_left(LATENESS_BUCKETS, lateness_seconds),
                trace_id.to_bytes(16),
                lateness_seconds,
                at,
            )

    def run_ended(self) -> None:
        """The body of a run that :meth:`run_started` counted has returned."""
        self._running -= 1

    def abandoned_threads(self, count: int) -> None:
        """How many job threads now outlive the run they belong to."""
        self._abandoned_threads = count

    def ticks_missed(self, namespace: str, name: str, count: int) -> None:
        """``count`` ticks of a job this replica owns will never start: they are too late."""
        self._series(namespace, name)[_MISSED_AT] += count

    def ticks_uncertain(self, namespace: str, name: str, count: int) -> None:
        """``count`` ticks of a gained job may have started on a fenced replica; not run here.

        Per job, as missed ticks are: which job lost ticks is what an alert must name,
        and the chaos checker holds each job's missing ticks against its own counts.
        """
        self._series(namespace, name)[_UNCERTAIN_AT] += count

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
        trace_id: int = 0,
    ) -> None:
        """A run's outcome (``duration_seconds`` is ``None`` for a skipped tick).

        ``trace_id`` is the run's sampled trace, 0 for none: the exemplar of
        its duration bucket.
        """
        values = self._series(namespace, name)
        values[_RUN_AT[trigger, status]] += 1
        if duration_seconds is not None:
            # bisect_left finds the first bound >= the duration: Prometheus's "le".
            bucket = bisect_left(DURATION_BUCKETS, duration_seconds)
            values[_BUCKETS_AT + bucket] += 1
            values[_SUM_AT] += duration_seconds
            if trace_id:
                exemplars = self._exemplars.get((namespace, name))
                if exemplars is None:
                    exemplars = self._exemplars[namespace, name] = bytearray(_NO_DURATION_EXEMPLARS)
                _EXEMPLAR.pack_into(
                    exemplars,
                    _EXEMPLAR.size * bucket,
                    trace_id.to_bytes(16),
                    duration_seconds,
                    ended_at,
                )
        if status == SUCCESS:
            values[_LAST_SUCCESS_AT] = ended_at
            values[_FAILURES_IN_A_ROW_AT] = 0.0
        elif status == FAILURE:
            values[_FAILURES_IN_A_ROW_AT] += 1

    def _series(self, namespace: str, name: str) -> array[float]:
        values = self._jobs.get((namespace, name))
        if values is None:
            values = self._jobs[namespace, name] = _NEW_JOB[:]
        return values

    def exposition(self, openmetrics: bool = False) -> str:
        """Every family in the text format, or in OpenMetrics with exemplars (no ``# EOF``).

        Written here rather than by prometheus-client, which costs 7 µs a series
        (module :mod:`~podcron.telemetry.exposition`): at 10,000 jobs that was 1.6 s.
        """
        # Copies first, each in one step: jobs come and go, and runs end, during a scrape.
        jobs = [
            (labels((("namespace", namespace), ("name", name))), live[:], (namespace, name))
            for (namespace, name), live in list(self._jobs.items())
        ]
        # Only OpenMetrics shows exemplars: the classic format copies none.
        job_exemplars = (
            {key: bytes(live) for key, live in list(self._exemplars.items())} if openmetrics else {}
        )
        lines: list[str] = []
        write = lines.append
        for family, number in (
            (_RUNNING, self._running),
            (_REGISTERED, self._registered),
            (_QUEUED, self._queued),
            (_ABANDONED, self._abandoned_threads),
        ):
            write(f"{family.header(openmetrics)}{family.name} {value(number)}\n")
        for family, live, exemplars in (
            (_LATENESS, self._lateness, bytes(self._lateness_exemplars)),
            (_LOOP_LAG, self._loop_lag, None),
        ):
            write(family.header(openmetrics))
            shown = exemplars if openmetrics else None
            _histogram(write, family.name, "", live[:], _LATENESS_LABELS, shown)
        write(_RUNS.header(openmetrics))
        for job, values, _ in jobs:
            for index, run in enumerate(_RUN_LABELS):
                if values[index] or index in _SHOWN_AT_ZERO:
                    write(f"{_RUNS.name}{{{job},{run}}} {value(values[index])}\n")
        write(_DURATION.header(openmetrics))
        for job, values, key in jobs:
            _histogram(
                write,
                _DURATION.name,
                job,
                values[_BUCKETS_AT : _SUM_AT + 1],
                _DURATION_LABELS,
                job_exemplars.get(key),
            )
        for family, at in _JOB_VALUES:
            write(family.header(openmetrics))
            for job, values, _ in jobs:
                if not math.isnan(values[at]):
                    write(f"{family.name}{{{job}}} {value(values[at])}\n")
        return "".join(lines)

    def describe(self) -> list[Metric]:
        """The families without samples: the registry checks their names."""
        return [
            Metric(family.name.removesuffix("_total"), family.help, family.kind)
            for family in _FAMILIES
        ]

    def collect(self) -> Iterator[Metric]:
        """Every family, for reads in this process (``registry.get_sample_value``).

        Read back from :meth:`exposition` by prometheus-client's OpenMetrics
        parser, which also holds the text to the format. ``/metrics`` serves the
        text itself (:class:`~podcron.controller.probes.ProbeServer`).
        """
        text = self.exposition(openmetrics=True) + "# EOF\n"
        yield from text_string_to_metric_families(text)  # type: ignore[no-untyped-call]


def _histogram(
    write: Callable[[str], object],
    name: str,
    job: str,
    counts: Sequence[float],
    bounds: Sequence[str],
    exemplars: bytes | None,
) -> None:
    """A histogram's lines from per-bucket counts (+Inf last), then its sum.

    A bucket whose slot in ``exemplars`` holds a trace gets it as its exemplar.
    """
    after = f",{job}" if job else ""
    total = 0.0
    for index, le in enumerate(bounds):
        total += counts[index]
        shown = ""
        if exemplars:
            trace_id, observed, at = _EXEMPLAR.unpack_from(exemplars, _EXEMPLAR.size * index)
            if trace_id != _NO_TRACE:
                shown = exemplar(trace_id, observed, at)
        write(f'{name}_bucket{{le="{le}"{after}}} {value(total)}{shown}\n')
    braced = f"{{{job}}}" if job else ""
    write(f"{name}_count{braced} {value(total)}\n{name}_sum{braced} {value(counts[-1])}\n")
