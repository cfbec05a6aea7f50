"""The contract kernel: row hashes, field hashes and field encodings of an Arrow batch in one
native pass, straight from the Arrow buffers (docs/hash-contract.md, sections 2 and 3).

`row_hashes(batch, columns)` is lookup3 (PostgreSQL's `hash_bytes_extended`, seed 0, words read
little-endian) of each row's `rh2` + fields; `field_hashes` the hash of each field alone (what
Postgres computes as `hashtextextended(<field> COLLATE "C", 0)`); `field_encodings` the fields'
text, for the few rows a diff shows. `DeltaHasher` (hasher.py) uses them; when the kernel is
off it uses the reference path instead (DataFusion's encodings, numpy's lookup3), bit for bit
the same (tests/unit/test_kernel.py, tests/replicator/test_kernel_postgres.py).

One compiled signature for every schema
---------------------------------------
`_kernel.run` takes a batch as flat arrays: per column a kind code (the Arrow layout and the
contract encoding together, `K_*`), an integer parameter (a decimal's scale), the addresses of
its validity bitmap, value offsets and data buffers (0: absent) and the array's offset (used
for validity and values alike); outputs are preallocated arrays, empty when not asked for. The
types of those arguments never change, so numba compiles `run` once, whatever the table. (No
numba typed List of buffers: its methods are compiled again in every process, ~0.4 s, and
cannot be cached.) Buffers are read through their addresses with unaligned loads; each row is
written into one scratch buffer per call, sized by a pre-pass to the widest row and reused row
after row, then hashed; no Python object and no allocation per row. `run` is
`@njit(nogil=True, cache=True)`: `ParallelHasher`'s threads run it at once.

Arrow types: string/large_string, binary/large_binary, decimal128(p <= 38, s >= 0) (128-bit
arithmetic by hand in 32-bit limbs), int8/16/32/64, float32 (widened exactly) and float64
(every NaN as 7ff8000000000000, -0.0 kept), boolean (bit-packed), date32, timestamp[us] with or
without a zone, and the null type. Anything else is cast by Arrow first (string and binary
views, dictionaries, other decimal widths, other integer or float widths, timestamps in s, ms
or ns; a nanosecond that is not a whole microsecond is refused, as the reference refuses it).
A NULL of any type, booleans included, encodes as `N` (contract rh2).

Where the compiled code is cached, and what each deployment gets
-----------------------------------------------------------------
numba caches `run` in the first of these it can write to: `$NUMBA_CACHE_DIR`; the in-tree
`replicator/contract/__pycache__`; its per-user directory (`$XDG_CACHE_HOME/numba` or
`~/.cache/numba`). "Can write" is numba's own test: create the directory, create a file in it.
numba never reads a directory that fails it, so it does NOT load a pre-built cache from a
read-only directory (measured: a valid cache in a read-only `NUMBA_CACHE_DIR`, nothing else
writable: 0 cache hits, compiled again); and when no directory passes, `cache=True` raises
`RuntimeError: cannot cache function ...: no locator available` when the module is imported.

So before importing `_kernel`, `load()` picks the directory itself, in numba's order, then
`<tempdir>/signal-reconciler-numba-<uid>` (created 0700; not used unless it is a directory of
ours that no one else can write to: numba loads whatever machine code it finds there). A
pre-built cache (the in-tree `__pycache__`, or a read-only `$NUMBA_CACHE_DIR`) is copied there
when the files are missing (`_kernel.run-*.nbi` and `.nbc`, ~130 KB, a few milliseconds).
With no writable directory at all, `run` is compiled in memory by every process. The cache is
keyed by the source's content hash, numba's version and the CPU: unless `NUMBA_CPU_NAME` is
set, `load()` sets it to `generic` before numba's first import, so that a cache built on one
host loads on any host of the same architecture (as fast here: 13.3-13.8 against 13.7 million
rows/s with host-specific code).

* Image (deploy/Dockerfile): run `python -m replicator.contract.kernel` in the build stage after
  `pip install` (root, writable), which writes the in-tree cache under
  /opt/signal-reconciler/lib/python3.11/site-packages/replicator/contract/__pycache__; it is
  copied into the final stage with the venv. At run time (uid 10001, read-only root file
  system, home /nonexistent) the cache is copied to /tmp/signal-reconciler-numba-10001 (the
  pod's emptyDir) and loaded. Without that build step, every new pod compiles once.
* systemd unit: ProtectSystem=strict (read-only /opt), ProtectHome=yes and home /nonexistent
  (no per-user directory), PrivateTmp=yes (a private, writable /tmp that is emptied at every
  stop): as the image. Run `/opt/signal-reconciler/bin/python -m replicator.contract.kernel`
  as root after every `pip install`; each start then copies the cache into its private /tmp.
  (Or persist one: `CacheDirectory=signal-reconciler` with
  `Environment=NUMBA_CACHE_DIR=%C/signal-reconciler`.)
* A checkout or a writable home: the in-tree `__pycache__` (a read-only system-wide install
  with a writable home: `~/.cache/numba`).

First call in a fresh process, measured on this project's 2-core machine: importing numba
0.2-0.3 s, then compiling (empty cache) and the self-check 2.3-3.5 s; loading from the cache
and the self-check 0.21-0.45 s (the same from a read-only install whose cache was copied to
/tmp); nothing writable: 2.3-3.8 s in every process.

The fallback
------------
`RECONCILER_CONTRACT_KERNEL=python` switches the kernel off; so does a missing numba, a failed
compile or load, or a failed self-check (`_selfcheck.py`: every kind, NULLs, sliced at an odd
offset, against encodings written out by hand and numpy's lookup3) that runs when the kernel is
loaded. Then one warning is logged and `DeltaHasher` uses the reference path (DataFusion is
imported only then): slower, never a different hash. `RECONCILER_CONTRACT_KERNEL=numba` refuses
the fallback instead (the first hash raises `KernelUnavailable`). `python -m
replicator.contract.kernel` (`warm_up()`) compiles or loads the kernel, checks it and says where
its cache is; exit 1 if the kernel is off.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from replicator.contract.encoding import CONTRACT_VERSION
from replicator.contract.lookup3 import hash_bytes_extended
from replicator.schema import Column, Encoding

logger = logging.getLogger(__name__)

ENVIRONMENT = "RECONCILER_CONTRACT_KERNEL"  # "python": the fallback; "numba": no fallback
_SOURCE = Path(__file__).with_name("_kernel.py")
_IN_TREE = _SOURCE.parent / "__pycache__"

# The kind codes of `_kernel` (repeated so that planning a batch needs no numba import).
K_NULL, K_TEXT32, K_TEXT64, K_BINARY32, K_BINARY64, K_DECIMAL = 0, 1, 2, 3, 4, 5
K_INT8, K_INT16, K_INT32, K_INT64, K_FLOAT32, K_FLOAT64 = 6, 7, 8, 9, 10, 11
K_BOOLEAN, K_DATE32, K_TIMESTAMP_US = 12, 13, 14
ROW_HASHES, FIELD_HASHES, FIELD_LENGTHS, FIELD_BYTES = 1, 2, 4, 8

_INTEGERS = {pa.int8(): K_INT8, pa.int16(): K_INT16, pa.int32(): K_INT32, pa.int64(): K_INT64}


class KernelUnavailable(RuntimeError):
    """The kernel is switched off or could not be compiled or loaded (see `load`)."""


# -- planning a batch: kinds and buffer addresses, no per-row work ---------------------------
# Per encoding: the array in a layout the kernel reads (cast by Arrow when it arrives in
# another one: string views, other timestamp units), with its kind and parameter.
Normalized = tuple[pa.Array, int, int]


def _text(array: pa.Array) -> Normalized:
    if pa.types.is_string(array.type):
        return array, K_TEXT32, 0
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    return array, K_TEXT64, 0


def _binary(array: pa.Array) -> Normalized:
    if pa.types.is_binary(array.type):
        return array, K_BINARY32, 0
    if not pa.types.is_large_binary(array.type):
        array = array.cast(pa.large_binary())
    return array, K_BINARY64, 0


def _decimal(array: pa.Array) -> Normalized:
    kind_of = array.type
    if not pa.types.is_decimal(kind_of) or kind_of.scale < 0 or kind_of.precision > 38:
        raise TypeError(f"the contract kernel cannot encode {kind_of} as a decimal")
    if not pa.types.is_decimal128(kind_of):
        array = array.cast(pa.decimal128(kind_of.precision, kind_of.scale))
    return array, K_DECIMAL, int(kind_of.scale)


def _integer(array: pa.Array) -> Normalized:
    if array.type in _INTEGERS:
        return array, _INTEGERS[array.type], 0
    return array.cast(pa.int64()), K_INT64, 0


def _float(array: pa.Array) -> Normalized:
    if pa.types.is_float32(array.type):
        return array, K_FLOAT32, 0
    return array.cast(pa.float64()), K_FLOAT64, 0  # a no-op for float64


def _boolean(array: pa.Array) -> Normalized:
    if pa.types.is_null(array.type):
        return array, K_NULL, 0
    return array.cast(pa.bool_()), K_BOOLEAN, 0


def _date(array: pa.Array) -> Normalized:
    return array.cast(pa.date32()), K_DATE32, 0


def _timestamp(array: pa.Array) -> Normalized:
    """UTC (or zone-less) microseconds; another unit is cast, safely (nanoseconds that do not
    make whole microseconds are refused, as the reference path refuses them)."""
    tz = array.type.tz if pa.types.is_timestamp(array.type) else None
    return array.cast(pa.timestamp("us", tz=tz)), K_TIMESTAMP_US, 0


_NORMALIZE = {
    Encoding.TEXT: _text,
    Encoding.BINARY: _binary,
    Encoding.DECIMAL: _decimal,
    Encoding.INT64: _integer,
    Encoding.FLOAT64: _float,
    Encoding.BOOLEAN: _boolean,
    Encoding.DATE: _date,
    Encoding.TIMESTAMP: _timestamp,
    Encoding.TIMESTAMP_NTZ: _timestamp,
}


def _normalized(array: pa.Array, encoding: Encoding) -> Normalized:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_null(array.type):
        return array, K_NULL, 0
    return _NORMALIZE[encoding](array)


@dataclass(frozen=True)
class _Plan:
    kinds: npt.NDArray[np.int64]
    parameters: npt.NDArray[np.int64]
    buffers: npt.NDArray[np.int64]  # (validity, offsets, data) addresses per column
    offsets: npt.NDArray[np.int64]
    rows: int
    arrays: tuple[pa.Array, ...]  # kept alive while the kernel reads their buffers


def _plan(arrays: list[tuple[pa.Array, Encoding]], rows: int) -> _Plan:
    count = len(arrays)
    kinds = np.zeros(count, dtype=np.int64)
    parameters = np.zeros(count, dtype=np.int64)
    buffers = np.zeros((count, 3), dtype=np.int64)
    offsets = np.zeros(count, dtype=np.int64)
    kept = []
    for j, (raw, encoding) in enumerate(arrays):
        array, kinds[j], parameters[j] = _normalized(raw, encoding)
        if len(array) != rows:
            raise ValueError(f"column {j} has {len(array)} values, the batch {rows} rows")
        kept.append(array)
        offsets[j] = array.offset
        if kinds[j] == K_NULL:
            continue
        parts = array.buffers()
        validity = parts[0] if array.null_count else None
        if kinds[j] in (K_TEXT32, K_TEXT64, K_BINARY32, K_BINARY64):
            value_offsets, data = parts[1], parts[2]
        else:
            value_offsets, data = None, parts[1]
        buffers[j] = [0 if b is None else b.address for b in (validity, value_offsets, data)]
    return _Plan(kinds, parameters, buffers, offsets, rows, tuple(kept))


def _arrays(batch: pa.RecordBatch, columns: tuple[Column, ...]) -> list[tuple[pa.Array, Encoding]]:
    return [(batch.column(c.name), c.type.encoding) for c in columns]


@dataclass
class _Outputs:
    """What one kernel run fills (the rest stays empty: one signature whatever is asked)."""

    rows: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    fields: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros((0, 0), np.uint64))
    encoded: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    data: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))


def _run(kernel: ModuleType, plan: _Plan, mode: int, out: _Outputs) -> None:
    kernel.run(
        plan.kinds,
        plan.parameters,
        plan.buffers,
        plan.offsets,
        plan.rows,
        mode,
        out.rows,
        out.fields,
        out.encoded,
        out.data,
    )


def _row_hashes(kernel: ModuleType, plan: _Plan) -> npt.NDArray[np.uint64]:
    out = _Outputs(rows=np.empty(plan.rows, dtype=np.uint64))
    _run(kernel, plan, ROW_HASHES, out)
    return out.rows


def _field_hashes(kernel: ModuleType, plan: _Plan) -> npt.NDArray[np.uint64]:
    out = _Outputs(fields=np.empty((plan.rows, len(plan.kinds)), dtype=np.uint64))
    _run(kernel, plan, FIELD_HASHES, out)
    return out.fields


def _field_encodings(kernel: ModuleType, plan: _Plan) -> list[tuple[str, ...]]:
    """Two runs: the fields' lengths, then their bytes at the offsets those give."""
    width = len(plan.kinds)
    lengths = _Outputs(encoded=np.empty(plan.rows * width, dtype=np.int64))
    _run(kernel, plan, FIELD_LENGTHS, lengths)
    starts = np.zeros(len(lengths.encoded) + 1, dtype=np.int64)
    np.cumsum(lengths.encoded, out=starts[1:])
    written = _Outputs(encoded=starts[:-1].copy(), data=np.empty(int(starts[-1]), np.uint8))
    _run(kernel, plan, FIELD_BYTES, written)
    flat = pa.LargeStringArray.from_buffers(
        len(starts) - 1, pa.py_buffer(starts), pa.py_buffer(written.data)
    ).to_pylist()
    return [tuple(flat[i * width : (i + 1) * width]) for i in range(plan.rows)]


