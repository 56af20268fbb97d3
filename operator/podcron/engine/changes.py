"""Which jobs' snapshots may have changed: each reader's set of job ids.

A reader that derives something costly from every job's snapshot (the control
socket's serialised job list) rebuilds only the jobs marked since it last
looked: at 10,000 jobs, snapshotting them all for each request held the loop
for tens of milliseconds, several times a second, while runs were due.
"""

from __future__ import annotations


class ChangedJobs:
    """The ids of the jobs whose snapshot may have changed since the last :meth:`take`."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def take(self) -> set[str]:
        """The ids marked since the last call (a removed job's among them), and forget them."""
        ids, self._ids = self._ids, set()
        return ids


class JobChanges:
    """Marked by the engine's parts whenever a job's snapshot may have changed."""

    __slots__ = ("_readers",)

    def __init__(self) -> None:
        self._readers: list[ChangedJobs] = []

    def mark(self, job_id: str) -> None:
        """The job's spec, active runs, next run time or history changed (or it was removed)."""
        for reader in self._readers:
            reader._ids.add(job_id)

    def reader(self) -> ChangedJobs:
        """A new reader: it holds the jobs marked from now on until it takes them."""
        reader = ChangedJobs()
        self._readers.append(reader)
        return reader
