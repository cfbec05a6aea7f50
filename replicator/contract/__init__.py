"""The row-hash contract (docs/hash-contract.md): one canonical encoding, two engines.

Every row is encoded as text, the same text whether the row is read by Postgres or by DataFusion
from the Delta snapshot; the 64-bit lookup3 hash of that text is the row hash, and the hash of
the key's encoding gives its bucket. Both the writer (which digests what it copies) and the
reconciler (which digests both sides) use it, so it lives here, below both. On the Delta side
`kernel` (compiled with numba, imported on first use) encodes and hashes a batch in one pass.
"""

from replicator.contract.digest import DigestAccumulator, MonthDigest
from replicator.contract.encoding import (
    CONTRACT_VERSION,
    DATAFUSION,
    POSTGRES,
    RULES,
    Encoder,
    prepare_batch,
)
from replicator.contract.hasher import (
    KNOWN_ANSWER_TEXT,
    DeltaHasher,
    ParallelHasher,
    bucket_of,
    postgres_hash,
    verify_server_hash,
)
from replicator.contract.lookup3 import as_signed, hash_bytes_extended

__all__ = [
    "CONTRACT_VERSION",
    "DATAFUSION",
    "KNOWN_ANSWER_TEXT",
    "POSTGRES",
    "RULES",
    "DeltaHasher",
    "DigestAccumulator",
    "Encoder",
    "MonthDigest",
    "ParallelHasher",
    "as_signed",
    "bucket_of",
    "hash_bytes_extended",
    "postgres_hash",
    "prepare_batch",
    "verify_server_hash",
]
