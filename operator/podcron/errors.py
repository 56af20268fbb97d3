"""The exceptions podcron raises, one class per meaning.

Each class that a ScheduledJob's author can cause carries ``reason``: the
``Ready`` condition reason the operator reports for it, so the operator never
has to map exception types to reasons by hand.
"""

from __future__ import annotations


class PodcronError(Exception):
    """Base of every error podcron raises on purpose."""

    reason: str = "Error"


class InvalidJobSpec(PodcronError, ValueError):
    """A ScheduledJob spec that cannot be scheduled; the message names the field."""

    reason = "InvalidSchedule"

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}: {problem} (got {value!r})")


class InvalidSchedule(InvalidJobSpec):
    """The schedule (or another timing field) is malformed."""

    reason = "InvalidSchedule"


class UnknownTimeZone(InvalidJobSpec):
    """``spec.timeZone`` is not a zone of the tz database podcron uses (the tzdata package)."""

    reason = "UnknownTimeZone"

    def __init__(self, value: object) -> None:
        super().__init__("spec.timeZone", value, "not a known IANA time zone name")


class EntryPointError(PodcronError, LookupError):
    """An entry point that cannot be run; subclasses say why."""

    def __init__(self, entry_point: str, problem: str) -> None:
        self.entry_point = entry_point
        super().__init__(f"spec.entryPoint: {problem} (got {entry_point!r})")


class EntryPointNotFound(EntryPointError):
    """No such name in the ``podcron.jobs`` group, or the reference does not import."""

    reason = "EntryPointNotFound"


class EntryPointNotAllowed(EntryPointError):
    """A ``module:function`` reference outside the ``allowedModules`` patterns.

    Refused before anything is imported: importing a module can run code.
    """

    reason = "EntryPointNotAllowed"


class JobNotFound(PodcronError, LookupError):
    """No job with this id is registered with the engine."""

    reason = "JobNotFound"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} is registered")


class JobAlreadyRunning(PodcronError, RuntimeError):
    """A trigger refused because the job is running and may not start another run now.

    ``why`` says what holds it: its policy is Forbid, the run Replace would
    replace has not stopped yet, or its runs hold all the threads one job may use.
    """

    reason = "JobAlreadyRunning"

    def __init__(self, job_id: str, why: str = "concurrencyPolicy Forbid") -> None:
        self.job_id = job_id
        self.why = why
        super().__init__(f"job {job_id!r} is already running ({why})")


class TooManyManualRuns(PodcronError, RuntimeError):
    """A manual run refused because manual runs use their whole budget (``maxManualRuns``).

    ``retry_after_seconds`` is when asking again makes sense.
    """

    reason = "TooManyManualRuns"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)
