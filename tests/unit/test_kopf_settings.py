"""kopf as the operator sets it up: what its defaults would cost at 10,000 jobs.

That a pool smaller than the jobs still registers every one of them is
``tests/integration/test_readiness.py``'s (300 jobs, the real control plane).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import kopf
import pytest

from podcron.controller.main import KOPF_WORKERS, _configure_kopf


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
    _configure_kopf(settings)
    assert settings.queueing.worker_limit == KOPF_WORKERS
    # A bounded worker gives its place up soon after its object's last event, not in 5 s.
    assert settings.queueing.idle_timeout < 1
