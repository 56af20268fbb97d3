"""Every status the API server sends for a namespace's ScheduledJobs, and counters that fell."""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from typing import Any, cast

import kubernetes

from controlplane import ControlPlane
from podcron.controller.resource import GROUP, PLURAL, VERSION


class StatusWatch:
    """Every ``status.runs`` the API server sends for a namespace's ScheduledJobs, in order.

    A watch, not polling: each status patch arrives as its own event, so a counter that
    went back even for one write is seen.
    """

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        # The kubernetes client has no type hints.
        api_client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(plane.kubeconfig)
        )
        self._api: Any = kubernetes.client.CustomObjectsApi(api_client)
        self._namespace = namespace
        #: Per job, (status.runs, status.replica) of each event with a status, in order.
        self.seen: dict[str, list[tuple[dict[str, int], object]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failed: BaseException | None = None
        listed = cast(
            "dict[str, Any]",
            self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
        )
        for item in listed["items"]:
            self._note(item)
        self._version: str = listed["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)
        self._thread.start()

    def _note(self, job: dict[str, Any]) -> None:
        job_status = job.get("status") or {}
        if "runs" in job_status:
            with self._lock:
                self.seen[job["metadata"]["name"]].append(
                    (dict(job_status["runs"]), job_status.get("replica"))
                )

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                # Short watches resumed where the last one ended, so that stop() is prompt.
                watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                for event in watch.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self._namespace,
                    PLURAL,
                    resource_version=self._version,
                    timeout_seconds=2,
                ):
                    job = event["object"]
                    self._version = job["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._note(job)
        except BaseException as error:  # reported by stop(), on the test's thread
            self._failed = error

    def stop(self) -> dict[str, list[tuple[dict[str, int], object]]]:
        self._stopping.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the status watch did not stop"
        if self._failed is not None:
            raise self._failed
        with self._lock:
            return dict(self.seen)

    def latest(self, name: str) -> tuple[dict[str, int], object]:
        with self._lock:
            history = self.seen.get(name)
            return history[-1] if history else ({}, None)


def went_back(history: list[tuple[dict[str, int], object]]) -> list[str]:
    """Each step of a job's status where a runs counter is lower than the step before."""
    backwards = []
    for (before, was), (after, now) in itertools.pairwise(history):
        for counter, value in before.items():
            if after.get(counter, 0) < value:
                backwards.append(
                    f"{counter} {value} (replica {was}) -> {after.get(counter)} (replica {now})"
                )
    return backwards
