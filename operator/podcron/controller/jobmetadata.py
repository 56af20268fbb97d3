"""JobMetadata: a job as the System API shows it (camelCase; the sidecar's openapi.yaml). No I/O.

Times are RFC 3339 UTC with milliseconds, exactly as in the ScheduledJob's
status, so a job reads the same in ``kubectl`` and over ``/_sys/job``.
"""

from __future__ import annotations

import json
from typing import Any

from podcron.engine import JobSnapshot
from podcron.runrecord import run_metadata


def job_metadata(snapshot: JobSnapshot, replica: str | None = None) -> dict[str, Any]:
    """The JobMetadata of one engine snapshot; ``replica``: the job's owner, if several run."""
    spec = snapshot.spec
    schedule = spec.schedule
    return {
        "jobId": spec.job_id,
        "namespace": spec.namespace,
        "name": spec.name,
        "entryPoint": spec.entry_point,
        "scheduleType": schedule.schedule_type,
        "cronExpression": schedule.cron_expression,
        "humanReadable": schedule.human_readable,
        "timeZone": schedule.time_zone,
        "suspended": spec.suspended,
        "replica": replica,
        **run_metadata(snapshot.record),
    }


def encode(document: object) -> bytes:
    """Compact JSON, as the control socket sends it."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
