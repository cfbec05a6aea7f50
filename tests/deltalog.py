"""Hand-written Delta commits for tests: what delta-rs cannot write but real tables contain.

delta-rs reads deletion vectors (DVs) but never writes them, and it has no column rename; Spark
and Databricks do both. `DeltaLog` writes such commits per PROTOCOL.md of delta-io/delta:

* a DV is a RoaringBitmapArray (magic number 1681511377, then a 64-bit roaring bitmap in the
  portable format, which pyroaring serializes), stored on disk (`deletion_vector_<uuid>.bin`:
  version byte 1, then per DV its size, the bitmap and its CRC-32, big-endian) or inline
  (Z85-encoded in the log); the commit removes the old logical file and adds the same path with
  the DV, both `dataChange: true`, as `table-with-dv-small` of delta-rs's test data shows;
* a rename under column mapping is a new metaData action with the same physical name.

Only JSON commits are replayed (the tests that use this write no checkpoint first).
"""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyroaring

DV_MAGIC = 1681511377
Z85_ALPHABET = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)


def z85(data: bytes) -> str:
    """ZeroMQ's Z85 (RFC 32), which the Delta protocol uses for DVs in the log. Written here:
    Python gains `base64.z85encode` only in 3.13."""
    if len(data) % 4:
        raise ValueError("Z85 encodes whole 4-byte words")
    out = []
    for (word,) in struct.iter_unpack(">I", data):
        chunk, rest = [], word
        for _ in range(5):
            rest, digit = divmod(rest, 85)
            chunk.append(Z85_ALPHABET[digit])
        out.extend(reversed(chunk))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    values = [Z85_ALPHABET.index(c) for c in text]
    words = []
    for i in range(0, len(values), 5):
        word = 0
        for value in values[i : i + 5]:
            word = word * 85 + value
        words.append(struct.pack(">I", word))
    return b"".join(words)


def serialize_dv(positions: set[int]) -> bytes:
    """A RoaringBitmapArray: the magic number, then a portable 64-bit roaring bitmap."""
    return struct.pack("<I", DV_MAGIC) + pyroaring.BitMap64(sorted(positions)).serialize()


def parse_dv(data: bytes) -> set[int]:
    (magic,) = struct.unpack("<I", data[:4])
    assert magic == DV_MAGIC, "not a RoaringBitmapArray"
    return set(pyroaring.BitMap64.deserialize(data[4:]))


