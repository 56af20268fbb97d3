"""The ring: stable buckets, an even spread, and a join that moves about 1/n of the buckets."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from podcron.ha.ring import BUCKETS, Assignment, bucket, owner


def test_a_uid_has_the_same_bucket_in_every_process_and_version() -> None:
    # Fixed values: a change of hash would silently move every job at an upgrade,
    # while replicas of two versions disagree on the owners.
    assert bucket("6f1c2e0a-8a4b-4f2e-9d1e-3b1b5b1c0d2a") == 910
    assert owner(["pod-a-00000001", "pod-b-00000002", "pod-c-00000003"], 7) == "pod-b-00000002"
    code = (
        "from podcron.ha.ring import bucket; print(bucket('6f1c2e0a-8a4b-4f2e-9d1e-3b1b5b1c0d2a'))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == "910"


def test_buckets_and_owners_spread_evenly() -> None:
    buckets = Counter(bucket(f"uid-{i}") // 256 for i in range(16_000))
    assert len(buckets) == BUCKETS // 256
    assert max(buckets.values()) < 1.2 * 1000
    members = [f"replica-{i}" for i in range(4)]
    owners = Counter(Assignment(members).owner_of_bucket(b) for b in range(BUCKETS))
    assert min(owners.values()) > 0.8 * BUCKETS / 4
    assert max(owners.values()) < 1.2 * BUCKETS / 4


def test_a_join_moves_about_one_nth_of_the_buckets_and_only_to_the_newcomer() -> None:
    before = Assignment([f"replica-{i}" for i in range(4)])
    after = Assignment([*before.members, "replica-new"])
    moved = [b for b in range(BUCKETS) if before.owner_of_bucket(b) != after.owner_of_bucket(b)]
    assert {after.owner_of_bucket(b) for b in moved} == {"replica-new"}
    assert 0.8 * BUCKETS / 5 < len(moved) < 1.2 * BUCKETS / 5


def test_no_members_own_nothing_and_order_does_not_matter() -> None:
    assert Assignment([]).owner_of("x") is None
    assert Assignment(["b", "a", "c"]).members == ("a", "b", "c")
    assert owner(["a", "b", "c"], 9) == owner(["c", "b", "a"], 9)
