"""Translation between ScheduledJob objects and the engine's records. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from podcron import entrypoints, resources
from podcron.engine import ConcurrencyPolicy, JobSpec
from podcron.errors import InvalidJobSpec, UnknownResource
from podcron.schedules import Schedule, parse_schedule


def job_id(namespace: str, name: str) -> str:
    """The id jobs go by everywhere: ``namespace/name``."""
    return f"{namespace}/{name}"


# The CRD's bound on spec.timeoutSeconds (a week). Checked here too: an object stored
# before the CRD had it still reaches the operator, and a deadline computed from a huge
# value overflows.
MAX_TIMEOUT_SECONDS = 604800


def _optional_seconds(
    spec: Mapping[str, Any], key: str, *, minimum: float = 0, maximum: float | None = None
) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise InvalidJobSpec(f"spec.{key}", value, f"must be a number of seconds >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidJobSpec(f"spec.{key}", value, f"must be at most {maximum} seconds")
    return float(value)


def _resource_names(spec: Mapping[str, Any]) -> tuple[str, ...]:
    names = spec.get("resources") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InvalidJobSpec("spec.resources", names, "must be a list of resource names")
    # A set in the CRD; an object stored before it had the field may repeat a name.
    return tuple(dict.fromkeys(names))


def _installed_resources(names: Sequence[str]) -> None:
    """Check ``names`` against the factories installed, as the operator would find them."""
    if names:
        installed = resources.discover()
        for name in names:
            if name not in installed:
                raise UnknownResource(name, installed)


def build_spec(
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    *,
    allowed_modules: Sequence[str],
    check_resources: Callable[[Sequence[str]], None] = _installed_resources,
    uid: str = "",
) -> JobSpec:
    """The engine's record for a ScheduledJob's spec.

    Raises a :class:`podcron.errors.PodcronError` whose ``reason`` is the
    ``Ready`` condition reason when the spec cannot be scheduled.
    ``check_resources`` raises :class:`podcron.errors.UnknownResource` for
    a name in ``spec.resources`` that no factory is registered under (by
    default, no factory installed in the entry-point group). ``uid`` is the
    object's ``metadata.uid`` (empty where there is no object: the job id stands in).
    """
    schedule = parse_schedule(spec.get("schedule") or {}, time_zone=spec.get("timeZone") or "UTC")
    policy_text = spec.get("concurrencyPolicy", ConcurrencyPolicy.FORBID.value)
    try:
        policy = ConcurrencyPolicy(policy_text)
    except ValueError as error:
        raise InvalidJobSpec(
            "spec.concurrencyPolicy", policy_text, "must be Forbid, Allow or Replace"
        ) from error
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise InvalidJobSpec("spec.args", args, "must be an object")
    entry_point = str(spec.get("entryPoint") or "")
    target = entrypoints.resolve(entry_point, allowed_modules=allowed_modules)
    resource_names = _resource_names(spec)
    check_resources(resource_names)
    return JobSpec(
        job_id=job_id(namespace, name),
        namespace=namespace,
        name=name,
        entry_point=entry_point,
        target=target,
        schedule=schedule,
        args=dict(args),
        concurrency_policy=policy,
        suspended=bool(spec.get("suspend", False)),
        timeout_seconds=_optional_seconds(
            spec, "timeoutSeconds", minimum=1, maximum=MAX_TIMEOUT_SECONDS
        ),
        starting_deadline_seconds=_optional_seconds(spec, "startingDeadlineSeconds"),
        resources=resource_names,
        uid=uid,
    )


def schedule_status(schedule: Schedule) -> dict[str, Any]:
    """The status fields that describe the schedule itself."""
    return {
        "scheduleType": schedule.schedule_type,
        "humanReadable": schedule.human_readable,
        "cronExpression": schedule.cron_expression,
    }
