"""The chaos checker on ledgers written by hand: duplicates, missed ticks, take-over times."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from podcron.schedules import Schedule, parse_schedule
from tests.chaos.checker import Fault, Takeover, Verdict, expected_ticks, judge, takeovers
from tests.jobs.podcron_chaosjobs.ledger import Entry

EVERY_2S = parse_schedule({"every": "2s"})
EVERY_20S = parse_schedule({"every": "20s"})
SCHEDULES = {"ns/a": EVERY_2S, "ns/b": EVERY_2S}


def entry(job: str, tick: float, pid: int = 1, at: float | None = None) -> Entry:
    """A ledger line of ``pid`` starting ``tick`` at monotonic ``at`` (the tick, by default)."""
    return Entry(job, tick, f"r{pid}", pid, tick, tick if at is None else at, "scheduled")


def verdict(
    entries: list[Entry],
    *,
    schedules: Mapping[str, Schedule] = SCHEDULES,
    window: tuple[float, float] = (1000.0, 1010.0),
    faults: Sequence[Fault] = (),
    **counts: dict[str, int] | None,
) -> Verdict:
    return judge(
        entries=entries,
        schedules=schedules,
        window=window,
        faults=faults,
        replicas=1,
        uncertain=counts.get("uncertain"),
        counted_missed=counts.get("counted_missed"),
        writes=50.0,
        lease_writes=10.0,
        seconds=10.0,
        skipped=counts.get("skipped"),
    )


def every_tick(pid: int = 1) -> list[Entry]:
    return [entry(job, 1000.0 + 2 * i, pid) for job in SCHEDULES for i in range(5)]


def test_the_ticks_of_a_window_include_its_start_and_exclude_its_end() -> None:
    assert expected_ticks(EVERY_2S, 1000.0, 1006.0) == {1_000_000, 1_002_000, 1_004_000}


def test_a_ledger_with_every_tick_once_is_clean() -> None:
    result = verdict(every_tick())
    assert result == verdict(every_tick())  # the verdict is a value
    line = judge(
        entries=every_tick(),
        schedules=SCHEDULES,
        window=(1000.0, 1010.0),
        faults=[],
        replicas=1,
        uncertain=None,
        counted_missed=None,
        writes=50.0,
        lease_writes=10.0,
        seconds=10.0,
    ).result_line({"seed": 7})
    assert line.startswith(
        "RESULT chaos replicas=1 jobs=2 ticks=10 duplicates=0 missed_outside_window=0 "
        "uncertain=none failover_p99_s=none sigterm_handover_max_s=none writes_per_s=5.0 "
        "lease_writes_per_s=1.00"
    )
    assert line.endswith(" seed=7")


def test_two_replicas_starting_every_tick_are_all_duplicates() -> None:
    result = judge(
        entries=every_tick(1) + every_tick(2),
        schedules=SCHEDULES,
        window=(1000.0, 1010.0),
        faults=[],
        replicas=2,
        uncertain=None,
        counted_missed=None,
        writes=0.0,
        lease_writes=0.0,
        seconds=10.0,
    )
    assert (result.ticks, result.duplicates, result.missed) == (10, 10, 0)
    late = [entry("ns/a", 1010.0, pid) for pid in (1, 2)]  # after the window: counted in all
    again = judge(
        entries=every_tick(1) + late,
        schedules=SCHEDULES,
        window=(1000.0, 1010.0),
        faults=[],
        replicas=2,
        uncertain=None,
        counted_missed=None,
        writes=0.0,
        lease_writes=0.0,
        seconds=10.0,
    )
    assert (again.duplicates, again.duplicates_all) == (0, 1)


def test_missing_ticks_are_missed_outside_a_window_unless_the_operators_counted_them() -> None:
    entries = [e for e in every_tick() if not (e.job == "ns/a" and e.tick >= 1006.0)]
    uncounted = judge(
        entries=entries,
        schedules=SCHEDULES,
        window=(1000.0, 1010.0),
        faults=[],
        replicas=1,
        uncertain=None,
        counted_missed=None,
        writes=0.0,
        lease_writes=0.0,
        seconds=10.0,
    )
    assert (uncounted.missed, uncounted.missed_outside_window) == (2, 2)
    counted = judge(
        entries=entries,
        schedules=SCHEDULES,
        window=(1000.0, 1010.0),
        faults=[],
        replicas=1,
        uncertain={"ns/a": 1},
        counted_missed={"ns/a": 1},
        writes=0.0,
        lease_writes=0.0,
        seconds=10.0,
    )
    assert (counted.missed, counted.missed_outside_window) == (2, 0)
    assert (counted.uncertain, counted.counted_missed) == (1, 1)


def test_a_jobs_counts_do_not_excuse_the_ticks_another_job_lost() -> None:
    entries = [e for e in every_tick() if not (e.job == "ns/a" and e.tick >= 1006.0)]
    result = verdict(entries, uncertain={"ns/b": 1}, counted_missed={"ns/a": 1, "ns/b": 3})
    assert (result.missed, result.missed_outside_window) == (2, 1)
    assert (result.uncertain, result.counted_missed) == (1, 4)
    assert [u.describe() for u in result.uncounted] == ["ns/a: 2 missing, 1 counted: 1006 1008"]


def test_a_tick_skipped_under_forbid_is_an_outcome_not_a_loss() -> None:
    # ns/a's run at 1004 was still going at 1006: the operator skipped that tick and said so.
    entries = [e for e in every_tick() if not (e.job == "ns/a" and e.tick == 1006.0)]
    assert verdict(entries).missed_outside_window == 1
    result = verdict(entries, skipped={"ns/a": 1})
    assert (result.missed, result.missed_outside_window, result.skipped) == (1, 0, 1)
    assert "counted_missed=none skipped=1 " in result.result_line()
    assert verdict(entries, skipped={"ns/b": 1}).missed_outside_window == 1


def test_a_take_over_is_timed_from_the_first_tick_the_faulted_process_did_not_start() -> None:
    # The fault was noted at 1001.9, the signal went out after a scrape: the process started
    # 1002 itself, and the other took over on time at 1004.
    entries = [
        entry("ns/a", 1000.0, pid=1),
        entry("ns/a", 1002.0, pid=1),
        entry("ns/a", 1004.0, pid=2, at=1004.1),
    ]
    term = Fault("term", "r1", 1, 1001.9, 1001.9)
    [taken] = takeovers(entries, term, SCHEDULES)
    assert math.isclose(taken.next_start, 2.2)
    assert math.isclose(taken.outage, 0.1)


def test_a_take_over_is_timed_from_the_fault_and_from_the_jobs_first_tick_due_after_it() -> None:
    entries = [
        entry("ns/a", 1000.0, pid=1, at=1000.0),
        entry("ns/b", 1000.0, pid=2, at=1000.0),  # not the killed process's job
        entry("ns/slow", 1000.0, pid=1, at=1000.0),
        entry("ns/a", 1006.0, pid=3, at=1006.5),
        entry("ns/slow", 1020.0, pid=3, at=1020.25),
    ]
    schedules = SCHEDULES | {"ns/slow": EVERY_20S}
    # The harness's monotonic clock is 100 s behind its wall clock (the ticks' clock) here.
    entries = [dataclasses.replace(e, monotonic=e.monotonic - 100) for e in entries]
    kill = Fault("kill", "r1", 1, 901.0, 1001.0)
    # ns/a was due at 1002, 4.5 s before it started; ns/slow at 1020, started on time.
    assert takeovers(entries, kill, schedules) == [Takeover(5.5, 4.5), Takeover(19.25, 0.25)]
    never = Fault("kill", "r2", 2, 901.0, 1001.0)
    assert all(math.isnan(t.next_start) for t in takeovers(entries, never, schedules))
    faults = [kill, never, Fault("term", "r1", 1, 901.0, 1001.0)]
    result = verdict(entries, schedules=schedules, window=(1000.0, 1002.0), faults=faults)
    assert (result.failover_p99_s, result.failover_next_start_p99_s) == (4.5, 19.25)
    assert (result.sigterm_handover_max_s, result.sigterm_next_start_max_s) == (4.5, 19.25)
    assert result.failovers_unrecovered == 1
    line = result.result_line()
    assert "failover_p99_s=4.50 " in line
    assert "failover_next_start_p99_s=19.25 " in line


def test_a_take_over_the_api_server_was_down_for_is_also_timed_without_that_outage() -> None:
    entries = [
        entry("ns/a", 1000.0, pid=1, at=1000.0),
        entry("ns/a", 1012.0, pid=2, at=1012.5),
    ]
    kill = Fault("kill", "r1", 1, 1001.0, 1001.0)
    # Down from 1003 to 1009 (six of the 11.5 s), and etcd stopped before the kill only.
    apiserver = Fault("apiserver", "kube-apiserver", 0, 1003.0, 1003.0, healed=1009.0)
    etcd = Fault("etcd", "etcd", 0, 990.0, 990.0, healed=995.0)
    [taken] = takeovers(entries, kill, SCHEDULES, [apiserver, etcd])
    assert (taken.outage, taken.control_plane_down, taken.own_outage) == (10.5, 6.0, 4.5)
    result = verdict(entries, window=(1000.0, 1002.0), faults=[etcd, kill, apiserver])
    assert (result.failover_p99_s, result.failover_own_p99_s) == (10.5, 4.5)
    assert "failover_p99_s=10.50 " in result.result_line()
    assert "failover_own_p99_s=4.50 " in result.result_line()


def test_each_kill_and_term_is_described_with_its_own_jobs_outages() -> None:
    entries = [
        entry("ns/a", 1000.0, pid=1, at=1000.0),
        entry("ns/b", 1000.0, pid=1, at=1000.0),
        entry("ns/a", 1004.0, pid=2, at=1004.5),
        entry("ns/b", 1010.0, pid=2, at=1010.25),
    ]
    kill = Fault("kill", "r1", 1, 1001.0, 1001.0)
    apiserver = Fault("apiserver", "kube-apiserver", 0, 1005.0, 1005.0, healed=1008.0)
    idle = Fault("term", "r2", 3, 1001.0, 1001.0)  # no job was its
    result = verdict(entries, window=(1000.0, 1002.0), faults=[kill, apiserver, idle])
    assert [c.fault for c in result.costs] == [kill, idle]
    # ns/a due at 1002, started 2.5 s later; ns/b due at 1002 too, started 8.25 s later, of
    # which the API server was down for 3.
    assert result.costs[0].describe(990.0) == (
        "kill on r1 at +11.0s: 2 jobs, 2 started elsewhere; outage p50 2.50s max 8.25s"
        " (own 5.25s, beyond the tick's usual lateness 8.25s)"
    )
    assert result.costs[1].describe(990.0) == "term on r2 at +11.0s: 0 jobs, none started elsewhere"


def test_a_ledger_line_reads_back_as_written() -> None:
    written = entry("ns/a", 1000.25, pid=42)
    assert Entry.parse(written.line().decode()) == written
    assert len(written.line()) < 512  # one write() of under PIPE_BUF: atomic with O_APPEND


def test_a_take_over_is_also_timed_beyond_the_usual_lateness_of_the_successors_start() -> None:
    # Every job is due at 1002; the successor (pid 2) was busy and started its own jobs of
    # that tick 0.4 and 0.6 s late (and one of 1004, 3 s late): the take-over's 0.9 s is
    # 0.3 s beyond the latest of them.
    entries = [
        entry("ns/a", 1000.0, pid=1, at=1000.0),
        entry("ns/b", 1000.0, pid=2, at=1000.0),
        entry("ns/c", 1000.0, pid=2, at=1000.0),
        entry("ns/b", 1002.0, pid=2, at=1002.4),
        entry("ns/c", 1002.0, pid=2, at=1002.6),
        entry("ns/a", 1002.0, pid=2, at=1002.9),
        entry("ns/b", 1004.0, pid=2, at=1007.0),
    ]
    term = Fault("term", "r1", 1, 1001.0, 1001.0)
    [taken] = takeovers(entries, term, SCHEDULES)
    assert math.isclose(taken.outage, 0.9)
    assert math.isclose(taken.usual_lateness, 0.6)
    assert math.isclose(taken.added, 0.3)
    # A start no later than the others' added nothing.
    assert dataclasses.replace(taken, usual_lateness=1.5).added == 0.0
    # The others started early (a clock a little ahead): nothing is taken as beyond them.
    early = [
        dataclasses.replace(e, monotonic=e.tick - 0.2) if e.job != "ns/a" else e for e in entries
    ]
    [taken] = takeovers(early, term, SCHEDULES)
    assert (taken.usual_lateness, taken.added) == (0.0, taken.outage)
    result = verdict(entries, window=(1000.0, 1002.0), faults=[term])
    assert math.isclose(result.sigterm_handover_added_max_s, 0.3)
    assert "sigterm_handover_max_s=0.90 " in result.result_line()
    assert "sigterm_handover_added_max_s=0.30" in result.result_line()


def test_a_kill_with_another_replicas_fault_within_l_is_left_out_of_the_kills_alone() -> None:
    # r1 dies at 1001 and its job's next tick (1002) starts elsewhere 2 s late; r2 dies at
    # 1031, and r3 is paused from 1034 for 2 s, within L (6 s) of it: its job waits 11 s.
    entries = [
        entry("ns/a", 1000.0, pid=1, at=1000.0),
        entry("ns/a", 1004.0, pid=4, at=1004.0),
        entry("ns/b", 1030.0, pid=2, at=1030.0),
        entry("ns/b", 1042.0, pid=4, at=1043.0),
    ]
    first = Fault("kill", "r1", 1, 1001.0, 1001.0, seconds=2.0)
    second = Fault("kill", "r2", 2, 1031.0, 1031.0, seconds=2.0)
    pause = Fault("pause", "r3", 3, 1034.0, 1034.0, seconds=2.0)
    result = verdict(entries, window=(1000.0, 1002.0), faults=[first, second, pause])
    assert [len(c.takeovers) for c in result.costs] == [1, 1]
    assert result.failover_p99_s == 11.0
    assert (result.failover_alone_p99_s, result.failovers_alone) == (2.0, 1)
    assert "failover_alone_p99_s=2.00 failovers_alone=1" in result.result_line()
    # On from 1034 to 1036: within L of a kill at 1042, not of one at 1043.
    assert pause.overlaps(1042.0 - 6.0, 1042.0 + 6.0)
    assert not pause.overlaps(1043.0 - 6.0, 1043.0 + 6.0)
