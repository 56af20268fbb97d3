"""What kopf last handled of each ScheduledJob, kept in this process rather than on the object.

kopf finds a changed spec or annotation by diffing an object against the state it
last handled (its "diff base"), which by default it writes onto the object as an
annotation: one patch per object at its first sight and one per change, each of
which comes back as a watch event. With several replicas every replica wrote it,
on every job, and every write came back to every replica: 20,000 jobs on four
replicas made 33,039 such patches in their first seven minutes, and the objects'
resourceVersions moved under the status writer, which had 16,287 of its 20,375
patches refused (409) and read again; 2,544 of the jobs were Ready by then.

So each process keeps its own, by object UID, as compact JSON (a string per job
is cheaper to hold than the nested dicts, and kopf decodes it as it decoded the
annotation). A process that starts has none: kopf calls the creation handlers
for every object it lists, which register it the same way the resume handlers
did. What the diff base held across restarts and podcron still needs (the
run-now annotation's last value) is in the object's status
(:mod:`podcron.controller.handlers`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import kopf


class HandledInMemory(kopf.DiffBaseStorage):
    """kopf's diff base of each object, by UID, in this process only."""

    def __init__(self, ignored_prefix: str) -> None:
        super().__init__()
        # Annotations under this prefix are kopf's own storage (written by earlier
        # versions): not the user's, and never a change to handle.
        self._ignored = f"{ignored_prefix}/"
        self._essences: dict[str, str] = {}

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        annotations = essence.get("metadata", {}).get("annotations", {})
        kopfs = {key for key in annotations if key.startswith(self._ignored)}
        self.remove_annotations(essence, kopfs)
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        encoded = self._essences.get(str(body.metadata.uid))
        return None if encoded is None else json.loads(encoded)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        # Nothing goes into `patch`: kopf sends no request for an empty one.
        self._essences[str(body.metadata.uid)] = json.dumps(essence, separators=(",", ":"))

    def forget(self, uid: str) -> None:
        """The object was deleted: drop its diff base."""
        self._essences.pop(uid, None)