# -- the public API --------------------------------------------------------------------------
def row_hashes(batch: pa.RecordBatch, columns: tuple[Column, ...]) -> npt.NDArray[np.uint64]:
    """Each row's hash: lookup3 of `CONTRACT_VERSION` (rh2) + the fields of `columns`, in
    that order."""
    return _row_hashes(_require(), _plan(_arrays(batch, columns), batch.num_rows))


def field_hashes(batch: pa.RecordBatch, columns: tuple[Column, ...]) -> npt.NDArray[np.uint64]:
    """uint64[rows, len(columns)]: lookup3 of each field's encoding alone, what Postgres
    computes as `hashtextextended(<field> COLLATE "C", 0)`."""
    return _field_hashes(_require(), _plan(_arrays(batch, columns), batch.num_rows))


def field_encodings(batch: pa.RecordBatch, columns: tuple[Column, ...]) -> list[tuple[str, ...]]:
    """Each row's field encodings as text (for the few rows a diff shows)."""
    return _field_encodings(_require(), _plan(_arrays(batch, columns), batch.num_rows))


# -- loading: where numba caches, the self-check, the fallback decision -----------------------
@dataclass(frozen=True)
class _Loaded:
    kernel: ModuleType | None
    cache: str  # where the machine code is cached (or why nowhere)
    reason: str = ""  # why the kernel is off


