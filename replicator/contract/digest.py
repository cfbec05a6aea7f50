"""Month digests: per key bucket, the row count and the sum of the row hashes modulo 2^64.

The sum is order-independent and a duplicated row changes it; digests computed in any number of
pieces and added together are bit-identical to one computed in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from replicator.contract.encoding import CONTRACT_VERSION

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class MonthDigest:
    """Per-bucket row counts and hash sums (mod 2^64) of one month on one side."""

    counts: tuple[int, ...]
    sums: tuple[int, ...]

    @classmethod
    def empty(cls, buckets: int) -> MonthDigest:
        return cls((0,) * buckets, (0,) * buckets)

    @classmethod
    def from_pairs(cls, buckets: int, rows: list[tuple[int, int, int]]) -> MonthDigest:
        """From (bucket, count, sum) rows, as a GROUP BY returns them."""
        counts, sums = [0] * buckets, [0] * buckets
        for bucket, count, total in rows:
            counts[bucket] = int(count)
            sums[bucket] = int(total) & _MASK64
        return cls(tuple(counts), tuple(sums))

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @classmethod
    def parse(cls, text: str) -> MonthDigest:
        """The one-bucket digest printed by `hex` (as recorded in sync state)."""
        version, rows, total = text.split(":")
        if version != CONTRACT_VERSION:
            raise ValueError(f"digest of contract {version}, expected {CONTRACT_VERSION}")
        return cls((int(rows),), (int(total, 16),))

    @property
    def hex(self) -> str:
        total = sum(self.sums) & _MASK64
        return f"{CONTRACT_VERSION}:{self.rows}:{total:016x}"

    def differing_buckets(self, other: MonthDigest) -> list[int]:
        return [
            b
            for b in range(len(self.counts))
            if (self.counts[b], self.sums[b]) != (other.counts[b], other.sums[b])
        ]


class DigestAccumulator:
    """Folds batches of (bucket, row hash) into a `MonthDigest` without a per-row loop."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.counts = np.zeros(buckets, dtype=np.int64)
        self.sums = np.zeros(buckets, dtype=np.uint64)

    def add(self, buckets: npt.NDArray[np.uint64], hashes: npt.NDArray[np.uint64]) -> None:
        index = buckets.astype(np.intp)
        self.counts += np.bincount(index, minlength=len(self.counts))
        np.add.at(self.sums, index, hashes)  # uint64 addition wraps: the sum is mod 2^64

    def result(self) -> MonthDigest:
        return MonthDigest(tuple(int(c) for c in self.counts), tuple(int(s) for s in self.sums))
