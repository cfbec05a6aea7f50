"""The Delta side's row hashing: the contract kernel against today's path (DataFusion builds each
row's encoding, numpy hashes it), on one month of `ranking_signal`.

    python -m benchmarks.bench_kernel [--rows 2000000] [--batch-rows 131072]

The month is written to a local Delta table and read back as the digest reads it
(`DeltaTableReader.scan_month`, batches of `--batch-rows`), into memory; then only hashing is
timed, each figure the median of five runs: one thread through `DeltaHasher`, then two
workers through `ParallelHasher` (each batch cut in two slices hashed at once). Both paths must
give the same month digest. rows/s is by wall time; rows/s per core is rows per second of CPU
time of the process (all its threads), which other load on the machine's shared cores skews
less than wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import pyarrow as pa

from benchmarks.common import report, tempdir, write_delta
from replicator.config import TableSpec
from replicator.contract import DeltaHasher, DigestAccumulator, MonthDigest, ParallelHasher, kernel
from replicator.delta import DeltaTableReader
from replicator.schema import TableSchema
from replicator.yearmonth import YearMonth

MONTH = YearMonth.parse("2026-10")
RUNS = 5
SPEC = TableSpec("ranking_signal", ("signal_date", "entity_id", "signal_name"))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the month")
    parser.add_argument("--batch-rows", type=int, default=131_072, help="rows per batch")
    return parser.parse_args()


def use_kernel(on: bool) -> None:
    """Switches the process between the kernel and the fallback (as on-call would)."""
    if on:
        os.environ.pop(kernel.ENVIRONMENT, None)
    else:
        os.environ[kernel.ENVIRONMENT] = "python"
    kernel.reset()
    assert kernel.available() is on


def measure(func: Callable[[], MonthDigest]) -> tuple[float, float, MonthDigest]:
    """Median wall and CPU seconds of RUNS calls, and the last call's digest."""
    walls, cpus = [], []
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        digest = func()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), digest


def one_thread(schema: TableSchema, batches: list[pa.RecordBatch]) -> Callable[[], MonthDigest]:
    def run() -> MonthDigest:
        hasher = DeltaHasher(schema)
        accumulator = DigestAccumulator(1)
        for batch in batches:
            hasher.add(accumulator, batch)
        return accumulator.result()

    return run


def two_workers(schema: TableSchema, batches: list[pa.RecordBatch]) -> Callable[[], MonthDigest]:
    return lambda: ParallelHasher(schema, 2).digest(iter(batches))


def main() -> None:
    args = arguments()
    with tempdir() as root:
        write_delta(root, SPEC.name, MONTH, args.rows)
        reader = DeltaTableReader(SPEC, f"{root}/{SPEC.name}", {})
        schema = TableSchema(SPEC, tuple(reader.columns()))
        names = [c.name for c in schema.value_columns]
        batches = list(reader.scan_month(MONTH, names, args.batch_rows))
    rows = sum(b.num_rows for b in batches)
    os.environ.pop(kernel.ENVIRONMENT, None)
    kernel.reset()
    ready = kernel.warm_up()  # this process's first load: from the cache, or a compile

    figures: dict[tuple[str, int], tuple[float, float]] = {}
    digests = set()
    for on, path in ((False, "baseline"), (True, "kernel")):
        use_kernel(on)
        for threads, make in ((1, one_thread), (2, two_workers)):
            wall, cpu, digest = measure(make(schema, batches))
            figures[path, threads] = (wall, cpu)
            digests.add(digest.hex)
    assert len(digests) == 1, f"the two paths disagree: {digests}"

    def rate(path: str, threads: int) -> str:
        wall, cpu = figures[path, threads]
        return (
            f"{wall:.2f} s, {rows / wall:,.0f} rows/s; {cpu:.2f} s CPU,"
            f" {rows / cpu:,.0f} rows/s per core"
        )

    def ratio(threads: int) -> str:
        (base_wall, base_cpu), (wall, cpu) = (
            figures["baseline", threads],
            figures["kernel", threads],
        )
        return f"{base_wall / wall:.1f}x rows/s, {base_cpu / cpu:.1f}x rows/s per core"

    report(
        f"row hashes of {rows:,} rows of ranking_signal ({len(batches)} batches,"
        f" {len(schema.value_columns)} value columns), median of {RUNS}",
        [
            ("baseline: DataFusion + numpy, 1 thread", rate("baseline", 1)),
            ("kernel, 1 thread", rate("kernel", 1)),
            ("ratio, 1 thread", ratio(1)),
            ("baseline, ParallelHasher 2 workers", rate("baseline", 2)),
            ("kernel, ParallelHasher 2 workers", rate("kernel", 2)),
            ("ratio, 2 workers", ratio(2)),
            ("kernel, 1 -> 2 workers", f"{figures['kernel', 1][0] / figures['kernel', 2][0]:.2f}x"),
            ("digest (both paths)", digests.pop()),
            ("kernel load", ready),
            ("target", "kernel >= 5x the baseline's rows/s per core"),
        ],
    )


if __name__ == "__main__":
    main()
