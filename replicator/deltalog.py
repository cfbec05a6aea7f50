"""What the Delta log says a month did since a sync: read commit by commit, by the protocol.

A month is `unchanged` only when something explains that its content is what the sync copied:
its logical file set is the one recorded, or every commit since the synced version is readable
and the differences between the files are all `dataChange: false` (OPTIMIZE, Z-order,
compaction). It is `changed` when a commit since changed its data, and `unknown` (recomputed,
never assumed) when the table was recreated, the log since the sync was cleaned up, the synced
commit was rewritten (its commitInfo timestamp differs from the one recorded), the metadata that
maps a file's bytes to rows changed (`read_identity`), or the files differ and no commit
readable since explains it (a lost or rewritten commit).
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replicator.schema import PARTITION_COLUMN

COLUMN_MAPPING_MODE = "delta.columnMapping.mode"
# What a field's metadata holds that changes how its values are read from a file.
_READ_METADATA = ("delta.columnMapping.physicalName", "delta.columnMapping.id")


class ChangeKind(enum.Enum):
    UNCHANGED = "unchanged"  # the month's data is what it was at the version
    CHANGED = "changed"  # a commit since the version changed the month's data
    UNKNOWN = "unknown"  # nothing explains the month's files: do not guess


@dataclass(frozen=True)
class MonthChange:
    """What happened to a month's data after a version, by the Delta protocol."""

    kind: ChangeKind
    reason: str = ""
    since_version: int | None = None  # the first version that changed the month's data
    pending_since: float | None = None  # when that happened (epoch seconds), for the lag

    @property
    def changed(self) -> bool:
        return self.kind is not ChangeKind.UNCHANGED

    def lag_seconds(self, now: float | None = None) -> float:
        if self.pending_since is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.pending_since)


@dataclass(frozen=True)
class Since:
    """What a sync recorded of the Delta table (see `replicator.syncstate.Anchor`)."""

    version: int | None
    table_id: str | None = None
    files: str | None = None  # the month's file-set fingerprint
    schema: str | None = None  # `read_identity` of the table's metadata (None: not recorded)
    commit_ms: int | None = None  # the synced commit's commitInfo timestamp


def read_identity(
    schema_json: str, partition_columns: Sequence[str], configuration: Mapping[str, Any]
) -> str:
    """A fingerprint of everything in a metaData action that maps a file's bytes to rows: each
    field's logical name, type and column-mapping physical name and id, the partition columns
    and the column mapping mode. (Nullability, other table properties, comments and statistics
    settings change no value that is read, so they are left out.)"""
    fields = json.loads(schema_json).get("fields", [])
    normalized = [
        [
            f.get("name"),
            f.get("type"),
            [(f.get("metadata") or {}).get(key) for key in _READ_METADATA],
        ]
        for f in fields
    ]
    text = json.dumps(
        [normalized, list(partition_columns), configuration.get(COLUMN_MAPPING_MODE)],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CommitSummary:
    """What one commit did, as far as months are concerned."""

    timestamp_ms: int | None
    table_id: str | None  # the table id of a metaData action in the commit
    data_changed: frozenset[str]  # months whose data the commit changed
    rearranged: frozenset[str]  # months whose files it replaced without changing data
    unplaced: bool  # it changed data of a file whose month cannot be told
    identity: str | None = None  # `read_identity` of a metaData action in the commit


class CommitCache:
    """Parsed commits by (table uri, table id, version); bounded, shared by every reader. A
    commit is immutable by the protocol; a rewritten one is caught by its timestamp."""

    def __init__(self, size: int = 50_000) -> None:
        self._entries: OrderedDict[tuple[str, str, int], CommitSummary] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> CommitSummary | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, int], summary: CommitSummary) -> None:
        with self._lock:
            self._entries[key] = summary
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


COMMITS = CommitCache()


def _action_month(action: dict[str, object], partition_keys: tuple[str, ...]) -> str | None:
    values = action.get("partitionValues")
    if isinstance(values, dict):
        for key in partition_keys:
            if isinstance(values.get(key), str):
                return str(values[key])
    # A remove without extended file metadata: a Hive-style path still names the month.
    path = urllib.parse.unquote(str(action.get("path", "")))
    marker = f"{PARTITION_COLUMN}="
    for part in path.split("/"):
        if part.startswith(marker):
            return part[len(marker) :]
    return None


def summarize(text: str, partition_keys: tuple[str, ...]) -> CommitSummary:
    """The summary of one commit file's JSON lines."""
    timestamp: int | None = None
    table_id: str | None = None
    identity: str | None = None
    changed: set[str] = set()
    rearranged: set[str] = set()
    unplaced = False
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
            stamp = info.get("inCommitTimestamp", info.get("timestamp"))
            timestamp = int(stamp) if isinstance(stamp, int) else timestamp
        elif "metaData" in action:
            metadata = action["metaData"]
            table_id = str(metadata.get("id"))
            identity = read_identity(
                metadata.get("schemaString", "{}"),
                metadata.get("partitionColumns") or [],
                metadata.get("configuration") or {},
            )
        for kind in ("add", "remove"):
            file_action = action.get(kind)
            if not isinstance(file_action, dict):
                continue
            month = _action_month(file_action, partition_keys)
            if file_action.get("dataChange", True):
                if month is None:
                    unplaced = True
                else:
                    changed.add(month)
            elif month is not None:
                rearranged.add(month)
    return CommitSummary(
        timestamp, table_id, frozenset(changed), frozenset(rearranged), unplaced, identity
    )
