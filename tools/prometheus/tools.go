//go:build tools

// Package tools pins the command this module builds: promtool, which checks
// and unit-tests the chart's alerting rules as Prometheus itself evaluates them.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
