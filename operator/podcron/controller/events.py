"""Kubernetes Events about ScheduledJobs: state changes and failed runs, never successes."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from podcron.controller.kubeapi import KubeApi, ObjectGone

log = logging.getLogger("podcron.events")

# A job failing every second would otherwise post an Event every second; the
# failures in between are counted into the next Event's message instead.
FAILURE_EVENT_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Which ScheduledJob an Event is about."""

    namespace: str
    name: str
    uid: str


class EventRecorder:
    """Posts Events in a worker thread; a failed post is logged, never raised."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="podcron-events")
        self._last_failure_event: dict[ObjectRef, float] = {}
        self._unreported_failures: dict[ObjectRef, int] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def post(self, ref: ObjectRef, *, warning: bool, reason: str, message: str) -> None:
        """Post one Event in the background."""
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._post, ref, "Warning" if warning else "Normal", reason, message
        )
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    def run_failed(self, ref: ObjectRef, error: str | None) -> None:
        """Report a failed run, at most one Event per job per interval."""
        now = time.monotonic()
        failures = self._unreported_failures.get(ref, 0) + 1
        if now - self._last_failure_event.get(ref, -FAILURE_EVENT_INTERVAL_SECONDS) < (
            FAILURE_EVENT_INTERVAL_SECONDS
        ):
            self._unreported_failures[ref] = failures
            return
        self._last_failure_event[ref] = now
        self._unreported_failures.pop(ref, None)
        suffix = f" ({failures} failed runs since the last Event)" if failures > 1 else ""
        self.post(ref, warning=True, reason="RunFailed", message=f"{error}{suffix}")

    def forget(self, ref: ObjectRef) -> None:
        """Drop the bookkeeping of a deleted job."""
        self._last_failure_event.pop(ref, None)
        self._unreported_failures.pop(ref, None)

    def _post(self, ref: ObjectRef, event_type: str, reason: str, message: str) -> None:
        try:
            self._api.create_event(
                namespace=ref.namespace,
                name=ref.name,
                uid=ref.uid,
                event_type=event_type,
                reason=reason,
                message=message,
            )
        except ObjectGone:
            pass
        except Exception:
            log.warning(
                "could not post Event %s for %s/%s", reason, ref.namespace, ref.name, exc_info=True
            )

    async def close(self) -> None:
        """Wait briefly for Events in flight, then release the threads."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
