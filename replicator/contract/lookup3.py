"""PostgreSQL's `hash_bytes_extended` (Bob Jenkins' lookup3, seed 0), vectorized with numpy.

Postgres computes it server-side as `hashtextextended(text COLLATE "C", 0)` at a fraction of
md5's cost; this module computes the same 64-bit value for every string of an Arrow array,
so the Delta side and the Postgres side of a digest agree bit for bit. Postgres's result
depends on the server's byte order; `replicator.contract.verify_server_hash` checks a known
answer before any digest is trusted.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

U32 = npt.NDArray[np.uint32]
_GOLDEN = 0x9E3779B9 + 3923095
_CHUNK_BYTES = 8 << 20


def _rot(x: U32, k: int) -> U32:
    return (x << np.uint32(k)) | (x >> np.uint32(32 - k))


def _mix(a: U32, b: U32, c: U32) -> None:
    a -= c
    a ^= _rot(c, 4)
    c += b
    b -= a
    b ^= _rot(a, 6)
    a += c
    c -= b
    c ^= _rot(b, 8)
    b += a
    a -= c
    a ^= _rot(c, 16)
    c += b
    b -= a
    b ^= _rot(a, 19)
    a += c
    c -= b
    c ^= _rot(b, 4)
    b += a


def _final(a: U32, b: U32, c: U32) -> None:
    c ^= b
    c -= _rot(b, 14)
    a ^= c
    a -= _rot(c, 11)
    b ^= a
    b -= _rot(a, 25)
    c ^= b
    c -= _rot(b, 16)
    a ^= c
    a -= _rot(c, 4)
    b ^= a
    b -= _rot(a, 14)
    c ^= b
    c -= _rot(b, 24)


_TAIL_MASKS = np.array([0, 0xFF, 0xFFFF, 0xFF_FFFF, 0xFFFF_FFFF], dtype=np.uint32)


def _aligned_views(data: npt.NDArray[np.uint8]) -> list[U32]:
    """Four zero-copy little-endian uint32 views of the bytes (zeros past the end), the r-th
    starting at byte r: every word of a row that starts at byte offset o lies in view o % 4."""
    padded = np.concatenate([data, np.zeros(16, dtype=np.uint8)])
    return [
        np.frombuffer(padded, dtype="<u4", offset=r, count=(len(padded) - r) // 4) for r in range(4)
    ]


def _hash_rows(
    words: U32, first_word: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], blocks: int
) -> npt.NDArray[np.uint64]:
    """Rows that all have `blocks` full 12-byte blocks, then a tail of 0 to 11 bytes;
    `first_word` indexes each row's first word in `words`."""
    a = (lengths + _GOLDEN).astype(np.uint32)
    b, c = a.copy(), a.copy()
    # One gather of every word of every row: column 3k+j is word j of block k.
    matrix = words[first_word[:, None] + np.arange(3 * (blocks + 1))]
    rest = lengths - 12 * blocks
    with np.errstate(over="ignore"):
        for block in range(blocks):
            a += matrix[:, 3 * block]
            b += matrix[:, 3 * block + 1]
            c += matrix[:, 3 * block + 2]
            _mix(a, b, c)
        tail = 3 * blocks
        a += matrix[:, tail] & _TAIL_MASKS[np.clip(rest, 0, 4)]
        b += matrix[:, tail + 1] & _TAIL_MASKS[np.clip(rest - 4, 0, 4)]
        # The lowest byte of c is reserved for the length.
        c += (matrix[:, tail + 2] & _TAIL_MASKS[np.clip(rest - 8, 0, 4)]) << np.uint32(8)
        _final(a, b, c)
    return (b.astype(np.uint64) << np.uint64(32)) | c.astype(np.uint64)


def hash_bytes_extended(values: pa.Array) -> npt.NDArray[np.uint64]:
    """The 64-bit lookup3 hash (seed 0) of each value's bytes; values must not be NULL."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.large_binary())
    if values.null_count:
        raise ValueError("cannot hash NULL values")
    count = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset : values.offset + count + 1
    ]
    buffer = values.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    result = np.empty(count, dtype=np.uint64)
    first = 0
    while first < count:
        # Rows are taken in runs of about _CHUNK_BYTES so that the padded copy stays small.
        last = int(np.searchsorted(offsets, offsets[first] + _CHUNK_BYTES, side="right")) - 1
        last = min(max(last, first + 1), count)
        base = int(offsets[first])
        views = _aligned_views(data[base : int(offsets[last])])
        starts = offsets[first:last] - base
        lengths = np.diff(offsets[first : last + 1])
        # Rows are grouped by block count (same loop) and alignment (same view).
        groups = (lengths // 12) * 4 + (starts & 3)
        for group in np.unique(groups):
            rows = np.flatnonzero(groups == group)
            blocks, alignment = divmod(int(group), 4)
            result[first + rows] = _hash_rows(
                views[alignment], starts[rows] >> 2, lengths[rows], blocks
            )
        first = last
    return result


def as_signed(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """The same bits as Postgres's bigint shows them."""
    return values.view(np.int64)
