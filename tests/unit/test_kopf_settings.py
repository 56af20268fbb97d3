"""kopf as the operator sets it up: what its defaults would cost at 10,000 jobs.

That a pool smaller than the jobs still registers every one of them is
``tests/integration/test_readiness.py``'s (300 jobs, the real control plane).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import kopf
import pytest

from podcron.controller.handled import HandledInMemory
from podcron.controller.main import KOPF_WORKERS, _configure_kopf
from podcron.controller.resource import KOPF_PREFIX


@pytest.fixture
def kopf_objects_level() -> Iterator[None]:
    logger = logging.getLogger("kopf.objects")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("kopf_objects_level")
def test_kopf_handles_a_bounded_number_of_objects_at_once() -> None:
    settings = kopf.OperatorSettings()
    # kopf's own default: one worker per object at once, every one of them at start-up.
    assert settings.queueing.worker_limit is None
    _configure_kopf(settings, HandledInMemory(KOPF_PREFIX))
    assert settings.queueing.worker_limit == KOPF_WORKERS
    # A bounded worker gives its place up soon after its object's last event, not in 5 s.
    assert settings.queueing.idle_timeout < 1


@pytest.mark.usefixtures("kopf_objects_level")
def test_kopf_diffs_against_the_state_this_process_handled_not_an_annotation() -> None:
    settings = kopf.OperatorSettings()
    handled = HandledInMemory(KOPF_PREFIX)
    _configure_kopf(settings, handled)
    assert settings.persistence.diffbase_storage is handled


def _body(uid: str, annotations: dict[str, str], spec: dict[str, object]) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "podcron.dev/v1alpha1",
            "kind": "ScheduledJob",
            "metadata": {"name": "a", "namespace": "ns", "uid": uid, "annotations": annotations},
            "spec": spec,
            "status": {"runs": {"total": 3}},
        }
    )


def test_what_was_handled_is_kept_by_uid_and_never_written_onto_the_object() -> None:
    handled = HandledInMemory(KOPF_PREFIX)
    body = _body("u1", {"podcron.dev/run-now": "1"}, {"entryPoint": "hello"})
    assert handled.fetch(body=body) is None  # first sight: kopf calls the creation handlers
    essence = handled.build(body=body)
    patch = kopf.Patch()
    handled.store(body=body, patch=patch, essence=essence)
    assert not patch  # nothing to send
    assert handled.fetch(body=body) == {
        "metadata": {"annotations": {"podcron.dev/run-now": "1"}},
        "spec": {"entryPoint": "hello"},
    }
    assert handled.fetch(body=_body("u2", {}, {})) is None
    handled.forget("u1")
    assert handled.fetch(body=body) is None


def test_the_annotations_earlier_versions_kept_under_kopfs_prefix_are_not_a_change() -> None:
    handled = HandledInMemory(KOPF_PREFIX)
    old = f"{KOPF_PREFIX}/last-handled-configuration"
    essence = handled.build(body=_body("u1", {old: "{}"}, {"entryPoint": "hello"}))
    assert essence == {"spec": {"entryPoint": "hello"}}