class DeltaLog:
    """One Delta table on local disk, for writing commits by hand."""

    def __init__(self, uri: str) -> None:
        self.root = Path(uri.removeprefix("file://"))
        self.log = self.root / "_delta_log"

    # -- reading the log ---------------------------------------------------------------------
    def versions(self) -> list[int]:
        return sorted(int(p.stem) for p in self.log.glob("*.json"))

    def commits(self) -> list[list[dict[str, Any]]]:
        return [
            [json.loads(line) for line in (self.log / f"{v:020d}.json").read_text().splitlines()]
            for v in self.versions()
        ]

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
        """(protocol, metaData, live add actions by path), replayed from the JSON commits."""
        protocol: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        files: dict[str, dict[str, Any]] = {}
        for actions in self.commits():
            for action in actions:
                if "protocol" in action:
                    protocol = action["protocol"]
                elif "metaData" in action:
                    metadata = action["metaData"]
                elif "add" in action:
                    files[action["add"]["path"]] = action["add"]
                elif "remove" in action:
                    files.pop(action["remove"]["path"], None)
        return protocol, metadata, files

    def physical_names(self, metadata: dict[str, Any]) -> dict[str, str]:
        """Logical name -> name in the Parquet files (differs under column mapping)."""
        fields = json.loads(metadata["schemaString"])["fields"]
        return {
            f["name"]: f.get("metadata", {}).get("delta.columnMapping.physicalName", f["name"])
            for f in fields
        }

    # -- writing commits ---------------------------------------------------------------------
    def commit(self, actions: list[dict[str, Any]], operation: str) -> int:
        version = (self.versions() or [-1])[-1] + 1
        info = {"commitInfo": {"timestamp": int(time.time() * 1000), "operation": operation}}
        path = self.log / f"{version:020d}.json"
        with path.open("x") as out:  # "x": a concurrent writer of the same version fails
            for action in [info, *actions]:
                out.write(json.dumps(action) + "\n")
        return version

    def _with_feature(self, protocol: dict[str, Any], feature: str) -> dict[str, Any] | None:
        """The protocol with a reader+writer table feature added, or None if it has it."""
        readers = set(protocol.get("readerFeatures") or [])
        writers = set(protocol.get("writerFeatures") or [])
        if feature in readers and feature in writers:
            return None
        if protocol.get("minReaderVersion", 1) >= 2 and "readerFeatures" not in protocol:
            readers.add("columnMapping")  # reader version 2 implied it; features must say so
            writers.add("columnMapping")
        return {
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": sorted(readers | {feature}),
            "writerFeatures": sorted(writers | {feature}),
        }

    def delete_with_deletion_vectors(
        self,
        year_month: str,
        where: Callable[[pa.Table], pa.Array],
        *,
        inline: bool = False,
    ) -> int:
        """Hides the month's rows that `where` (a boolean mask over each file's logical rows,
        by logical column names) selects, as Spark's DELETE does: one DV per touched file,
        merged with the file's existing DV. Returns the number of rows hidden."""
        protocol, metadata, files = self.snapshot()
        physical = self.physical_names(metadata)
        month_key = physical["year_month"]
        actions: list[dict[str, Any]] = []
        upgraded = self._with_feature(protocol, "deletionVectors")
        if upgraded is not None:
            actions.append({"protocol": upgraded})
            config = dict(
                metadata.get("configuration") or {}, **{"delta.enableDeletionVectors": "true"}
            )
            actions.append({"metaData": dict(metadata, configuration=config)})
        blobs: list[bytes] = []
        dv_name = uuid.uuid4()
        offset, hidden = 1, 0
        for path, add in sorted(files.items()):
            if add["partitionValues"].get(month_key) != year_month:
                continue
            data = pq.read_table(self.root / path)
            data = data.rename_columns(
                [next((k for k, v in physical.items() if v == c), c) for c in data.column_names]
            )
            if "year_month" not in data.column_names:  # partition values are not in the files
                data = data.append_column("year_month", pa.array([year_month] * data.num_rows))
            already = self.deleted_positions(add)
            selected = np.asarray(where(data).to_numpy(zero_copy_only=False), dtype=bool)
            positions = already | {
                int(i) for i in np.flatnonzero(selected) if int(i) not in already
            }
            if positions == already:
                continue
            hidden += len(positions) - len(already)
            bitmap = serialize_dv(positions)
            if inline:
                padded = bitmap + b"\0" * (-len(bitmap) % 4)
                dv = {"storageType": "i", "pathOrInlineDv": z85(padded)}
            else:
                dv = {"storageType": "u", "pathOrInlineDv": z85(dv_name.bytes), "offset": offset}
                blobs.append(
                    struct.pack(">i", len(bitmap)) + bitmap + struct.pack(">I", zlib.crc32(bitmap))
                )
                offset += 4 + len(bitmap) + 4
            dv.update(sizeInBytes=len(bitmap), cardinality=len(positions))
            removed = {
                "path": path,
                "deletionTimestamp": int(time.time() * 1000),
                "dataChange": True,
                "extendedFileMetadata": True,
                "partitionValues": add["partitionValues"],
                "size": add["size"],
            }
            if add.get("deletionVector"):
                removed["deletionVector"] = add["deletionVector"]
            actions.append({"remove": removed})
            actions.append({"add": dict(add, dataChange=True, deletionVector=dv)})
        if blobs:
            (self.root / f"deletion_vector_{dv_name}.bin").write_bytes(b"\x01" + b"".join(blobs))
        if hidden:
            self.commit(actions, "DELETE")
        return hidden

    def deleted_positions(self, add: dict[str, Any]) -> set[int]:
        """The row positions an add action's DV hides (empty without one)."""
        dv = add.get("deletionVector")
        if not dv:
            return set()
        if dv["storageType"] == "i":
            return parse_dv(z85_decode(dv["pathOrInlineDv"])[: dv["sizeInBytes"]])
        encoded = dv["pathOrInlineDv"]
        prefix, name = encoded[:-20], uuid.UUID(bytes=z85_decode(encoded[-20:]))
        blob = (self.root / prefix / f"deletion_vector_{name}.bin").read_bytes()
        start = dv.get("offset", 0)
        (size,) = struct.unpack(">i", blob[start : start + 4])
        data = blob[start + 4 : start + 4 + size]
        (checksum,) = struct.unpack(">I", blob[start + 4 + size : start + 8 + size])
        assert checksum == zlib.crc32(data), "DV checksum mismatch"
        return parse_dv(data)

    def rename_column(self, old: str, new: str) -> int:
        """RENAME COLUMN under column mapping: the logical name changes, the files do not."""
        _, metadata, _ = self.snapshot()
        schema = json.loads(metadata["schemaString"])
        assert metadata.get("configuration", {}).get("delta.columnMapping.mode") in ("name", "id")
        for field in schema["fields"]:
            if field["name"] == old:
                field["name"] = new
        return self.commit(
            [{"metaData": dict(metadata, schemaString=json.dumps(schema))}], "RENAME COLUMN"
        )

    def widen_type(self, column: str, to: str) -> int:
        """ALTER COLUMN TYPE with Delta's type widening (typeWidening table feature)."""
        protocol, metadata, _ = self.snapshot()
        schema = json.loads(metadata["schemaString"])
        for field in schema["fields"]:
            if field["name"] == column:
                change = {"fromType": field["type"], "toType": to}
                field["type"] = to
                field.setdefault("metadata", {})["delta.typeChanges"] = [change]
        actions: list[dict[str, Any]] = []
        upgraded = self._with_feature(protocol, "typeWidening")
        if upgraded is not None:
            actions.append({"protocol": upgraded})
        actions.append({"metaData": dict(metadata, schemaString=json.dumps(schema))})
        return self.commit(actions, "CHANGE COLUMN")

    # -- metadata that changes how files read, and history rewritten ------------------------
    def _mapped(self) -> tuple[dict[str, Any], dict[str, Any]]:
        _, metadata = self.snapshot()[:2]
        assert metadata.get("configuration", {}).get("delta.columnMapping.mode") in ("name", "id")
        return metadata, json.loads(metadata["schemaString"])

    def remap_column(self, name: str) -> int:
        """DROP COLUMN then ADD COLUMN of the same name under column mapping, in one metaData
        action: the column gets a new physical name (and id), so every value in the existing
        files reads as NULL; no data file changes."""
        metadata, schema = self._mapped()
        configuration = dict(metadata.get("configuration") or {})
        next_id = int(configuration.get("delta.columnMapping.maxColumnId", "100")) + 1
        for field in schema["fields"]:
            if field["name"] == name:
                field["metadata"]["delta.columnMapping.id"] = next_id
                field["metadata"]["delta.columnMapping.physicalName"] = f"col-{uuid.uuid4()}"
        configuration["delta.columnMapping.maxColumnId"] = str(next_id)
        changed = dict(metadata, schemaString=json.dumps(schema), configuration=configuration)
        return self.commit([{"metaData": changed}], "ADD COLUMNS")

    def swap_physical_names(self, first: str, second: str) -> int:
        """A metaData action that swaps two columns' physical names: each now reads the other's
        values; the logical names and types stay."""
        metadata, schema = self._mapped()
        by_name = {f["name"]: f for f in schema["fields"]}
        a, b = by_name[first]["metadata"], by_name[second]["metadata"]
        key = "delta.columnMapping.physicalName"
        a[key], b[key] = b[key], a[key]
        return self.commit(
            [{"metaData": dict(metadata, schemaString=json.dumps(schema))}], "CHANGE COLUMN"
        )

    def strip_num_records(self, version: int) -> None:
        """Removes `numRecords` from the statistics of every add action of a commit (a writer
        that records no statistics)."""
        path = self.log / f"{version:020d}.json"
        lines = []
        for line in path.read_text().splitlines():
            action = json.loads(line)
            if "add" in action and action["add"].get("stats"):
                stats = json.loads(action["add"]["stats"])
                stats.pop("numRecords", None)
                action["add"]["stats"] = json.dumps(stats)
            lines.append(json.dumps(action))
        path.write_text("\n".join(lines) + "\n")

    def rewrite_last_commit(self, year_month: str, rows: pa.Table) -> int:
        """The latest commit deleted and a commit with the same version number written that
        replaces the month's files with `rows` (same table id): what a lost commit on an object
        store without a log store looks like. Only the JSON commit changes; no checkpoint."""
        version = self.versions()[-1]
        (self.log / f"{version:020d}.json").unlink()
        _, _, files = self.snapshot()
        folder = f"year_month={year_month}"
        (self.root / folder).mkdir(exist_ok=True)
        name = f"{folder}/part-rewritten-{uuid.uuid4()}.snappy.parquet"
        pq.write_table(rows.drop_columns(["year_month"]), self.root / name)
        now = int(time.time() * 1000)
        actions: list[dict[str, Any]] = [
            {
                "remove": {
                    "path": path,
                    "deletionTimestamp": now,
                    "dataChange": True,
                    "extendedFileMetadata": True,
                    "partitionValues": add["partitionValues"],
                    "size": add["size"],
                }
            }
            for path, add in sorted(files.items())
            if add["partitionValues"].get("year_month") == year_month
        ]
        actions.append(
            {
                "add": {
                    "path": name,
                    "partitionValues": {"year_month": year_month},
                    "size": (self.root / name).stat().st_size,
                    "modificationTime": now,
                    "dataChange": True,
                    "stats": json.dumps({"numRecords": rows.num_rows}),
                }
            }
        )
        info = {"commitInfo": {"timestamp": now + 1, "operation": "WRITE"}}
        with (self.log / f"{version:020d}.json").open("x") as out:
            for action in [info, *actions]:
                out.write(json.dumps(action) + "\n")
        return version

    def undelete_claiming_no_change(self, year_month: str) -> int:
        """A writer that lies: the month's files re-added without their deletion vectors (the
        deleted rows come back) in a commit that says `dataChange: false`, as a compaction
        would. Metadata cannot tell this from an OPTIMIZE; only the rows can."""
        _, _, files = self.snapshot()
        actions: list[dict[str, Any]] = []
        for path, add in sorted(files.items()):
            if add["partitionValues"].get("year_month") != year_month or not add.get(
                "deletionVector"
            ):
                continue
            removed = {
                "path": path,
                "deletionTimestamp": int(time.time() * 1000),
                "dataChange": False,
                "extendedFileMetadata": True,
                "partitionValues": add["partitionValues"],
                "size": add["size"],
                "deletionVector": add["deletionVector"],
            }
            plain = {k: v for k, v in add.items() if k != "deletionVector"}
            actions += [{"remove": removed}, {"add": dict(plain, dataChange=False)}]
        return self.commit(actions, "OPTIMIZE")

    def move_deletion_vectors_claiming_no_change(self, year_month: str) -> int:
        """A writer that lies more quietly: each DV of the month replaced by one that hides as
        many other rows (the count stays, the rows change), in a `dataChange: false` commit."""
        _, _, files = self.snapshot()
        actions: list[dict[str, Any]] = []
        for path, add in sorted(files.items()):
            if add["partitionValues"].get("year_month") != year_month or not add.get(
                "deletionVector"
            ):
                continue
            hidden = self.deleted_positions(add)
            rows = json.loads(add["stats"])["numRecords"]
            moved = {(p + 1) % rows for p in hidden}
            assert len(moved) == len(hidden) and moved != hidden
            bitmap = serialize_dv(moved)
            padded = bitmap + b"\0" * (-len(bitmap) % 4)
            dv = {
                "storageType": "i",
                "pathOrInlineDv": z85(padded),
                "sizeInBytes": len(bitmap),
                "cardinality": len(moved),
            }
            removed = {
                "path": path,
                "deletionTimestamp": int(time.time() * 1000),
                "dataChange": False,
                "extendedFileMetadata": True,
                "partitionValues": add["partitionValues"],
                "size": add["size"],
                "deletionVector": add["deletionVector"],
            }
            actions += [
                {"remove": removed},
                {"add": dict(add, dataChange=False, deletionVector=dv)},
            ]
        return self.commit(actions, "OPTIMIZE")