_lock = threading.Lock()
_loaded: _Loaded | None = None


def _writable(directory: Path) -> bool:
    """numba's own test (`_CacheLocator.ensure_cache_path`): create it, write a file in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def _private_directory() -> Path | None:
    """<tmp>/signal-reconciler-numba-<uid>, mode 0700 and ours, or None. Another user must not
    be able to plant machine code there (numba loads whatever index it finds)."""
    try:
        path = Path(tempfile.gettempdir()) / f"signal-reconciler-numba-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    private = (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )
    return path if private and _writable(path) else None


def _subpath() -> str:
    """The directory numba gives `_kernel.py` inside a cache root (from its source's path)."""
    from numba.core.caching import UserProvidedCacheLocator

    return str(UserProvidedCacheLocator.get_suitable_cache_subpath(str(_SOURCE)))  # type: ignore[no-untyped-call]


def _seed(cache_dir: Path, prebuilt: tuple[Path, ...] | None = None) -> int:
    """Copies a pre-built cache (`python -m replicator.contract.kernel` at image build, into the
    in-tree `__pycache__` or a $NUMBA_CACHE_DIR) to where numba will look for it, when it is not
    there yet: numba never loads from a directory it cannot write to, so a read-only image's
    cache is copied (about 130 KB). Returns how many files were copied."""
    target = cache_dir / _subpath()
    copied = 0
    for directory in (_IN_TREE,) if prebuilt is None else prebuilt:
        if directory == target:
            continue
        for source in sorted(directory.glob(f"{_SOURCE.stem}.*.nb[ic]")):
            destination = target / source.name
            if destination.exists():
                continue
            target.mkdir(parents=True, exist_ok=True)
            partial = target / f".{source.name}.{os.getpid()}"
            shutil.copyfile(source, partial)
            os.replace(partial, destination)  # atomic: processes starting together
            copied += 1
    return copied


def _user_wide() -> Path:
    """numba's own per-user cache directory (~/.cache/numba, or under $XDG_CACHE_HOME)."""
    from numba.misc.appdirs import AppDirs

    return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)  # type: ignore[no-untyped-call]


