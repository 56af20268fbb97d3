"""podcron: run Python entry points inside the operator's own pod on a declared schedule.

Job authors need only :class:`JobContext`::

    from podcron import JobContext

    async def cleanup(ctx: JobContext) -> None:
        ctx.log.info("deleting rows older than %s days", ctx.args["retentionDays"])
"""

from podcron.context import Cancellation, JobContext, Trigger

__all__ = ["Cancellation", "JobContext", "Trigger"]
