"""JobMetadata: a job as the System API shows it (camelCase; the sidecar's openapi.yaml). No I/O.

Times are RFC 3339 UTC with milliseconds, exactly as in the ScheduledJob's
status, so a job reads the same in ``kubectl`` and over ``/_sys/job``.
"""

from __future__ import annotations

import json
from typing import Any

from podcron.controller.jobspecs import format_time
from podcron.engine import JobSnapshot


def job_metadata(snapshot: JobSnapshot) -> dict[str, Any]:
    """The JobMetadata object of the System API for one engine snapshot."""
    spec, history = snapshot.spec, snapshot.history
    schedule, counts = spec.schedule, history.counts
    duration = history.last_duration_seconds
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
        "running": snapshot.running,
        "nextExecutionTime": format_time(snapshot.next_run_time),
        "lastExecutionTime": format_time(history.last_run_time),
        "lastExecutionStatus": None if history.last_status is None else history.last_status.value,
        "lastDurationSeconds": None if duration is None else round(duration, 3),
        "totalExecutions": counts.total,
        "successCount": counts.succeeded,
        "failureCount": counts.failed,
        "skippedCount": counts.skipped,
    }


def encode(document: object) -> bytes:
    """Compact JSON, as the control socket sends it."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
