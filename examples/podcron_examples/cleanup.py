"""A plain ``def`` job (it runs in a worker thread): pretend to delete old rows."""

import time

from podcron import JobContext


def cleanup(ctx: JobContext) -> None:
    """Delete rows older than ``args.retentionDays``, stopping early when cancelled."""
    retention_days = int(ctx.args.get("retentionDays", 7))
    ctx.log.info("deleting rows older than %s days", retention_days)
    for batch in range(int(ctx.args.get("batches", 3))):
        if ctx.cancelled:  # threads cannot be interrupted: they check the flag
            ctx.log.info("cancelled after %s batches", batch)
            return
        time.sleep(0.05)
