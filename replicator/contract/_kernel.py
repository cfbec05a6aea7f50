"""The compiled half of `replicator.contract.kernel`: one numba function, `run`, that encodes
each row of a batch as the contract defines it (docs/hash-contract.md, sections 2 and 3) and
hashes it with PostgreSQL's `hash_bytes_extended` (lookup3, seed 0), straight from the Arrow
buffers.

Imported only by `kernel.load()`, which decides first where numba caches the machine code (see
that module's docstring). Nothing here is schema-specific: a column is a kind code (`K_*`), an
integer parameter (a decimal's scale) and three buffer addresses (validity bitmap, value
offsets, data), so the one compiled signature serves every table.

Buffers are read through their addresses (`_load*`, unaligned native-order loads); every
index is computed from the array's own offset and length, so nothing outside the buffers
Arrow allocated for the array is read. The caller keeps the arrays alive during the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])

# Column kinds: the Arrow layout and the contract encoding together.
K_NULL = 0  # an Arrow null column: every field is N
K_TEXT32 = 1  # string (int32 offsets): `<octets>:<utf-8>`
K_TEXT64 = 2  # large_string
K_BINARY32 = 3  # binary: `<2 x octets>:<lower-case hex>`
K_BINARY64 = 4  # large_binary
K_DECIMAL = 5  # decimal128(p, s); parameter: s
K_INT8 = 6  # int8/16/32/64: 16 hex digits of the value as int64
K_INT16 = 7
K_INT32 = 8
K_INT64 = 9
K_FLOAT32 = 10  # the binary64 bits of the (exactly widened) value, NaN canonical
K_FLOAT64 = 11
K_BOOLEAN = 12  # t / f, bit-packed
K_DATE32 = 13  # days since 2000-01-01, 8 hex digits
K_TIMESTAMP_US = 14  # microseconds since 2000-01-01, 16 hex digits (with or without zone)

# What `run` produces (bits of `mode`).
ROW_HASHES = 1  # rows_out[i]: hash of "rh2" + every field of row i
FIELD_HASHES = 2  # fields_out[i, j]: hash of field j of row i alone
FIELD_LENGTHS = 4  # encoded[i * ncols + j] = octets of field j of row i
FIELD_BYTES = 8  # field j of row i copied to out_bytes[encoded[i * ncols + j]:]

_M32 = np.uint64(0xFFFF_FFFF)
_GOLDEN = np.uint64(0x9E3779B9 + 3923095)
_NAN_BITS = np.uint64(0x7FF8_0000_0000_0000)
_EXP64 = np.uint64(0x7FF0_0000_0000_0000)
_FRAC64 = np.uint64(0x000F_FFFF_FFFF_FFFF)
_SIGN64 = np.uint64(0x8000_0000_0000_0000)
_EPOCH_DAYS = np.uint64(10_957)
_EPOCH_MICROS = np.uint64(10_957 * 86_400_000_000)
_BILLION = np.uint64(1_000_000_000)
_ONES = np.uint64(0x0101_0101_0101_0101)
_TAIL = np.array([0, 0xFF, 0xFFFF, 0xFF_FFFF, 0xFFFF_FFFF], dtype=np.uint64)
# Byte -> its two hex digits as a little-endian uint16 (high nibble's digit first in memory).
_HEX_PAIRS = np.array(
    [ord(f"{b:02x}"[0]) | ord(f"{b:02x}"[1]) << 8 for b in range(256)], dtype=np.uint16
)
_DECIMAL_WIDTH = 48  # sign, 39 digits, a leading 0 and the point, with room to spare


def _jit(func: F) -> F:
    """A helper, compiled into `run` (whose cache holds it too)."""
    return cast(F, numba.njit(nogil=True, error_model="numpy")(func))


def _jit_cached(func: F) -> F:
    """`njit(nogil, cache)`; without any writable cache directory (numba refuses to cache then,
    at decoration), compiled in memory instead: slower to start, the same code."""
    try:
        return cast(F, numba.njit(nogil=True, cache=True, error_model="numpy")(func))
    except RuntimeError:
        return cast(F, numba.njit(nogil=True, error_model="numpy")(func))


def _loader(bits: int) -> Any:
    """An intrinsic `load(address, index) -> uint64`: the unsigned `bits`-wide native-order
    value at byte `address + index`, with no alignment assumed (zero-extended)."""

    def typer(_: Any, address: Any, index: Any) -> Any:
        def codegen(context: Any, builder: Any, _sig: Any, args: Any) -> Any:
            word = context.get_value_type(getattr(types, f"uint{bits}"))
            wide = context.get_value_type(types.uint64)
            pointer = builder.inttoptr(builder.add(args[0], args[1]), word.as_pointer())
            value = builder.load(pointer, align=1)
            return value if bits == 64 else builder.zext(value, wide)

        return types.uint64(types.int64, types.int64), codegen

    typer.__name__ = f"_load{bits}"
    return intrinsic(typer)


def _storer(bits: int) -> Any:
    """An intrinsic `store(address, index, value)`: the low `bits` of the uint64 `value` at
    byte `address + index` (native order, no alignment assumed)."""

    def typer(_: Any, address: Any, index: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, _sig: Any, args: Any) -> Any:
            word = context.get_value_type(getattr(types, f"uint{bits}"))
            pointer = builder.inttoptr(builder.add(args[0], args[1]), word.as_pointer())
            narrow = args[2] if bits == 64 else builder.trunc(args[2], word)
            builder.store(narrow, pointer, align=1)
            return context.get_dummy_value()

        return types.none(types.int64, types.int64, types.uint64), codegen

    typer.__name__ = f"_store{bits}"
    return intrinsic(typer)


def _bswap64_typer(_: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, _sig: Any, args: Any) -> Any:
        return builder.bswap(args[0])

    return types.uint64(types.uint64), codegen


_bswap64: Any = intrinsic(_bswap64_typer)  # the bytes of a uint64 reversed


_load8 = _loader(8)
_load16 = _loader(16)
_load32 = _loader(32)
_load64 = _loader(64)
_store8 = _storer(8)
_store16 = _storer(16)
_store64 = _storer(64)


def _rot_typer(_: Any, value: Any, count: Any) -> Any:
    """rot(x, k) of lookup3 in 32-bit registers (LLVM makes it one rotate instruction)."""

    def codegen(context: Any, builder: Any, _sig: Any, args: Any) -> Any:
        word = context.get_value_type(types.uint32)
        wide = context.get_value_type(types.uint64)
        x = builder.trunc(args[0], word)
        k = builder.trunc(args[1], word)
        back = builder.sub(word(32), k)
        return builder.zext(builder.or_(builder.shl(x, k), builder.lshr(x, back)), wide)

    return types.uint64(types.uint64, types.uint64), codegen


_rot: Any = intrinsic(_rot_typer)


@_jit
def _lookup3(at: int, length: int) -> np.uint64:
    """PostgreSQL's hash_bytes_extended of the `length` bytes at address `at`, seed 0, words
    read little-endian (native order: `kernel` refuses a big-endian host). 32-bit arithmetic
    in uint64 registers, masked. Reads up to 11 bytes past the end (scratch is padded)."""
    a = (np.uint64(length) + _GOLDEN) & _M32
    b = a
    c = a
    rest = length
    while rest >= 12:
        a = (a + _load32(at, 0)) & _M32
        b = (b + _load32(at, 4)) & _M32
        c = (c + _load32(at, 8)) & _M32
        # mix(a, b, c)
        a = (a - c) & _M32
        a ^= _rot(c, np.uint64(4))
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, np.uint64(6))
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, np.uint64(8))
        b = (b + a) & _M32
        a = (a - c) & _M32
        a ^= _rot(c, np.uint64(16))
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, np.uint64(19))
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, np.uint64(4))
        b = (b + a) & _M32
        at += 12
        rest -= 12
    # The tail as PostgreSQL's switch adds it (whole words masked to the bytes left); the
    # lowest byte of c is reserved for the length.
    if rest > 0:
        a = (a + (_load32(at, 0) & _TAIL[min(rest, 4)])) & _M32
    if rest > 4:
        b = (b + (_load32(at, 4) & _TAIL[min(rest - 4, 4)])) & _M32
    if rest > 8:
        c = (c + ((_load32(at, 8) & _TAIL[rest - 8]) << np.uint64(8))) & _M32
    # final(a, b, c)
    c ^= b
    c = (c - _rot(b, np.uint64(14))) & _M32
    a ^= c
    a = (a - _rot(c, np.uint64(11))) & _M32
    b ^= a
    b = (b - _rot(a, np.uint64(25))) & _M32
    c ^= b
    c = (c - _rot(b, np.uint64(16))) & _M32
    a ^= c
    a = (a - _rot(c, np.uint64(4))) & _M32
    b ^= a
    b = (b - _rot(a, np.uint64(14))) & _M32
    c ^= b
    c = (c - _rot(b, np.uint64(24))) & _M32
    return (b << np.uint64(32)) | c  # type: ignore[no-any-return]


@_jit
def _hex8(word: np.uint64) -> np.uint64:
    """The low 32 bits as 8 lower-case hex digits, most significant first in memory order."""
    x = word & _M32
    x = (x | (x << np.uint64(16))) & np.uint64(0x0000_FFFF_0000_FFFF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x00FF_00FF_00FF_00FF)
    x = (x | (x << np.uint64(4))) & np.uint64(0x0F0F_0F0F_0F0F_0F0F)  # nibble k in byte k
    letters = ((x + np.uint64(0x0606_0606_0606_0606)) >> np.uint64(4)) & _ONES
    return _bswap64(x + np.uint64(0x3030_3030_3030_3030) + letters * np.uint64(0x27))  # type: ignore[no-any-return]


@_jit
def _put_hex16(at: int, pos: int, value: np.uint64) -> int:
    _store64(at, pos, _hex8(value >> np.uint64(32)))
    _store64(at, pos + 8, _hex8(value))
    return pos + 16


@_jit
def _put_count(at: int, pos: int, value: int) -> int:
    """A non-negative integer in decimal, then ':' (the length prefix of a variable field)."""
    if value < 10:  # the common lengths, without a loop
        _store16(at, pos, np.uint64(48 + value) | np.uint64(58 << 8))
        return pos + 2
    if value < 100:
        tens = np.uint64(48 + value // 10)
        ones = np.uint64(48 + value % 10)
        _store16(at, pos, tens | (ones << np.uint64(8)))
        _store8(at, pos + 2, np.uint64(58))
        return pos + 3
    digits = 1
    rest = value // 10
    while rest:
        digits += 1
        rest //= 10
    rest = value
    for k in range(digits - 1, -1, -1):
        _store8(at, pos + k, np.uint64(48 + rest % 10))
        rest //= 10
    _store8(at, pos + digits, np.uint64(58))  # ':'
    return pos + digits + 1


@_jit
def _copy(destination: int, source: int, length: int) -> None:
    """length bytes from source to destination, 8 at a time (reads stay within the source)."""
    k = 0
    while k + 8 <= length:
        _store64(destination, k, _load64(source, k))
        k += 8
    while k < length:
        _store8(destination, k, _load8(source, k))
        k += 1


@_jit
def _offset(address: int, index: int, wide: bool) -> int:
    if wide:
        return int(np.int64(_load64(address, 8 * index)))
    return int(np.int64(_load32(address, 4 * index)))


@_jit
def _float32_bits(bits: np.uint64) -> np.uint64:
    """The binary64 bits of a binary32 value (widening is exact), NaN canonical."""
    sign = (bits >> np.uint64(31)) << np.uint64(63)
    exponent = (bits >> np.uint64(23)) & np.uint64(0xFF)
    fraction = bits & np.uint64(0x7F_FFFF)
    if exponent == np.uint64(0xFF):
        return _NAN_BITS if fraction else sign | _EXP64
    if exponent == np.uint64(0):
        if not fraction:
            return sign
        # Subnormal: fraction * 2**-149, normalized.
        top = 22
        while not (fraction >> np.uint64(top)) & np.uint64(1):
            top -= 1
        biased = np.uint64(top - 149 + 1023)
        return sign | (biased << np.uint64(52)) | ((fraction << np.uint64(52 - top)) & _FRAC64)
    biased = exponent - np.uint64(127) + np.uint64(1023)
    return sign | (biased << np.uint64(52)) | (fraction << np.uint64(29))


@_jit
def _decimal_text(lo: np.uint64, hi: np.uint64, scale: int, digits: int, at: int) -> int:
    """A decimal128 (two's complement lo/hi limbs) as the contract's text, at address `at`:
    plain decimal text with trailing fractional zeros and a trailing point removed. Returns
    its length. 128-bit arithmetic in four 32-bit limbs; `digits`: the address of 48 bytes of
    scratch."""
    negative = (hi >> np.uint64(63)) != np.uint64(0)
    if negative:  # magnitude: two's complement negation across the two limbs
        lo = ~lo + np.uint64(1)
        hi = ~hi + (np.uint64(1) if lo == np.uint64(0) else np.uint64(0))
    # Divided by 10**9 at a time, high limb first (each step's remainder fits 64 bits).
    l3 = hi >> np.uint64(32)
    l2 = hi & _M32
    l1 = lo >> np.uint64(32)
    l0 = lo & _M32
    count = 0  # digits, least significant first
    while True:
        r = l3 % _BILLION
        l3 //= _BILLION
        cur = (r << np.uint64(32)) | l2
        l2 = cur // _BILLION
        r = cur % _BILLION
        cur = (r << np.uint64(32)) | l1
        l1 = cur // _BILLION
        r = cur % _BILLION
        cur = (r << np.uint64(32)) | l0
        l0 = cur // _BILLION
        r = cur % _BILLION
        more = (l3 | l2 | l1 | l0) != np.uint64(0)
        for _ in range(9):  # a whole group of 9 digits, but the top group without its zeros
            _store8(digits, count, np.uint64(48) + r % np.uint64(10))
            r //= np.uint64(10)
            count += 1
            if not more and r == np.uint64(0):
                break
        if not more:
            break
    while count < scale + 1:  # at least one digit before the point
        _store8(digits, count, np.uint64(48))
        count += 1
    cut = 0  # trailing fractional zeros dropped
    while cut < scale and _load8(digits, cut) == np.uint64(48):
        cut += 1
    pos = 0
    if negative and not (count == 1 and _load8(digits, 0) == np.uint64(48)):
        _store8(at, pos, np.uint64(45))  # '-'
        pos += 1
    for k in range(count - 1, scale - 1, -1):
        _store8(at, pos, _load8(digits, k))
        pos += 1
    if cut < scale:
        _store8(at, pos, np.uint64(46))  # '.'
        pos += 1
        for k in range(scale - 1, cut - 1, -1):
            _store8(at, pos, _load8(digits, k))
            pos += 1
    return pos


@_jit
def _bit(address: int, bit: int) -> bool:
    return bool(((_load8(address, bit >> 3) >> np.uint64(bit & 7)) & np.uint64(1)) != np.uint64(0))


@_jit
def _put_variable(  # noqa: PLR0913 (scalars: see _put_field)
    kind: int, parameter: int, offsets: int, data: int, index: int, at: int, pos: int, digits: int
) -> int:
    """A text, binary or decimal field: `<octets>:<payload>`."""
    if kind == K_DECIMAL:
        lo = _load64(data, 16 * index)
        hi = _load64(data, 16 * index + 8)
        # The text goes 21 bytes further on (room for the longest prefix), then moves back.
        text = at + pos + 21
        length = _decimal_text(lo, hi, parameter, digits, text)
        pos = _put_count(at, pos, length)
        for k in range(length):
            _store8(at, pos + k, _load8(text, k))
        return pos + length
    wide = kind in (K_TEXT64, K_BINARY64)
    start = _offset(offsets, index, wide)
    length = _offset(offsets, index + 1, wide) - start
    if kind in (K_TEXT32, K_TEXT64):
        pos = _put_count(at, pos, length)
        _copy(at + pos, data + start, length)
        return pos + length
    pos = _put_count(at, pos, 2 * length)
    for k in range(length):
        _store16(at, pos + 2 * k, np.uint64(_HEX_PAIRS[_load8(data, start + k)]))
    return pos + 2 * length


@_jit
def _fixed_bits(kind: int, data: int, index: int) -> np.uint64:
    """The 64 bits a 16-hex-digit field shows: an integer, float or timestamp kind."""
    if kind == K_TIMESTAMP_US:
        return _load64(data, 8 * index) - _EPOCH_MICROS  # type: ignore[no-any-return]
    if kind == K_FLOAT64:
        bits = _load64(data, 8 * index)
        if (bits & _EXP64) == _EXP64 and (bits & _FRAC64) != np.uint64(0):
            return _NAN_BITS
        return bits  # type: ignore[no-any-return]
    if kind == K_FLOAT32:
        return _float32_bits(_load32(data, 4 * index))
    if kind == K_INT8:
        return np.uint64(np.int64(np.int8(_load8(data, index))))
    if kind == K_INT16:
        return np.uint64(np.int64(np.int16(_load16(data, 2 * index))))
    if kind == K_INT32:
        return np.uint64(np.int64(np.int32(_load32(data, 4 * index))))
    return _load64(data, 8 * index)  # type: ignore[no-any-return]


@_jit
def _put_field(  # noqa: PLR0913 (scalars, not a struct: an array argument costs a reference count)
    kind: int,
    parameter: int,
    validity: int,
    offsets: int,
    data: int,
    index: int,
    at: int,
    pos: int,
    digits: int,
) -> int:
    """Writes the field of value `index` (the array's offset included) at address at + pos;
    returns the position after it."""
    if kind == K_NULL or (validity != 0 and not _bit(validity, index)):
        _store8(at, pos, np.uint64(78))  # N

        return pos + 1
    if kind <= K_DECIMAL:  # K_TEXT32, K_TEXT64, K_BINARY32, K_BINARY64, K_DECIMAL
        return _put_variable(kind, parameter, offsets, data, index, at, pos, digits)
    if kind == K_BOOLEAN:
        _store8(at, pos, np.uint64(116) if _bit(data, index) else np.uint64(102))  # t / f
        return pos + 1
    if kind == K_DATE32:
        days = np.uint64(np.int64(np.int32(_load32(data, 4 * index))))
        _store64(at, pos, _hex8(days - _EPOCH_DAYS))
        return pos + 8
    return _put_hex16(at, pos, _fixed_bits(kind, data, index))


@_jit
def _field_bound(kind: int, offsets: int, first: int, rows: int) -> int:
    """The most bytes this column's field can take over rows [first, first + rows)."""
    if kind in (K_TEXT32, K_TEXT64, K_BINARY32, K_BINARY64):
        wide = kind in (K_TEXT64, K_BINARY64)
        longest = 0
        for index in range(first, first + rows):
            length = _offset(offsets, index + 1, wide) - _offset(offsets, index, wide)
            longest = max(longest, length)
        if kind in (K_BINARY32, K_BINARY64):
            longest *= 2
        return 21 + longest
    if kind == K_DECIMAL:
        return 21 + _DECIMAL_WIDTH
    return 16


@_jit_cached
def run(  # noqa: PLR0913 (one flat signature for every schema: see the module docstring)
    kinds: npt.NDArray[np.int64],
    parameters: npt.NDArray[np.int64],
    buffers: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    rows: int,
    mode: int,
    rows_out: npt.NDArray[np.uint64],
    fields_out: npt.NDArray[np.uint64],
    encoded: npt.NDArray[np.int64],
    out_bytes: npt.NDArray[np.uint8],
) -> None:
    """Column j is kinds[j], parameters[j], buffers[j] = (validity, offsets, data) addresses
    (0: absent) and offsets[j] (the array's offset, for validity and values alike). `mode`
    says which outputs to fill (ROW_HASHES, FIELD_HASHES, FIELD_LENGTHS, FIELD_BYTES)."""
    columns = len(kinds)
    size = 3
    for j in range(columns):
        size += _field_bound(kinds[j], buffers[j, 1], offsets[j], rows)
    # The row being encoded, reused row after row; padded for whole-word reads and writes.
    scratch = np.empty(size + 32 + _DECIMAL_WIDTH, dtype=np.uint8)
    at = int(np.int64(scratch.ctypes.data))
    digits = at + size + 32  # a decimal's digits, while it is written
    version = (np.uint64(ord("2")) << np.uint64(16)) | (np.uint64(ord("h")) << np.uint64(8))
    version |= np.uint64(ord("r"))
    row_hashes = mode & ROW_HASHES
    for i in range(rows):
        pos = 0
        if row_hashes:
            _store64(at, 0, version)  # "rh2", CONTRACT_VERSION
            pos = 3
        for j in range(columns):
            start = pos
            pos = _put_field(
                kinds[j],
                parameters[j],
                buffers[j, 0],
                buffers[j, 1],
                buffers[j, 2],
                offsets[j] + i,
                at,
                pos,
                digits,
            )
            if mode & FIELD_HASHES:
                fields_out[i, j] = _lookup3(at + start, pos - start)
            if mode & FIELD_LENGTHS:
                encoded[i * columns + j] = pos - start
            if mode & FIELD_BYTES:
                first = encoded[i * columns + j]
                for k in range(pos - start):
                    out_bytes[first + k] = scratch[start + k]
            if not row_hashes:
                pos = 0
        if row_hashes:
            rows_out[i] = _lookup3(at, pos)
