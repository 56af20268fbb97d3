"""The smallest job: say hello with the arguments it was given."""

from podcron import JobContext


async def hello(ctx: JobContext) -> None:
    """Log a greeting naming the trigger and ``args.greeting`` (default "hello")."""
    greeting = ctx.args.get("greeting", "hello")
    ctx.log.info(
        "%s from %s (%s run due %s)",
        greeting,
        ctx.job_id,
        ctx.trigger,
        ctx.scheduled_time.isoformat(),
    )
