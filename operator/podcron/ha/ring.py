"""Which replica owns a job: a job's bucket, and rendezvous hashing over an epoch's members.

Both hashes are blake2b, never Python's ``hash()``, which is salted per process:
every replica must compute the same owners from the same member list
(docs/ha.md, rule 3). A member that joins or leaves moves only the buckets it
wins or held, about 1/n of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Jobs hash into this many buckets; ownership is decided per bucket.
BUCKETS = 4096


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def bucket(uid: str) -> int:
    """The bucket of the job with this UID: stable across processes and versions."""
    return _digest(uid) % BUCKETS


def score(identity: str, bucket_: int) -> int:
    """How strongly ``identity`` claims ``bucket_``; the highest score owns it."""
    return _digest(f"{identity}\x00{bucket_}")


def owner(members: Iterable[str], bucket_: int) -> str | None:
    """The member with the highest rendezvous score for ``bucket_``; None without members.

    Ties (64-bit digests, so practically never) go to the greater identity, so
    the answer never depends on the members' order.
    """
    return max(members, key=lambda m: (score(m, bucket_), m), default=None)


class Assignment:
    """The owners of one member list, each bucket's computed once, when first asked."""

    def __init__(self, members: Iterable[str]) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self._owners: list[str | None] = [None] * BUCKETS
        self._known = bytearray(BUCKETS)

    def owner_of_bucket(self, bucket_: int) -> str | None:
        """The owner of ``bucket_`` in this member list (None when it has no members)."""
        if not self._known[bucket_]:
            self._owners[bucket_] = owner(self.members, bucket_)
            self._known[bucket_] = 1
        return self._owners[bucket_]

    def owner_of(self, uid: str) -> str | None:
        """The owner of the job with this UID."""
        return self.owner_of_bucket(bucket(uid))
