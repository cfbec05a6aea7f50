"""The deletion-vector writer of the tests writes what the Delta protocol says, and delta-rs's
own reader agrees: the rows a DV hides disappear from every read, and our reader counts the
month's logical rows (numRecords minus the DV's cardinality)."""

from __future__ import annotations

import struct
import uuid
import zlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from reconciler.sample import ranking_signal, write_delta_month
from replicator.config import TableSpec
from replicator.delta import ChangeKind, DeltaTableReader
from replicator.deltalog import Since
from replicator.yearmonth import YearMonth
from tests.deltalog import DeltaLog, parse_dv, serialize_dv, z85, z85_decode

OCT, SEP = YearMonth.parse("2026-10"), YearMonth.parse("2026-09")
SPEC = TableSpec("ranking_signal", ("signal_date", "entity_id", "signal_name"))


def test_z85_of_a_dv_file_name_is_what_spark_writes() -> None:
    # The UUID of the DV file in delta-rs's `table-with-dv-small` and its pathOrInlineDv.
    name = uuid.UUID("61d16c75-6994-46b7-a15b-8b538852e50e")
    assert z85(name.bytes) == "vBn[lx{q8@P<9BNH/isA"
    assert z85_decode("vBn[lx{q8@P<9BNH/isA") == name.bytes


def test_roaring_bitmap_array_layout() -> None:
    data = serialize_dv({0, 9, 2**32 + 5})
    assert struct.unpack("<I", data[:4]) == (1681511377,)  # the magic number, little-endian
    assert struct.unpack("<q", data[4:12]) == (2,)  # two 32-bit buckets: keys 0 and 1
    assert parse_dv(data) == {0, 9, 2**32 + 5}


def month_keys(table: DeltaTable, month: YearMonth) -> list[str]:
    rows = pa.table(
        table.scan(
            columns=["entity_id", "signal_name", "signal_date"], predicate=f"year_month = '{month}'"
        )
    )
    return sorted(
        f"{e}|{n}|{d}"
        for e, n, d in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True)
    )


def since(reader: DeltaTableReader, month: YearMonth) -> Since:
    """What a sync of the month at the reader's version would have recorded."""
    return Since(
        reader.version,
        reader.table_id,
        reader.month_fingerprint(month),
        reader.identity,
        reader.commit_timestamp(reader.version),
    )


@pytest.mark.parametrize("inline", [False, True], ids=["on-disk", "inline"])
def test_delta_rs_hides_the_rows_a_dv_deletes(tmp_path: object, inline: bool) -> None:
    uri = f"{tmp_path}/ranking_signal"
    data = ranking_signal(OCT, 200, seed=1)
    write_delta_month(uri, OCT, data)
    write_delta_month(uri, SEP, ranking_signal(SEP, 50))
    before = DeltaTableReader(SPEC, uri, {})
    log = DeltaLog(uri)
    hidden = log.delete_with_deletion_vectors(
        "2026-10", lambda t: pc.less(t.column("rank"), 10), inline=inline
    )
    assert hidden == 10
    table = DeltaTable(uri)
    assert "deletionVectors" in (table.protocol().reader_features or [])
    expected = sorted(
        f"{r['entity_id']}|{r['signal_name']}|{r['signal_date']}"
        for r in data.to_pylist()
        if r["rank"] >= 10
    )
    assert month_keys(table, OCT) == expected  # delta-rs's reader agrees
    reader = DeltaTableReader(SPEC, uri, {})
    assert reader.month_row_count(OCT) == 190  # numRecords 200 minus cardinality 10
    assert [f.deleted for f in reader.month_files(OCT)] == [10]
    assert reader.month_row_count(SEP) == 50
    assert reader.month_fingerprint(OCT) != before.month_fingerprint(OCT)  # same path, new DV
    assert reader.month_fingerprint(SEP) == before.month_fingerprint(SEP)
    change = reader.month_change(OCT, since(before, OCT))
    assert (change.kind, change.since_version) == (ChangeKind.CHANGED, reader.version)
    assert reader.month_change(SEP, since(before, SEP)).kind is ChangeKind.UNCHANGED
    # A second delete merges with the file's DV; the old DV is read back through our parser.
    log.delete_with_deletion_vectors("2026-10", lambda t: pc.equal(t.column("rank"), 10))
    assert DeltaTableReader(SPEC, uri, {}).month_row_count(OCT) == 189
    assert len(month_keys(DeltaTable(uri), OCT)) == 189


def test_the_on_disk_format_is_version_size_bitmap_checksum(tmp_path: object) -> None:
    uri = f"{tmp_path}/t"
    write_delta_month(uri, OCT, ranking_signal(OCT, 20))
    DeltaLog(uri).delete_with_deletion_vectors("2026-10", lambda t: pc.less(t.column("rank"), 3))
    (blob_path,) = list(DeltaLog(uri).root.glob("deletion_vector_*.bin"))
    blob = blob_path.read_bytes()
    assert blob[0] == 1
    (size,) = struct.unpack(">i", blob[1:5])
    bitmap = blob[5 : 5 + size]
    assert struct.unpack(">I", blob[5 + size : 9 + size]) == (zlib.crc32(bitmap),)
    assert parse_dv(bitmap) == {0, 1, 2}


def test_column_mapping_tables_take_dvs_too(tmp_path: object) -> None:
    uri = f"{tmp_path}/cm"
    write_deltalake(
        uri,
        ranking_signal(OCT, 30),
        partition_by=["year_month"],
        configuration={"delta.columnMapping.mode": "name"},
    )
    DeltaLog(uri).delete_with_deletion_vectors("2026-10", lambda t: pc.less(t.column("rank"), 5))
    assert DeltaTableReader(SPEC, uri, {}).month_row_count(OCT) == 25
    assert len(month_keys(DeltaTable(uri), OCT)) == 25
