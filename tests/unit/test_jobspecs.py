"""From a ScheduledJob's spec to the engine's record: the fields outside the schedule."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from podcron.controller.jobspecs import MAX_TIMEOUT_SECONDS, build_spec
from podcron.errors import InvalidJobSpec, InvalidSchedule, UnknownResource
from podcron.resources import ResourceManager

INT64_MAX = 2**63 - 1


def _build(**fields: Any) -> Any:
    spec = {"entryPoint": "hello", "schedule": {"every": "5s"}} | fields
    return build_spec("ns", "job", spec, allowed_modules=())


@pytest.mark.parametrize("seconds", [MAX_TIMEOUT_SECONDS + 1, 300_000_000_000, INT64_MAX, 0, -1])
def test_a_timeout_out_of_bounds_is_refused(seconds: int) -> None:
    # The CRD refuses these; an object stored before it did still reaches the operator.
    with pytest.raises(InvalidJobSpec) as caught:
        _build(timeoutSeconds=seconds)
    assert str(caught.value).startswith("spec.timeoutSeconds: must be ")
    assert caught.value.reason == "InvalidSpec"


@pytest.mark.parametrize("seconds", [1, MAX_TIMEOUT_SECONDS])
def test_a_timeout_within_bounds_is_kept(seconds: int) -> None:
    assert _build(timeoutSeconds=seconds).timeout_seconds == seconds


@pytest.mark.parametrize("seconds", [0, 300_000_000_000, INT64_MAX])
def test_any_starting_deadline_the_api_server_stores_is_kept(seconds: int) -> None:
    # Only compared with the age of a missed tick: no bound is needed (nor has CronJob one).
    assert _build(startingDeadlineSeconds=seconds).starting_deadline_seconds == float(seconds)


def test_listed_resources_are_checked_and_kept_in_order_once_each() -> None:
    manager = ResourceManager({"db": lambda: _unused, "http": lambda: _unused})
    spec = {"entryPoint": "hello", "schedule": {"every": "5s"}, "resources": ["http", "db", "http"]}
    built = build_spec("ns", "job", spec, allowed_modules=(), check_resources=manager.check)
    assert built.resources == ("http", "db")


def test_an_unknown_resource_is_refused_naming_the_registered_ones() -> None:
    manager = ResourceManager({"db": lambda: _unused, "http": lambda: _unused})
    spec = {"entryPoint": "hello", "schedule": {"every": "5s"}, "resources": ["db", "dbx"]}
    with pytest.raises(UnknownResource) as caught:
        build_spec("ns", "job", spec, allowed_modules=(), check_resources=manager.check)
    assert caught.value.reason == "ResourceNotFound"
    assert str(caught.value) == (
        "spec.resources: no resource factory named 'dbx' in entry-point group "
        "podcron.resources (registered: db, http)"
    )


def test_resources_that_are_not_a_list_of_names_are_refused() -> None:
    with pytest.raises(InvalidJobSpec) as caught:
        _build(resources="db")
    assert str(caught.value) == "spec.resources: must be a list of resource names (got 'db')"


def test_no_resources_listed_is_the_default() -> None:
    assert _build().resources == ()


@contextlib.contextmanager
def _unused() -> Iterator[None]:
    """A factory no test creates."""
    yield


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"concurrencyPolicy": "Sometimes"}, "spec.concurrencyPolicy"),
        ({"args": ["a list"]}, "spec.args"),
        ({"timeoutSeconds": "soon"}, "spec.timeoutSeconds"),
    ],
)
def test_a_bad_field_outside_the_schedule_is_an_invalid_spec_not_schedule(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidJobSpec) as caught:
        _build(**fields)
    assert not isinstance(caught.value, InvalidSchedule)
    assert (caught.value.field, caught.value.reason) == (field, "InvalidSpec")


def test_by_default_resources_are_checked_against_the_installed_factories() -> None:
    # This package installs the example's "http" (pyproject.toml), as an image would.
    assert _build(resources=["http"]).resources == ("http",)
    with pytest.raises(UnknownResource) as caught:
        _build(resources=["htp"])
    assert "no resource factory named 'htp'" in str(caught.value)
    assert "http" in str(caught.value)


def test_the_uid_is_the_objects_and_the_job_id_where_there_is_no_object() -> None:
    # The firing gate assigns jobs by uid: a re-created object of the same name is a new job.
    spec = {"entryPoint": "hello", "schedule": {"every": "5s"}}
    built = build_spec("ns", "job", spec, allowed_modules=(), uid="0b7c-uid")
    assert built.uid == "0b7c-uid"
    assert _build().uid == "ns/job"
