"""Which replica owns a job: a job's bucket, and rendezvous hashing over an epoch's members.

Both hashes are blake2b, never Python's ``hash()``, which is salted per process:
every replica must compute the same owners from the same member list
(docs/ha.md, rule 3). A member that joins or leaves moves only the buckets it
wins or held, about 1/n of them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

#: Jobs hash into this many buckets; ownership is decided per bucket.
BUCKETS = 4096


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def bucket(uid: str) -> int:
    """The bucket of the job with this UID: stable across processes and versions."""
    return _digest(uid) % BUCKETS


def _claim(identity: str) -> hashlib.blake2b:
    """The hash state of an identity's claims, to be completed by a bucket."""
    return hashlib.blake2b(identity.encode() + b"\x00", digest_size=8)


def _score(claim: hashlib.blake2b, bucket_: int) -> bytes:
    # Copying the state saves hashing the identity again: an epoch's assignment takes
    # 4096 scores per member.
    h = claim.copy()
    h.update(bucket_.to_bytes(2, "big"))
    digest: bytes = h.digest()
    return digest


def score(identity: str, bucket_: int) -> bytes:
    """How strongly ``identity`` claims ``bucket_`` (compared as bytes); the highest owns it."""
    return _score(_claim(identity), bucket_)


def owner(members: Iterable[str], bucket_: int) -> str | None:
    """The member with the highest rendezvous score for ``bucket_``; None without members.

    Ties (64-bit digests, so practically never) go to the greater identity, so
    the answer never depends on the members' order.
    """
    return max(members, key=lambda m: (score(m, bucket_), m), default=None)


@functools.lru_cache(maxsize=8)
def assignment(members: tuple[str, ...]) -> Assignment:
    """The :class:`Assignment` of a sorted member list, shared by whoever asks for the same list."""
    return Assignment(members)


class Assignment:
    """The owners of one member list, each bucket's computed once, when first asked."""

    def __init__(self, members: Iterable[str]) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self._claims = [(_claim(m), m) for m in self.members]
        self._owners: list[str | None] = [None] * BUCKETS
        self._known = bytearray(BUCKETS)

    def owner_of_bucket(self, bucket_: int) -> str | None:
        """The owner of ``bucket_`` in this member list (None when it has no members)."""
        if not self._known[bucket_]:
            best = max(((_score(claim, bucket_), m) for claim, m in self._claims), default=None)
            self._owners[bucket_] = None if best is None else best[1]
            self._known[bucket_] = 1
        return self._owners[bucket_]

    def owner_of(self, uid: str) -> str | None:
        """The owner of the job with this UID."""
        return self.owner_of_bucket(bucket(uid))
