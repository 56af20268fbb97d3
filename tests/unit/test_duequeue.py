"""The due queue on its own: against a plain dict of due times, under any sequence of changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podcron.engine import duequeue
from podcron.engine.duequeue import DueQueue

KEYS = st.sampled_from([f"ns/job-{index}" for index in range(6)])
TIMES = st.integers(min_value=0, max_value=20).map(float)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), KEYS, TIMES),
        st.tuples(st.just("discard"), KEYS, TIMES),
        st.tuples(st.just("pop_due"), KEYS, TIMES),
    ),
    max_size=60,
)


# No deadline: on a loaded machine (or under mutmut's tracing) an example may take longer
# than hypothesis's 200 ms, which says nothing about the queue.
@settings(deadline=None)
@given(STEPS, st.integers(min_value=1, max_value=4))
def test_the_queue_agrees_with_a_dict_of_due_times(
    steps: list[tuple[str, str, float]], limit: int
) -> None:
    queue = DueQueue()
    expected: dict[str, float] = {}
    for step, key, at in steps:
        if step == "push":
            queue.push(key, at)
            expected[key] = at
        elif step == "discard":
            queue.discard(key)
            expected.pop(key, None)
        else:
            popped = queue.pop_due(at, limit)
            assert [due for _, due in popped] == sorted(due for _, due in popped)
            due = sorted((when, name) for name, when in expected.items() if when <= at)
            assert len(popped) == min(limit, len(due))
            # Ties in due time may come in any order; the times are the earliest ones.
            assert sorted(when for _, when in popped) == [when for when, _ in due[:limit]]
            for name, when in popped:
                assert expected.pop(name) == when
        assert len(queue) == len(expected)
        assert all((key in queue) == (key in expected) for key in expected)
        assert queue.earliest() == min(expected.values(), default=None)


def test_a_key_pushed_again_is_due_once_at_its_new_time() -> None:
    queue = DueQueue()
    queue.push("a", 5.0)
    queue.push("a", 5.0)
    queue.push("a", 3.0)
    assert queue.pop_due(10.0, limit=10) == [("a", 3.0)]
    assert queue.pop_due(10.0, limit=10) == []


def test_a_churn_of_updates_does_not_grow_the_heap_without_bound() -> None:
    queue = DueQueue()
    for index in range(10 * duequeue.COMPACT_AFTER_STALE):
        queue.push("kept", float(index))  # replaced: its last entry goes stale
        queue.push(f"gone-{index}", float(index))
        queue.discard(f"gone-{index}")
    assert len(queue) == 1
    assert queue.entries < 4 * duequeue.COMPACT_AFTER_STALE
    assert queue.pop_due(float("inf"), limit=10) == [
        ("kept", float(10 * duequeue.COMPACT_AFTER_STALE - 1))
    ]


def test_a_churn_the_timer_looks_at_in_between_does_not_grow_the_heap_without_bound() -> None:
    # The engine asks for the earliest due time after every change: the stale places that
    # surface there are dropped, and the ones that never surface still bring a rebuild.
    queue = DueQueue()
    for index in range(10 * duequeue.COMPACT_AFTER_STALE):
        queue.push("kept", float(index))  # its last place is stale, and comes up first
        queue.push(f"gone-{index}", 1e9 + index)  # stale once discarded, never first
        queue.discard(f"gone-{index}")
        assert queue.earliest() == float(index)
    assert queue.entries < 4 * duequeue.COMPACT_AFTER_STALE


def test_a_churn_the_timer_pops_in_between_does_not_grow_the_heap_without_bound() -> None:
    # As above, with the stale places that come up dropped as the timer pops what is due.
    queue = DueQueue()
    for index in range(10 * duequeue.COMPACT_AFTER_STALE):
        queue.push("kept", float(index))
        queue.push("kept", index + 0.5)  # its place at index is stale, and popped first
        queue.push(f"gone-{index}", 1e9 + index)
        queue.discard(f"gone-{index}")
        assert queue.pop_due(index + 0.75, limit=10) == [("kept", index + 0.5)]
    assert queue.entries < 4 * duequeue.COMPACT_AFTER_STALE


def test_entries_count_the_places_held_until_stale_ones_are_dropped() -> None:
    queue = DueQueue()
    queue.push("a", 1.0)
    queue.push("b", 2.0)
    queue.push("c", 3.0)
    queue.discard("a")
    assert queue.entries == 3, "a's place is stale, and still held"
    assert queue.earliest() == 2.0
    assert queue.entries == 2, "dropped as it came up"
    assert queue.pop_due(3.0, limit=10) == [("b", 2.0), ("c", 3.0)]
    assert queue.entries == 0


def test_an_empty_queue_has_nothing_due() -> None:
    queue = DueQueue()
    assert queue.earliest() is None
    assert queue.pop_due(float("inf"), limit=1) == []
    queue.push("a", 1.0)
    queue.clear()
    assert queue.earliest() is None
    assert "a" not in queue


def test_keys_due_at_the_same_time_share_one_place_in_the_heap() -> None:
    # docs/performance.md: at 50,000 jobs some instants are due for hundreds of keys.
    queue = DueQueue()
    for index in range(1000):
        queue.push(f"ns/job-{index}", float(index % 10))
    assert queue.times == 10
    first = queue.pop_due(0.0, limit=64)
    assert [key for key, _ in first] == [f"ns/job-{index}" for index in range(0, 640, 10)]
    assert queue.times == 9, "the bucket being popped is off the heap"
    assert queue.earliest() == 0.0, "its other 36 keys are still due first"
    assert len(queue.pop_due(0.0, limit=100)) == 36
    assert queue.earliest() == 1.0


def test_rebuilding_the_buckets_keeps_every_key_still_due() -> None:
    queue = DueQueue()
    for index in range(10):
        queue.push(f"stays-{index}", float(index))
    # Enough stale entries that the heap is rebuilt, while the keys above stay armed.
    for index in range(4 * duequeue.COMPACT_AFTER_STALE):
        queue.push(f"gone-{index}", 100.0)
        queue.discard(f"gone-{index}")
    assert queue.entries < 2 * duequeue.COMPACT_AFTER_STALE, "the buckets were rebuilt"
    assert queue.earliest() == 0.0
    assert queue.pop_due(50.0, limit=100) == [
        (f"stays-{index}", float(index)) for index in range(10)
    ]


def test_rebuilding_the_buckets_keeps_the_rest_of_a_bucket_being_popped() -> None:
    # More keys fell due together than one timer callback starts: the rest wait in the bucket
    # taken off the heap, and a rebuild in between must keep them.
    queue = DueQueue()
    for index in range(10):
        queue.push(f"due-{index}", 0.0)
    queue.push("later", 1.0)
    assert queue.pop_due(0.0, limit=4) == [(f"due-{index}", 0.0) for index in range(4)]
    queue.discard("due-9")
    for index in range(4 * duequeue.COMPACT_AFTER_STALE):
        held = queue.entries
        queue.push(f"gone-{index}", 100.0)
        queue.discard(f"gone-{index}")
        if queue.entries < held:
            break
    assert queue.entries == len(queue) == 6, "rebuilt of live places only"
    assert queue.earliest() == 0.0
    assert queue.pop_due(50.0, limit=100) == [
        *((f"due-{index}", 0.0) for index in range(4, 9)),
        ("later", 1.0),
    ]


def test_keys_left_in_a_bucket_being_popped_wait_for_their_time_when_the_clock_goes_back() -> None:
    queue = DueQueue()
    for key in "abcd":
        queue.push(key, 5.0)
    assert queue.pop_due(5.0, limit=1) == [("a", 5.0)]
    assert queue.pop_due(5.0, limit=1) == [("b", 5.0)]
    queue.push("e", 5.0)  # after the ones taken off the heap with it
    assert queue.pop_due(4.0, limit=10) == [], "the clock went back: not due yet"
    assert queue.earliest() == 5.0
    # A rebuild of the buckets meanwhile keeps them.
    for index in range(4 * duequeue.COMPACT_AFTER_STALE):
        queue.push(f"gone-{index}", 100.0)
        queue.discard(f"gone-{index}")
    assert queue.pop_due(5.0, limit=10) == [("c", 5.0), ("d", 5.0), ("e", 5.0)]


def test_a_key_pushed_earlier_than_a_bucket_being_popped_comes_first() -> None:
    queue = DueQueue()
    for key in "abc":
        queue.push(key, 5.0)
    assert queue.pop_due(5.0, limit=1) == [("a", 5.0)]
    queue.push("early", 3.0)
    assert queue.earliest() == 3.0
    assert queue.pop_due(5.0, limit=10) == [("early", 3.0), ("b", 5.0), ("c", 5.0)]


def test_a_cleared_queue_is_as_good_as_new() -> None:
    queue = DueQueue()
    for key in "abc":
        queue.push(key, 1.0)
    assert queue.pop_due(1.0, limit=1) == [("a", 1.0)]  # b and c wait in the popped bucket
    queue.clear()
    assert (len(queue), queue.entries, queue.earliest()) == (0, 0, None)
    queue.push("d", 2.0)
    for index in range(4 * duequeue.COMPACT_AFTER_STALE):  # rebuilt on the way
        queue.push(f"gone-{index}", 100.0)
        queue.discard(f"gone-{index}")
    assert queue.pop_due(100.0, limit=10) == [("d", 2.0)]


def test_the_rest_of_a_bucket_being_popped_is_still_due_first() -> None:
    queue = DueQueue()
    for key in "abcd":
        queue.push(key, 1.0)
    assert queue.pop_due(1.0, limit=1) == [("a", 1.0)]
    queue.discard("b")  # its place, next in the bucket being popped, is stale
    assert queue.entries == 3
    assert queue.earliest() == 1.0, "c and d are due, though no time is left in the heap"
    assert queue.entries == 2


def test_a_stale_place_at_the_head_of_a_bucket_is_dropped_when_it_comes_up() -> None:
    queue = DueQueue()
    queue.push("a", 1.0)
    queue.push("b", 1.0)
    queue.discard("a")
    assert queue.earliest() == 1.0
    assert queue.entries == 1


def test_a_churn_of_replaced_due_times_alone_does_not_grow_the_heap_without_bound() -> None:
    queue = DueQueue()
    for index in range(10 * duequeue.COMPACT_AFTER_STALE):
        queue.push("kept", float(-index))  # each earlier: the stale places never come up
    assert queue.entries < 4 * duequeue.COMPACT_AFTER_STALE
