"""Known answers the kernel must reproduce before a process trusts it (`kernel._self_check`):
one column per kernel kind, four values each, with each field written out as
docs/hash-contract.md defines it. Five values per column so that the slice at offset 1 still
crosses a validity byte's bit positions oddly."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa

from replicator.schema import Encoding

_UTC = dt.UTC
D = decimal.Decimal

CASES: list[tuple[Encoding, pa.Array, list[str]]] = [
    (
        Encoding.TEXT,
        pa.array(["ab", None, "é", "", "x" * 13], pa.string()),
        ["2:ab", "N", "2:é", "0:", "13:" + "x" * 13],
    ),
    (
        Encoding.TEXT,
        pa.array(["中", "", None, "N", "0:"], pa.large_string()),
        ["3:中", "0:", "N", "1:N", "2:0:"],
    ),
    (
        Encoding.BINARY,
        pa.array([b"\x00\xff", None, b"", b"a", b"\xc3\x28"], pa.binary()),
        ["4:00ff", "N", "0:", "2:61", "4:c328"],
    ),
    (
        Encoding.BINARY,
        pa.array([b"", b"\x10", None, b"\xab\xcd\xef", b"0"], pa.large_binary()),
        ["0:", "2:10", "N", "6:abcdef", "2:30"],
    ),
    (
        Encoding.DECIMAL,
        pa.array([D("1.50"), None, D("-0.05"), D("100.00"), D("0.00")], pa.decimal128(10, 2)),
        ["3:1.5", "N", "5:-0.05", "3:100", "1:0"],
    ),
    (
        Encoding.DECIMAL,
        pa.array([D(10**38 - 1), D(-(10**38) + 1), D(0), None, D(-(2**64))], pa.decimal128(38, 0)),
        ["38:" + "9" * 38, "39:-" + "9" * 38, "1:0", "N", "21:-18446744073709551616"],
    ),
    (
        Encoding.DECIMAL,
        pa.array(
            [D("-0." + "9" * 38), D("0." + "0" * 37 + "1"), D("0.5"), None, D(0)],
            pa.decimal128(38, 38),
        ),
        ["41:-0." + "9" * 38, "40:0." + "0" * 37 + "1", "3:0.5", "N", "1:0"],
    ),
    (
        Encoding.INT64,
        pa.array([127, None, -1, 0, -128], pa.int8()),
        ["000000000000007f", "N", "ffffffffffffffff", "0000000000000000", "ffffffffffffff80"],
    ),
    (
        Encoding.INT64,
        pa.array([-2, 32767, None, -32768, 1], pa.int16()),
        ["fffffffffffffffe", "0000000000007fff", "N", "ffffffffffff8000", "0000000000000001"],
    ),
    (
        Encoding.INT64,
        pa.array([1, -(2**31), 2**31 - 1, None, 0], pa.int32()),
        ["0000000000000001", "ffffffff80000000", "000000007fffffff", "N", "0000000000000000"],
    ),
    (
        Encoding.INT64,
        pa.array([-(2**63), 2**63 - 1, -1, 255, None], pa.int64()),
        ["8000000000000000", "7fffffffffffffff", "ffffffffffffffff", "00000000000000ff", "N"],
    ),
    (
        Encoding.FLOAT64,
        pa.array([0.5, None, float("nan"), 1e-45, float("-inf")], pa.float32()),
        ["3fe0000000000000", "N", "7ff8000000000000", "36a0000000000000", "fff0000000000000"],
    ),
    (
        Encoding.FLOAT64,
        pa.array([-0.0, None, float("nan"), float("inf"), 5e-324], pa.float64()),
        ["8000000000000000", "N", "7ff8000000000000", "7ff0000000000000", "0000000000000001"],
    ),
    (
        Encoding.BOOLEAN,
        pa.array([True, None, False, True, False], pa.bool_()),
        ["t", "N", "f", "t", "f"],
    ),
    (
        Encoding.DATE,
        pa.array(
            [
                dt.date(2000, 1, 2),
                None,
                dt.date(1999, 12, 31),
                dt.date(1, 1, 1),
                dt.date(2000, 1, 1),
            ],
            pa.date32(),
        ),
        ["00000001", "N", "ffffffff", "fff4dbf9", "00000000"],
    ),
    (
        Encoding.TIMESTAMP,
        pa.array(
            [dt.datetime(2000, 1, 1, 0, 0, 1, tzinfo=_UTC), None, None, None, None],
            pa.timestamp("us", tz="UTC"),
        ),
        ["00000000000f4240", "N", "N", "N", "N"],
    ),
    (
        Encoding.TIMESTAMP_NTZ,
        pa.array(
            [None, dt.datetime(1999, 12, 31, 23, 59, 59, 999999), None, None, None],
            pa.timestamp("us"),
        ),
        ["N", "ffffffffffffffff", "N", "N", "N"],
    ),
    (Encoding.TEXT, pa.nulls(5), ["N"] * 5),
]
