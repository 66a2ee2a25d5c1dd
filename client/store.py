"""The output Parquet file: its columns, what a new run may skip, adding rows without putting it at risk, reading it.

Columns: `path` (relative to the embedded folder, / separators), `type` (text or image), `sha256` (hex digest of the
file's bytes) and `vector` (list<float32>, L2-normalised as the server returns it). One row per path.

New rows are written while a run goes on, every `flush_rows` rows or `flush_seconds`, as part files in `OUT.parts/`;
the output itself is replaced only at the end of a run, by a merge of the old output and the parts. Every file is
written under a temporary name, synced and renamed into place, so that a crash loses at most the rows not yet flushed
and never leaves a damaged output. The next run finds the parts left behind, skips their files and merges them. Of two
rows with the same path (a file that changed after it was embedded) the newer one is kept.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [("path", pa.string()), ("type", pa.string()), ("sha256", pa.string()), ("vector", pa.list_(pa.float32()))]
)
FLUSH_ROWS = 1024
FLUSH_SECONDS = 30.0
ROW_GROUP_ROWS = 65536


class StoreError(Exception):
    """The output (or a part of it) is not a vectors file of this client."""


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    sha256: str
    vector: np.ndarray


@dataclass(frozen=True)
class Modality:
    """The rows of one type, their vectors stacked."""

    paths: list[str]
    sha256: list[str]
    vectors: np.ndarray


class Store:
    """The output of one `embed` run."""

    def __init__(self, out: Path, flush_rows: int = FLUSH_ROWS, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.out = out
        self.parts = parts_folder(out)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.pending: list[Row] = []
        self.flushed_at = time.monotonic()
        self.next_part = 1 + max((int(part.stem.removeprefix("part-")) for part in self.part_files()), default=0)

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def sources(self) -> list[Path]:
        """The stored rows' files, oldest first."""
        return ([self.out] if self.out.exists() else []) + self.part_files()

    def embedded(self) -> dict[str, str]:
        """The sha256 of every stored path, from the output and the parts an interrupted run left."""
        stored: dict[str, str] = {}
        for source in self.sources():
            table = read_checked(source, ["path", "sha256"])
            stored.update(zip(table["path"].to_pylist(), table["sha256"].to_pylist(), strict=True))
        return stored

    def add(self, row: Row) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.flush_rows or time.monotonic() - self.flushed_at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Writes the pending rows as the next part file."""
        self.flushed_at = time.monotonic()
        if not self.pending:
            return
        self.parts.mkdir(exist_ok=True)
        with replaced_atomically(self.parts / f"part-{self.next_part:06d}.parquet") as file:
            write_tables(file, [to_table(self.pending)])
        self.next_part += 1
        self.pending = []

    def finish(self) -> int:
        """Flushes, merges the output and the parts into a new output and removes the parts; returns its rows. With
        nothing stored at all the output is an empty table: an empty folder still gets its output."""
        self.flush()
        sources = self.sources()
        if sources != [self.out]:
            keep = newest_rows([read_checked(source, ["path"])["path"].to_pylist() for source in sources])
            with replaced_atomically(self.out) as file:
                write_tables(file, kept_rows(sources, keep))
        shutil.rmtree(self.parts, ignore_errors=True)
        return pq.ParquetFile(self.out).metadata.num_rows


def kept_rows(sources: list[Path], keep: list[np.ndarray]) -> Iterator[pa.Table]:
    """The rows of each source that `keep` marks, batch by batch, so that merging a large output does not need it
    all in memory."""
    for source, mask in zip(sources, keep, strict=True):
        start = 0
        for batch in pq.ParquetFile(source).iter_batches():
            rows = pa.Table.from_batches([batch]).filter(pa.array(mask[start : start + batch.num_rows]))
            yield rows.select(SCHEMA.names).cast(SCHEMA)
            start += batch.num_rows


def write_tables(file: BinaryIO | Path, tables: Iterable[pa.Table]) -> None:
    """The tables' rows as one Parquet file of SCHEMA, in row groups of ROW_GROUP_ROWS rows and with the vectors
    plainly encoded. Reading a million 512-d vectors written so took about 3 s; in row groups of 1,024 rows, or
    with the dictionary encoding that Parquet tries first (and gives up on floats), several times as long."""
    with pq.ParquetWriter(file, SCHEMA, use_dictionary=["type"]) as writer:
        pending: pa.Table | None = None
        for table in tables:
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= ROW_GROUP_ROWS:
                writer.write_table(pending.slice(0, ROW_GROUP_ROWS))
                pending = pending.slice(ROW_GROUP_ROWS)
        if pending is not None and pending.num_rows:
            writer.write_table(pending)


def parts_folder(out: Path) -> Path:
    """Where the rows of a run wait until they are merged into `out`."""
    return out.with_name(out.name + ".parts")


def newest_rows(paths_by_source: list[list[str]]) -> list[np.ndarray]:
    """For each source, which of its rows to keep: the last row of each path over all sources in order."""
    last: dict[str, tuple[int, int]] = {}
    for source, paths in enumerate(paths_by_source):
        last.update((path, (source, row)) for row, path in enumerate(paths))
    keep = [np.zeros(len(paths), dtype=bool) for paths in paths_by_source]
    for source, row in last.values():
        keep[source][row] = True
    return keep


def to_table(rows: list[Row]) -> pa.Table:
    vectors = [row.vector for row in rows]
    offsets = np.concatenate([[0], np.cumsum([len(vector) for vector in vectors])]).astype(np.int32)
    values = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros(0, np.float32)
    columns = [
        pa.array([row.path for row in rows], pa.string()),
        pa.array([row.type for row in rows], pa.string()),
        pa.array([row.sha256 for row in rows], pa.string()),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def read_checked(source: Path, columns: list[str]) -> pa.Table:
    """`columns` of a Parquet file written by this client; raises StoreError for anything else."""
    try:
        schema = pq.read_schema(source)
    except (OSError, pa.ArrowException) as error:
        raise StoreError(f"{source} cannot be read as Parquet: {error}") from None
    missing = [name for name in SCHEMA.names if name not in schema.names]
    if missing:
        raise StoreError(f"{source} is not a vectors file of this client: it has no {', '.join(missing)} column")
    return pq.read_table(source, columns=columns)


def read_modalities(out: Path) -> dict[str, Modality]:
    """The output's rows by type, each type's vectors as one matrix; raises StoreError when a type's vectors differ
    in length (an output that mixes two servers' models). The vectors are read a row group at a time into their
    matrices, so that reading needs little more memory than the matrices themselves."""
    table = read_checked(out, ["path", "type", "sha256"])
    types = table["type"].to_numpy(zero_copy_only=False)
    kinds = sorted(set(types))
    rows = {kind: np.flatnonzero(types == kind) for kind in kinds}
    vectors: dict[str, np.ndarray] = {}
    filled = dict.fromkeys(kinds, 0)
    start = 0
    file = pq.ParquetFile(out)
    # A row group at a time: iter_batches took three times as long.
    for group in range(file.num_row_groups):
        column = file.read_row_group(group, columns=["vector"]).column(0).combine_chunks()
        group_types = types[start : start + len(column)]
        start += len(column)
        for kind in kinds:
            mask = group_types == kind
            chosen = column if mask.all() else column.filter(pa.array(mask))
            if len(chosen) == 0:
                continue
            dimensions = set(pc.list_value_length(chosen).unique().to_pylist())
            matrix = vectors.setdefault(kind, np.empty((len(rows[kind]), next(iter(dimensions))), np.float32))
            if dimensions != {matrix.shape[1]}:
                seen = sorted(dimensions | {matrix.shape[1]})
                raise StoreError(f"{out}: the {kind} vectors have different lengths {seen}; embed again")
            flat = pc.list_flatten(chosen).to_numpy(zero_copy_only=False)
            matrix[filled[kind] : filled[kind] + len(chosen)] = flat.reshape(len(chosen), matrix.shape[1])
            filled[kind] += len(chosen)
    return {
        kind: Modality(
            table["path"].take(rows[kind]).to_pylist(), table["sha256"].take(rows[kind]).to_pylist(), vectors[kind]
        )
        for kind in kinds
    }


@contextmanager
def replaced_atomically(path: Path) -> Iterator[BinaryIO]:
    """A file to write that replaces `path` only once it is written whole and on disk."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # The rename itself is on disk once the folder is synced.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
