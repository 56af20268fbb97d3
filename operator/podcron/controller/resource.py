"""The ScheduledJob resource's coordinates, in one place."""

GROUP = "podcron.dev"
VERSION = "v1alpha1"
PLURAL = "scheduledjobs"
KIND = "ScheduledJob"
RUN_NOW_ANNOTATION = "podcron.dev/run-now"
#: kopf's own annotations (progress of a retried handler; the diff base, in earlier
#: versions). kopf treats every annotation under its prefix as its own bookkeeping and
#: leaves it out of the object's essence, so with plain `podcron.dev` it would never see
#: a change of `podcron.dev/run-now`.
KOPF_PREFIX = "kopf.podcron.dev"
