"""Helpers for tests that drive ScheduledJobs with kubectl and read what the operator wrote."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess, get_job

# What examples/podcron_examples/hello.py logs for each run.
HELLO_RUN = re.compile(
    r"hello from (?P<job>\S+) \((?P<trigger>[a-z-]+) run due (?P<due>[0-9T:.+-]+)\)"
)


def manifest(name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """A ScheduledJob object named ``name``."""
    return {
        "apiVersion": "podcron.dev/v1alpha1",
        "kind": "ScheduledJob",
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


def apply(plane: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
    """``kubectl apply`` the objects into ``namespace`` in one call."""
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def patch_spec(plane: ControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Merge ``spec`` into the object's spec."""
    body = json.dumps({"spec": spec})
    plane.kubectl("patch", "scheduledjob", name, "-n", namespace, "--type=merge", "-p", body)


def annotate(plane: ControlPlane, namespace: str, name: str, key: str, value: str) -> None:
    """Set annotation ``key`` to ``value``, overwriting it."""
    plane.kubectl(
        "annotate", "scheduledjob", name, "-n", namespace, "--overwrite", f"{key}={value}"
    )


def status(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The object's status, {} when it has none (or the object is gone)."""
    found: dict[str, Any] = get_job(plane, namespace, name).get("status") or {}
    return found


def ready(job_status: dict[str, Any]) -> dict[str, Any]:
    """The Ready condition in ``job_status``, {} when there is none."""
    for condition in job_status.get("conditions") or ():
        if condition.get("type") == "Ready":
            found: dict[str, Any] = condition
            return found
    return {}


def wait_ready(
    plane: ControlPlane, namespace: str, name: str, *, reason: str, timeout: float = 20
) -> dict[str, Any]:
    """Wait until the Ready condition has ``reason``; returns the status then."""

    def reached() -> dict[str, Any] | None:
        found = status(plane, namespace, name)
        return found if ready(found).get("reason") == reason else None

    result: dict[str, Any] = wait_for(
        reached, timeout=timeout, interval=0.2, what=f"{namespace}/{name} Ready reason {reason}"
    )
    return result


def events(plane: ControlPlane, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
    """Events about ScheduledJobs in ``namespace`` (about ``name`` only, if given)."""
    selector = "involvedObject.kind=ScheduledJob"
    if name is not None:
        selector += f",involvedObject.name={name}"
    result = plane.kubectl(
        "get", "events", "-n", namespace, "--field-selector", selector, "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def event_counts(plane: ControlPlane, namespace: str, name: str) -> dict[str, int]:
    """Per reason, how often the Events about ``name`` say it happened (their ``count``)."""
    counts: dict[str, int] = {}
    for event in events(plane, namespace, name):
        counts[event["reason"]] = counts.get(event["reason"], 0) + (event.get("count") or 1)
    return counts


def wait_event(
    plane: ControlPlane, namespace: str, name: str, *, reason: str, timeout: float = 15
) -> dict[str, Any]:
    """Wait for an Event about ``name`` with ``reason``; returns it."""

    def posted() -> dict[str, Any] | None:
        for event in events(plane, namespace, name):
            if event.get("reason") == reason:
                return event
        return None

    result: dict[str, Any] = wait_for(
        posted, timeout=timeout, interval=0.3, what=f"Event {reason} about {namespace}/{name}"
    )
    return result


def table(
    plane: ControlPlane, namespace: str, *names: str, wide: bool = False
) -> list[dict[str, str]]:
    """``kubectl get sj`` as printed: one dict per row, from column header to cell text."""
    output = plane.kubectl("get", "sj", *names, "-n", namespace, *(["-o", "wide"] if wide else []))
    header, *rows = output.stdout.splitlines()
    # Columns are aligned: each starts where its header does (headers have single spaces).
    starts = [match.start() for match in re.finditer(r"(?:^|(?<=\s\s))\S", header)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    titles = [header[start:end].strip() for start, end in bounds]
    return [
        {title: row[start:end].strip() for title, (start, end) in zip(titles, bounds, strict=True)}
        for row in rows
    ]


def hello_runs(log: str, job_id: str) -> list[tuple[str, datetime]]:
    """(trigger, due time) of every run of hello-job ``job_id`` in an operator log."""
    return [
        (match["trigger"], datetime.fromisoformat(match["due"]).astimezone(UTC))
        for match in HELLO_RUN.finditer(log)
        if match["job"] == job_id
    ]


def parse_time(text: str) -> datetime:
    """An RFC 3339 time from status."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@contextmanager
def namespace_for_module(plane: ControlPlane, prefix: str) -> Iterator[str]:
    """A namespace for a whole test module; its ScheduledJobs are deleted afterwards.

    The control plane runs no namespace controller, so a deleted namespace
    keeps its objects: left behind, they would run in later modules' operators.
    """
    name = f"{prefix}-{os.getpid()}"
    plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        plane.kubectl("delete", "scheduledjobs", "--all", "-n", name, check=False)
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def started_operator(plane: ControlPlane, workdir: Path, **env: str) -> OperatorProcess:
    """An operator process, once it logged its start-up."""
    workdir.mkdir(parents=True, exist_ok=True)
    operator = OperatorProcess(plane, workdir, env)
    try:
        wait_for(
            lambda: "podcron operator started" in operator.log(),
            timeout=30,
            what="operator start-up",
        )
    except BaseException:
        operator.stop(signal.SIGKILL)
        raise
    return operator