def _configure_cache() -> None:
    """Makes sure numba caches the kernel in a directory it can write to, seeded with any
    pre-built cache, before `_kernel` is imported (numba picks the place at decoration): the
    first of $NUMBA_CACHE_DIR, the in-tree `__pycache__`, numba's per-user directory (numba's
    own order) that is writable; else a private directory under the temporary directory."""
    if "numba" not in sys.modules:  # portable machine code, so that a pre-built cache fits
        os.environ.setdefault("NUMBA_CPU_NAME", "generic")  # any host (read at numba's import)
    import numba

    config: Any = numba.config
    configured = config.CACHE_DIR  # from $NUMBA_CACHE_DIR, when numba was imported
    prebuilt = (_IN_TREE,) + ((Path(configured) / _subpath(),) if configured else ())
    if configured and _writable(Path(configured)):
        _seed(Path(configured), prebuilt)
        return
    if _writable(_IN_TREE):
        return
    user_wide = _user_wide()
    if _writable(user_wide):
        _seed(user_wide, prebuilt)
        return
    private = _private_directory()
    if private is not None:
        config.CACHE_DIR = str(private)
        _seed(private, prebuilt)


def _cache_of(kernel: ModuleType) -> str:
    """Where numba caches `run` in this process (as its dispatcher says)."""
    path = getattr(getattr(kernel.run, "_cache", None), "cache_path", None)
    if not path:
        return "none (no writable cache directory: compiled in memory by every process)"
    stats = kernel.run.stats
    how = "loaded from" if sum(stats.cache_hits.values()) else "compiled into"
    return f"{how} {path}"


