"""The Prometheus metrics of DESIGN.md, fed by the engine with plain values.

Labels are bounded: a job is ``namespace`` and ``name`` (one series set per
ScheduledJob, removed with it), ``trigger`` and ``status`` have three values
each; nothing per run. Lateness is one histogram over all jobs, so its
cost does not grow with the number of jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

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
# Created at zero when a job registers, so that the first failure is an
# increase a rate() or increase() can see rather than a new series.
INITIAL_RUN_LABELS = (("scheduled", "success"), ("scheduled", "failure"), ("scheduled", "skipped"))
LATENESS_TRIGGER = "scheduled"
SUCCESS = "success"


@dataclass(slots=True)
class _JobSeries:
    # The labelled children of one job, kept so that a run touches no
    # registry lock it does not need and a deleted job's series are known.
    duration: Histogram
    runs: dict[tuple[str, str], Counter] = field(default_factory=dict)
    last_success: Gauge | None = None


class JobMetrics:
    """The six podcron metrics on ``registry``; every method is quick and never blocks."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.runs = Counter(
            "podcron_job_runs_total",
            "Runs of a job that ended, and ticks it skipped, by trigger and status.",
            ["namespace", "name", "trigger", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "podcron_job_duration_seconds",
            "How long a job's runs took, from start to end, failed runs included.",
            ["namespace", "name"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.running = Gauge(
            "podcron_jobs_running",
            "Runs active now, over all jobs.",
            registry=registry,
        )
        self.registered = Gauge(
            "podcron_jobs_registered",
            "ScheduledJobs registered with the engine, suspended ones included.",
            registry=registry,
        )
        self.lateness = Histogram(
            "podcron_job_schedule_lateness_seconds",
            "How late scheduled runs started: start time minus due time.",
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            "podcron_job_last_success_timestamp_seconds",
            "When a job's last successful run ended, in seconds since the Unix epoch.",
            ["namespace", "name"],
            registry=registry,
        )
        self._jobs: dict[tuple[str, str], _JobSeries] = {}

    def job_added(self, namespace: str, name: str) -> None:
        """A job was registered: count it and create its series."""
        self.registered.inc()
        self._series(namespace, name)

    def job_removed(self, namespace: str, name: str) -> None:
        """A job was removed: stop counting it and drop its series."""
        self.registered.dec()
        self.forget(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series labelled with the job, so a deleted job leaves none behind."""
        series = self._jobs.pop((namespace, name), None)
        if series is None:
            return
        for trigger, status in series.runs:
            self.runs.remove(namespace, name, trigger, status)
        self.duration.remove(namespace, name)
        if series.last_success is not None:
            self.last_success.remove(namespace, name)

    def run_started(self, trigger: str, lateness_seconds: float) -> None:
        """A run started ``lateness_seconds`` after it was due.

        Only scheduled runs count towards lateness: a manual run is due when
        asked for, and a catch-up run is late by design.
        """
        self.running.inc()
        if trigger == LATENESS_TRIGGER:
            self.lateness.observe(lateness_seconds)

    def run_ended(self) -> None:
        """A run that :meth:`run_started` counted is no longer active."""
        self.running.dec()

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
        series = self._series(namespace, name)
        counter = series.runs.get((trigger, status))
        if counter is None:
            counter = series.runs[trigger, status] = self.runs.labels(
                namespace, name, trigger, status
            )
        counter.inc()
        if duration_seconds is not None:
            series.duration.observe(duration_seconds)
        if status == SUCCESS:
            if series.last_success is None:
                series.last_success = self.last_success.labels(namespace, name)
            series.last_success.set(ended_at)

    def _series(self, namespace: str, name: str) -> _JobSeries:
        series = self._jobs.get((namespace, name))
        if series is None:
            series = self._jobs[namespace, name] = _JobSeries(
                duration=self.duration.labels(namespace, name)
            )
            for trigger, status in INITIAL_RUN_LABELS:
                series.runs[trigger, status] = self.runs.labels(namespace, name, trigger, status)
        return series
