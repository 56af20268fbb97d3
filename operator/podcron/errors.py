"""The exceptions podcron raises, one class per meaning, and the error codes it answers.

Each class that a ScheduledJob's author can cause carries ``reason``: the
``Ready`` condition reason the operator reports for it, so the operator never
has to map exception types to reasons by hand.

This module imports nothing of podcron, so every layer (the sidecar too) may
import it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

#: The entry-point group of shared resource factories (``podcron.resources``).
RESOURCE_GROUP = "podcron.resources"


class ErrorCode(enum.StrEnum):
    """The codes of refused requests: on the control socket and in the System API's envelope.

    The operator answers the first five on the control socket; the System API
    passes the job codes through and maps ``NOT_READY`` to
    ``OPERATOR_UNAVAILABLE``. The rest are the sidecar's own.
    """

    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_ALREADY_RUNNING = "JOB_ALREADY_RUNNING"
    #: Manual runs use their whole budget; a ``retryAfter`` (seconds) comes with it.
    TOO_MANY_MANUAL_RUNS = "TOO_MANY_MANUAL_RUNS"
    BAD_REQUEST = "BAD_REQUEST"
    NOT_READY = "NOT_READY"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    URI_TOO_LONG = "URI_TOO_LONG"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    OPERATOR_UNAVAILABLE = "OPERATOR_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    #: With several replicas: another one runs the job; a ``location`` (its address) comes
    #: with it, and the System API redirects there (307).
    NOT_OWNER = "NOT_OWNER"


class PodcronError(Exception):
    """Base of every error podcron raises on purpose."""

    reason: str = "Error"


class StartupError(PodcronError):
    """The operator cannot start: one line naming what to change."""


class InvalidJobSpec(PodcronError, ValueError):
    """A ScheduledJob spec that cannot be scheduled; the message names the field."""

    reason = "InvalidSpec"

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}: {problem} (got {value!r})")


class InvalidSchedule(InvalidJobSpec):
    """``spec.schedule`` is malformed."""

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


class ObjectGone(PodcronError, LookupError):
    """The object no longer exists (a ScheduledJob deleted, an Event expired): not an error."""


class TransientApiError(PodcronError):
    """A Kubernetes API failure worth retrying: throttling, conflicts, 5xx, lost connections."""


class ApiConflict(TransientApiError):
    """The object changed since the resourceVersion a write was made on (409): read it again."""


class ProtocolError(PodcronError, ValueError):
    """A control socket line that is not what :mod:`podcron.wire` defines."""


class OperatorUnavailable(PodcronError, ConnectionError):
    """The operator does not answer on the control socket."""


class OperatorStarting(OperatorUnavailable):
    """The operator answers, but still registers the jobs that existed at its start."""


class NotOwner(PodcronError):
    """With several replicas: another replica starts this job's runs (``endpoint``: its address).

    An empty ``endpoint``: the job is moving between replicas, and which one
    takes it is not known yet.
    """

    reason = "NotOwner"

    def __init__(self, job_id: str, endpoint: str) -> None:
        self.endpoint = endpoint
        where = f"the replica at {endpoint}" if endpoint else "another replica (it is moving)"
        super().__init__(f"job {job_id} is run by {where}")


class OperatorRefused(PodcronError):
    """The operator answered with one of the :class:`ErrorCode` codes."""

    def __init__(
        self,
        code: str,
        message: str,
        job_id: str | None,
        *,
        retry_after: int | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.job_id = job_id
        #: Seconds after which asking again makes sense, when the operator said so.
        self.retry_after = retry_after
        #: With NOT_OWNER: the address of the replica that runs the job ("": not known yet).
        self.location = location


class UnknownResource(PodcronError, LookupError):
    """``spec.resources`` names no factory of the ``podcron.resources`` group."""

    reason = "ResourceNotFound"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"spec.resources: no resource factory named {name!r} in entry-point group "
            f"{RESOURCE_GROUP} (registered: {listed})"
        )


class ResourceUnavailable(PodcronError, RuntimeError):
    """A resource whose factory failed (retried in the background), or one being closed."""

    reason = "ResourceUnavailable"

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"resource {name!r} is unavailable: {problem}")


class ResourceNotDeclared(PodcronError, KeyError):
    """``ctx.resources[name]`` for a resource the job's ``spec.resources`` does not list."""

    reason = "ResourceNotDeclared"

    def __init__(self, name: str, declared: Iterable[str]) -> None:
        self.name = name
        listed = ", ".join(declared) or "none"
        super().__init__(
            f"resource {name!r} is not in this job's spec.resources (it lists: {listed})"
        )

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument, quotes and all.
        return str(self.args[0])


class ResourceTypeMismatch(PodcronError, TypeError):
    """``ctx.resource(name, kind)`` found an object of another type."""

    reason = "ResourceTypeMismatch"


class JobConfigError(PodcronError, OSError):
    """A configured directory cannot be read; the message names it and why."""

    reason = "JobConfigUnreadable"


class ConfigKeyError(PodcronError, KeyError):
    """``ctx.config[key]`` for a key neither directory holds, or of the other kind."""

    reason = "ConfigKeyNotFound"

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument, quotes and all.
        return str(self.args[0])


class LeaseStoreError(PodcronError):
    """A compare-and-swap on the Leases of the replica protocol did not apply (docs/ha.md)."""


class LeaseConflict(LeaseStoreError):
    """The Lease exists already (create) or moved since it was read (replace, delete)."""


class LeaseGone(LeaseStoreError, LookupError):
    """The Lease a replace or delete names no longer exists."""


class StoreUnavailable(LeaseStoreError, ConnectionError):
    """No answer from the store: the write may or may not have been applied."""
