"""An async job that would call another service, passing its trace along."""

from podcron import JobContext


async def report(ctx: JobContext) -> None:
    """Build a report; ``ctx.trace_headers()`` is what an HTTP call downstream would carry."""
    headers = ctx.trace_headers()
    ctx.log.info(
        "building the %s report (trace headers: %s)",
        ctx.args.get("kind", "daily"),
        headers or "tracing off",
    )