def _self_check(kernel: ModuleType) -> None:
    """Runs the kernel on a batch of every kind, sliced at an odd offset, against encodings
    written out by hand and hashed by numpy; compiles or loads it on the way."""
    from replicator.contract._selfcheck import CASES

    arrays = [(array, encoding) for encoding, array, _ in CASES]
    rows = len(CASES[0][1])
    for first in (0, 1):
        taken = rows - first
        plan = _plan([(a.slice(first), e) for a, e in arrays], taken)
        fields = [tuple(expected[first:]) for _, _, expected in CASES]
        by_row = [tuple(column[i] for column in fields) for i in range(taken)]
        if _field_encodings(kernel, plan) != by_row:
            raise KernelUnavailable("the kernel's encodings differ from the contract's")
        rows_text = pa.array([CONTRACT_VERSION + "".join(row) for row in by_row])
        if not np.array_equal(_row_hashes(kernel, plan), hash_bytes_extended(rows_text)):
            raise KernelUnavailable("the kernel's row hashes differ from lookup3's")
        expected = np.stack([hash_bytes_extended(pa.array(column)) for column in fields], axis=1)
        if not np.array_equal(_field_hashes(kernel, plan), expected):
            raise KernelUnavailable("the kernel's field hashes differ from lookup3's")


def _load() -> _Loaded:
    choice = os.environ.get(ENVIRONMENT, "").strip().lower()
    if choice == "python":
        return _Loaded(None, "unused", f"{ENVIRONMENT}=python")
    try:
        if sys.byteorder != "little":
            raise KernelUnavailable("the kernel reads lookup3's words in native order")
        _configure_cache()
        from replicator.contract import _kernel

        _self_check(_kernel)
    except Exception as exc:  # ImportError, numba's errors, a failed self-check: fall back
        if choice == "numba":
            raise KernelUnavailable(f"the contract kernel is unavailable: {exc}") from exc
        return _Loaded(None, "unused", f"{type(exc).__name__}: {exc}".splitlines()[0])
    return _Loaded(_kernel, _cache_of(_kernel))


def loaded() -> _Loaded:
    """Loads the kernel once per process (thread-safe); the fallback is logged once, here."""
    global _loaded  # noqa: PLW0603
    if _loaded is None:
        with _lock:
            if _loaded is None:
                result = _load()
                if result.kernel is None:
                    logger.warning(
                        "contract kernel off (%s): row hashes computed by DataFusion and numpy, "
                        "several times slower",
                        result.reason,
                    )
                _loaded = result
    return _loaded


def load() -> ModuleType | None:
    """The compiled kernel module, or None when the process uses the fallback."""
    return loaded().kernel


def available() -> bool:
    """Whether this process hashes with the kernel (loads it on first call)."""
    return load() is not None


def _require() -> ModuleType:
    kernel = load()
    if kernel is None:
        raise KernelUnavailable(f"the contract kernel is off ({loaded().reason})")
    return kernel


def reset() -> None:
    """Forgets the loading decision: the next call decides again, reading the environment
    anew (for tests and benchmarks that compare both paths in one process)."""
    global _loaded  # noqa: PLW0603
    with _lock:
        _loaded = None


def warm_up() -> str:
    """Compiles the kernel (or loads it from the cache) and checks it; one line saying where
    its cache is and how long that took. Raises `KernelUnavailable` when it cannot."""
    started = time.perf_counter()
    state = loaded()
    if state.kernel is None:
        raise KernelUnavailable(f"the contract kernel is off ({state.reason})")
    return f"contract kernel ready in {time.perf_counter() - started:.2f} s; cache: {state.cache}"


def main() -> int:
    """`python -m replicator.contract.kernel`: warm up (an image build compiles ahead here)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        print(warm_up())
    except KernelUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
