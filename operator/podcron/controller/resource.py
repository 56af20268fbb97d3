"""The ScheduledJob resource's coordinates, in one place."""

GROUP = "podcron.dev"
VERSION = "v1alpha1"
PLURAL = "scheduledjobs"
KIND = "ScheduledJob"
RUN_NOW_ANNOTATION = "podcron.dev/run-now"
