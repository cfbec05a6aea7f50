"""The contract kernel against the reference path (DataFusion's encodings, numpy's lookup3), no
database: every type, NULLs, NaN payloads, -0.0, infinities, subnormals, extreme dates,
the widest decimals, odd UTF-8 and binary, lookup3's block boundaries, arrays sliced at odd
offsets, several columns mixed. And the fallback: chosen with one warning, same hashes."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import os
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.config import TableSpec
from replicator.contract import (
    CONTRACT_VERSION,
    DeltaHasher,
    ParallelHasher,
    hash_bytes_extended,
    kernel,
)
from replicator.schema import Column, ColumnType, TableSchema
from tests.unit.test_contract_encoding import FIELDS

MIN_DAYS = (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days
MAX_DAYS = (dt.date(9999, 12, 31) - dt.date(1970, 1, 1)).days
MIN_MICROS = MIN_DAYS * 86_400_000_000
MAX_MICROS = (MAX_DAYS + 1) * 86_400_000_000 - 1
# Unscaled decimals at the limbs' edges: a zero low word (the negation's carry), 2**64 +- 1.
EDGE_UNSCALED = [0, 1, -1, 2**32, -(2**32), 2**64, -(2**64), 2**64 - 1, -(2**64) + 1, -(2**96)]
UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}  # microseconds per unit (ns: below)


def schema_of(*delta_types: str) -> TableSchema:
    columns = tuple(
        Column(f"c{i:02d}", ColumnType.from_delta(t), True) for i, t in enumerate(delta_types)
    )
    return TableSchema(TableSpec("t", ("c00",)), columns)


def batch_of(schema: TableSchema, arrays: list[pa.Array]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in schema.columns])


def assert_kernel_matches_reference(schema: TableSchema, batch: pa.RecordBatch) -> None:
    hasher = DeltaHasher(schema)
    columns = schema.value_columns
    reference_fields = hasher.reference_fields(batch)
    assert kernel.field_encodings(batch, columns) == reference_fields
    assert kernel.row_hashes(batch, columns).tolist() == hasher.reference_hashes(batch).tolist()
    expected = np.zeros((batch.num_rows, len(columns)), dtype=np.uint64)
    for j in range(len(columns)):
        expected[:, j] = hash_bytes_extended(pa.array([row[j] for row in reference_fields]))
    assert kernel.field_hashes(batch, columns).tolist() == expected.tolist()


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test decides afresh (and leaves the next one to decide afresh too)."""
    monkeypatch.delenv(kernel.ENVIRONMENT, raising=False)
    kernel.reset()
    yield
    kernel.reset()


