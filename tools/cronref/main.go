// Command cronref answers, for cron expressions, what Kubernetes CronJob would:
// whether its API validation accepts the expression and, if so, the next fire
// times in UTC by github.com/robfig/cron/v3, the library CronJob schedules with.
//
// It reads one JSON request per line on stdin,
//
//	{"expression": "*/5 * * * *", "start": 1718000000, "count": 5}
//
// (start in Unix seconds) and writes one JSON answer per line on stdout,
//
//	{"accepted": true, "every": false, "error": "", "next": [1718000100, ...]}
//
// so one process serves a whole test batch. "next" stops early where robfig
// finds no further time (it searches five years ahead, then gives up).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

type request struct {
	Expression string `json:"expression"`
	Start      int64  `json:"start"`
	Count      int    `json:"count"`
}

type answer struct {
	Accepted bool    `json:"accepted"`
	Every    bool    `json:"every"`
	Error    string  `json:"error"`
	Next     []int64 `json:"next"`
}

// validate is Kubernetes' validateScheduleFormat for a new CronJob: ParseStandard
// must accept the schedule and it must not contain "TZ". ParseStandard panics on
// a TZ= prefix with no space after it; that counts as a refusal.
func validate(expression string) (schedule cron.Schedule, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			schedule, err = nil, fmt.Errorf("panic: %v", recovered)
		}
	}()
	schedule, err = cron.ParseStandard(expression)
	if err == nil && strings.Contains(expression, "TZ") {
		schedule, err = nil, fmt.Errorf("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
	}
	return schedule, err
}

func respond(req request) answer {
	schedule, err := validate(req.Expression)
	if err != nil {
		return answer{Error: err.Error(), Next: []int64{}}
	}
	_, every := schedule.(cron.ConstantDelaySchedule)
	next := make([]int64, 0, req.Count)
	moment := time.Unix(req.Start, 0).UTC()
	for range req.Count {
		moment = schedule.Next(moment)
		if moment.IsZero() {
			break
		}
		next = append(next, moment.Unix())
	}
	return answer{Accepted: true, Every: every, Next: next}
}

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	encoder := json.NewEncoder(out)
	for scanner.Scan() {
		var req request
		if err := json.Unmarshal(scanner.Bytes(), &req); err != nil {
			fmt.Fprintf(os.Stderr, "cronref: bad request line: %v\n", err)
			os.Exit(2)
		}
		if err := encoder.Encode(respond(req)); err != nil {
			fmt.Fprintf(os.Stderr, "cronref: %v\n", err)
			os.Exit(1)
		}
		// Flush per answer: the caller may wait for each before sending more.
		if err := out.Flush(); err != nil {
			fmt.Fprintf(os.Stderr, "cronref: %v\n", err)
			os.Exit(1)
		}
	}
	if err := scanner.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "cronref: %v\n", err)
		os.Exit(1)
	}
}
