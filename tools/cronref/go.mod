// Tools module: cronref, the reference the cron differential test compares
// podcron's cron dialect with. Kubernetes CronJob parses schedules with
// robfig/cron v3 (ParseStandard); this pins the release Kubernetes vendors.
module podcron.dev/tools/cronref

go 1.26.0

require github.com/robfig/cron/v3 v3.0.1