# -- strategies: (Delta type, Arrow type, values as Arrow builds them) -----------------------
AWKWARD = ["", "N", "0:", ":", "rh1", "é中🙂", "\x00", "a\tb\n", "x" * 300, "\u00ad", "\ufeff"]
texts = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(st.characters(max_codepoint=0x7F), min_size=100, max_size=400),
)
binaries = st.one_of(
    st.sampled_from([b"", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"]),
    st.binary(max_size=40),
    st.binary(min_size=200, max_size=300),
)
SPECIAL_DOUBLE_BITS = [
    0x0000_0000_0000_0000,  # 0.0
    0x8000_0000_0000_0000,  # -0.0
    0x7FF0_0000_0000_0000,  # inf
    0xFFF0_0000_0000_0000,  # -inf
    0x7FF8_0000_0000_0000,  # the canonical NaN
    0xFFF8_0000_0000_0000,  # a negative NaN
    0x7FF0_0000_0000_0001,  # a signalling NaN
    0x7FFF_FFFF_FFFF_FFFF,  # a NaN with every payload bit
    0x0000_0000_0000_0001,  # the smallest subnormal
    0x800F_FFFF_FFFF_FFFF,  # the largest negative subnormal
    0x0010_0000_0000_0000,  # the smallest normal
    0x7FEF_FFFF_FFFF_FFFF,  # the largest finite
]
SPECIAL_SINGLE_BITS = [
    0x0000_0000,
    0x8000_0000,
    0x7F80_0000,
    0xFF80_0000,
    0x7FC0_0000,
    0xFFC0_0001,
    0x7F80_0001,
    0x0000_0001,
    0x807F_FFFF,
    0x0080_0000,
    0x7F7F_FFFF,
    0x0040_0000,
]
double_bits = st.one_of(st.sampled_from(SPECIAL_DOUBLE_BITS), st.integers(0, 2**64 - 1))
single_bits = st.one_of(st.sampled_from(SPECIAL_SINGLE_BITS), st.integers(0, 2**32 - 1))


def maybe(strategy: st.SearchStrategy[Any], n: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.one_of(st.none(), strategy), min_size=n, max_size=n)


def mask_of(values: list[Any]) -> np.ndarray[Any, Any]:
    return np.array([v is None for v in values], dtype=bool)


KINDS = [
    "string",
    "large_string",
    "string_view",
    "binary",
    "large_binary",
    "decimal",
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "boolean",
    "date",
    "timestamp",
    "timestamp_ntz",
    "null",
]


@st.composite
def column_case(draw: st.DrawFn, n: int, kinds: tuple[str, ...] = ()) -> tuple[str, pa.Array]:
    """A column of n values (NULLs among them) of one of the types a table may have."""
    kind = draw(st.sampled_from(kinds or KINDS))
    if kind in ("string", "large_string", "string_view"):
        return "string", pa.array(draw(maybe(texts, n)), getattr(pa, kind)())
    if kind in ("binary", "large_binary"):
        return "binary", pa.array(draw(maybe(binaries, n)), getattr(pa, kind)())
    if kind == "decimal":
        precision = draw(st.one_of(st.just(38), st.integers(1, 38)))
        scale = draw(st.one_of(st.sampled_from([0, precision]), st.integers(0, precision)))
        limit = 10**precision - 1
        unscaled = draw(
            maybe(
                st.one_of(
                    st.sampled_from(
                        [v for v in EDGE_UNSCALED if abs(v) <= limit] + [limit, -limit]
                    ),
                    st.integers(-limit, limit),
                ),
                n,
            )
        )
        data = b"".join((v or 0).to_bytes(16, "little", signed=True) for v in unscaled)
        validity = pa.array([v is not None for v in unscaled]).buffers()[1]
        array = pa.Array.from_buffers(
            pa.decimal128(precision, scale), n, [validity, pa.py_buffer(data)]
        )
        return f"decimal({precision},{scale})", array
    if kind in ("long", "integer", "short", "byte"):
        bits = {"long": 64, "integer": 32, "short": 16, "byte": 8}[kind]
        ints = st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        edges = st.sampled_from([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 0, -1])
        return kind, pa.array(draw(maybe(edges | ints, n)), getattr(pa, f"int{bits}")())
    if kind == "double":
        raw = draw(maybe(double_bits, n))
        values = np.array([v or 0 for v in raw], dtype=np.uint64).view(np.float64)
        return "double", pa.array(values, pa.float64(), mask=mask_of(raw))
    if kind == "float":
        raw = draw(maybe(single_bits, n))
        values = np.array([v or 0 for v in raw], dtype=np.uint32).view(np.float32)
        return "float", pa.array(values, pa.float32(), mask=mask_of(raw))
    if kind == "boolean":
        return "boolean", pa.array(draw(maybe(st.booleans(), n)), pa.bool_())
    if kind == "date":
        days = st.sampled_from([MIN_DAYS, MAX_DAYS, -10_957, -10_958, 0]) | st.integers(
            MIN_DAYS, MAX_DAYS
        )
        return "date", pa.array(draw(maybe(days, n)), pa.int32()).cast(pa.date32())
    if kind in ("timestamp", "timestamp_ntz"):
        unit = draw(st.sampled_from(["us", "us", "s", "ms", "ns"]))
        tz = "UTC" if kind == "timestamp" else None
        if unit == "ns":  # int64 nanoseconds reach 1677..2262; whole microseconds cast safely
            lo, hi, step = -(2**63) // 1000 + 1, (2**63 - 1) // 1000, 1000
        else:
            lo, hi, step = MIN_MICROS // UNIT[unit], MAX_MICROS // UNIT[unit], 1
        edges = st.sampled_from([lo, hi, 0, -1])
        raw = draw(maybe(edges | st.integers(lo, hi), n))
        ticks = pa.array([None if v is None else v * step for v in raw], pa.int64())
        return kind, ticks.cast(pa.timestamp(unit, tz=tz))
    return draw(
        st.sampled_from(["string", "boolean", "long", "double", "binary", "date"])
    ), pa.nulls(n)


@st.composite
def batches(draw: st.DrawFn) -> tuple[TableSchema, pa.RecordBatch]:
    """1 to 6 columns of one row count, each sliced at an offset of its own."""
    n = draw(st.integers(0, 25))
    columns = draw(st.integers(1, 6))
    types, arrays = [], []
    for _ in range(columns):
        offset = draw(st.integers(0, 9))
        delta_type, array = draw(column_case(n + offset + 2))
        types.append(delta_type)
        arrays.append(array.slice(offset, n))
    schema = schema_of(*types)
    return schema, batch_of(schema, arrays)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=batches())
def test_kernel_equals_the_reference_for_any_batch(
    case: tuple[TableSchema, pa.RecordBatch],
) -> None:
    schema, batch = case
    assert_kernel_matches_reference(schema, batch)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("kind", KINDS)
def test_every_type_alone(kind: str, data: st.DataObject) -> None:
    """One type at a time, so that each gets its share (the mixed test draws at random)."""
    n = data.draw(st.integers(1, 30))
    offset = data.draw(st.integers(0, 9))
    delta_type, array = data.draw(column_case(n + offset, (kind,)))
    schema = schema_of(delta_type)
    assert_kernel_matches_reference(schema, batch_of(schema, [array.slice(offset)]))


@pytest.mark.parametrize(("delta_type", "values", "expected"), FIELDS)
def test_known_field_encodings(delta_type: str, values: pa.Array, expected: str) -> None:
    schema = schema_of(delta_type)
    batch = batch_of(schema, [values])
    assert kernel.field_encodings(batch, schema.value_columns) == [(expected,)]
    assert kernel.row_hashes(batch, schema.value_columns).tolist() == (
        hash_bytes_extended(pa.array([CONTRACT_VERSION + expected])).tolist()
    )


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5])
def test_every_length_across_lookup3_blocks(offset: int) -> None:
    """Rows of 0..40 and a few hundred octets at every alignment: every tail length, every
    word position of the 12-byte blocks."""
    lengths = [*range(41), 99, 100, 255, 256, 299, 300, 1000]
    values = ["é" * (n // 2) + "x" * (n % 2) for n in lengths]
    schema = schema_of("string")
    array = pa.array(["pad"] * offset + values).slice(offset)
    batch = batch_of(schema, [array])
    fields = [f"{len(v.encode())}:{v}" for v in values]
    assert kernel.field_encodings(batch, schema.value_columns) == [(f,) for f in fields]
    assert kernel.row_hashes(batch, schema.value_columns).tolist() == (
        hash_bytes_extended(pa.array([CONTRACT_VERSION + f for f in fields])).tolist()
    )
    assert kernel.field_hashes(batch, schema.value_columns)[:, 0].tolist() == (
        hash_bytes_extended(pa.array(fields)).tolist()
    )
    binary = schema_of("binary")
    raw = pa.array([b"\xff" * n for n in lengths], pa.large_binary())
    assert_kernel_matches_reference(binary, batch_of(binary, [raw.slice(offset % 3)]))


def test_a_month_of_ranking_signal_and_the_parallel_hasher() -> None:
    from reconciler.sample import ranking_signal
    from replicator.yearmonth import YearMonth

    data = ranking_signal(YearMonth.parse("2026-10"), 20_000, seed=3)
    schema = schema_of("string", "date", "string", "string", "double", "integer", "timestamp")
    batch = batch_of(schema, [data.column(i).combine_chunks() for i in range(7)])
    hasher = DeltaHasher(schema)
    expected = hasher.reference_hashes(batch)
    assert hasher.uses_kernel
    assert hasher.hashes(batch).tolist() == expected.tolist()
    hashed = list(ParallelHasher(schema, 2).map(iter([batch.slice(0, 7_777), batch.slice(7_777)])))
    assert np.concatenate([h for _, h in hashed]).tolist() == expected.tolist()
    some = batch.slice(19_990)
    assert hasher.fields(some) == hasher.reference_fields(some)


def test_a_null_boolean_is_n_not_false() -> None:
    """Contract rh2: a NULL boolean is N like every NULL (rh1's SQL made it f, the same as
    false, so a NULL turned false went unseen)."""
    schema = schema_of("boolean")
    batch = batch_of(schema, [pa.array([None, False, True])])
    assert kernel.field_encodings(batch, schema.value_columns) == [("N",), ("f",), ("t",)]
    assert DeltaHasher(schema).reference_fields(batch) == [("N",), ("f",), ("t",)]


def test_nanoseconds_that_do_not_fit_microseconds_are_refused_like_the_reference() -> None:
    schema = schema_of("timestamp_ntz")
    batch = batch_of(schema, [pa.array([1], pa.int64()).cast(pa.timestamp("ns"))])
    with pytest.raises(pa.ArrowInvalid):
        DeltaHasher(schema).reference_hashes(batch)
    with pytest.raises(pa.ArrowInvalid):
        kernel.row_hashes(batch, schema.value_columns)


# -- the fallback --------------------------------------------------------------------------
def sample_batch() -> tuple[TableSchema, pa.RecordBatch]:
    schema = schema_of("string", "double", "decimal(10,2)", "timestamp")
    arrays = [
        pa.array(["a", None, "é"]),
        pa.array([1.5, float("nan"), None]),
        pa.array([None, decimal.Decimal("1"), decimal.Decimal("-2.5")], pa.decimal128(10, 2)),
        pa.array([0, None, -1], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    ]
    return schema, batch_of(schema, arrays)


def kernel_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == kernel.__name__ and r.levelno == logging.WARNING
    ]


def test_forced_off_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    schema, batch = sample_batch()
    with_kernel = DeltaHasher(schema)
    expected = with_kernel.hashes(batch).tolist()
    expected_fields = with_kernel.field_hashes(batch).tolist()
    assert with_kernel.uses_kernel
    kernel.reset()
    monkeypatch.setenv(kernel.ENVIRONMENT, "python")
    caplog.set_level(logging.WARNING)
    hasher = DeltaHasher(schema)
    assert not hasher.uses_kernel
    for _ in range(3):
        assert hasher.hashes(batch).tolist() == expected
    assert ParallelHasher(schema, 2).digest(iter([batch, batch])).rows == 6
    assert hasher.field_hashes(batch).tolist() == expected_fields
    assert hasher.fields(batch) == hasher.reference_fields(batch)
    assert not kernel.available()
    warnings = kernel_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "RECONCILER_CONTRACT_KERNEL=python" in warnings[0]
    with pytest.raises(kernel.KernelUnavailable):
        kernel.row_hashes(batch, schema.value_columns)


def test_a_kernel_that_fails_its_self_check_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    schema, batch = sample_batch()
    expected = DeltaHasher(schema).reference_hashes(batch).tolist()

    def broken(_: Any) -> None:
        raise kernel.KernelUnavailable("the kernel's row hashes differ from lookup3's")

    monkeypatch.setattr(kernel, "_self_check", broken)
    caplog.set_level(logging.WARNING)
    assert DeltaHasher(schema).hashes(batch).tolist() == expected
    assert DeltaHasher(schema).hashes(batch).tolist() == expected
    warnings = kernel_warnings(caplog)
    assert len(warnings) == 1 and "differ from lookup3" in warnings[0], warnings
    kernel.reset()
    monkeypatch.setenv(kernel.ENVIRONMENT, "numba")  # no fallback: on-call wants to know
    with pytest.raises(kernel.KernelUnavailable):
        kernel.warm_up()


def test_importing_the_contract_imports_neither_datafusion_nor_numba() -> None:
    code = (
        "import sys\n"
        "import replicator.contract\n"
        "assert 'datafusion' not in sys.modules and 'numba' not in sys.modules\n"
        "from replicator.contract import kernel\n"
        "print(kernel.warm_up())\n"
        "assert 'datafusion' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != kernel.ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "contract kernel ready" in done.stdout
    # The entry point an image build runs; exit 1 (and why) when the kernel is off.
    off = subprocess.run(
        [sys.executable, "-m", "replicator.contract.kernel"],
        capture_output=True,
        text=True,
        env={**env, kernel.ENVIRONMENT: "python"},
        check=False,
    )
    assert off.returncode == 1 and "RECONCILER_CONTRACT_KERNEL=python" in off.stderr, off


# -- where the cache goes ---------------------------------------------------------------
def test_the_private_cache_directory_must_be_ours_and_closed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    private = kernel._private_directory()
    assert private is not None and private.parent == tmp_path
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    private.chmod(0o777)  # another user could have planted machine code
    assert kernel._private_directory() is None


def test_a_prebuilt_cache_is_copied_where_numba_looks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prebuilt = tmp_path / "image" / "__pycache__"
    prebuilt.mkdir(parents=True)
    (prebuilt / "_kernel.run-1.py311.nbi").write_bytes(b"index")
    (prebuilt / "_kernel.run-1.py311.1.nbc").write_bytes(b"code")
    (prebuilt / "other.cpython-311.pyc").write_bytes(b"not ours")
    monkeypatch.setattr(kernel, "_IN_TREE", prebuilt)
    cache = tmp_path / "cache"
    assert kernel._seed(cache) == 2
    assert kernel._seed(cache) == 0  # present already: left alone
    (copied,) = {p.parent for p in cache.rglob("*.nb*")}
    assert sorted(p.name for p in copied.iterdir()) == [
        "_kernel.run-1.py311.1.nbc",
        "_kernel.run-1.py311.nbi",
    ]


def test_the_kernel_rejects_a_column_the_plan_cannot_read() -> None:
    schema = schema_of("decimal(10,2)")
    batch = batch_of(schema, [pa.array([b"x"])])
    with pytest.raises(TypeError):
        kernel.row_hashes(batch, schema.value_columns)


def test_float_bits_helpers_agree_with_struct() -> None:
    """The special bit patterns above are what they claim (guards the strategies)."""
    assert struct.pack(">d", -0.0).hex() == f"{SPECIAL_DOUBLE_BITS[1]:016x}"
    assert struct.unpack(">f", bytes.fromhex(f"{SPECIAL_SINGLE_BITS[7]:08x}"))[0] > 0
