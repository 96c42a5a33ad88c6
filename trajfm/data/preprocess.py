"""Preprocess: clean, split, filter and resample the ingested points in parallel with Dask.

``preprocess(ingest_dir)`` runs ``trajfm.data.clean.clean_partition`` on partitions of
``<ingest_dir>/points.parquet`` that never cut a trajectory, and writes
``<root>/preprocess/<key>/``:

- ``points.parquet/``: resampled canonical points sorted by ``traj_id, t``, as a Parquet dataset
  of ``part-NNNNN.parquet`` files in that order (``pd.read_parquet`` on the folder reads the whole
  table in order; ``read_points`` does the same);
- ``quarantine.parquet/``: rejected input fixes with ``reason, detail``, the same way;
- ``manifest.json``: ``rows_in == rows_kept + rows_quarantined``, counts by reason, ``rows_out``,
  ``n_trajectories``, the parameters, the engine and the Dask scheduler used; ``files`` holds each
  table's row count and content hash (``store.frame_hash`` of the whole table as read back).

Partitioning: the ingest output is sorted by ``traj_id`` (its contract), so partition ``i`` takes
the trajectories that *start* in rows ``[i * N / P, (i + 1) * N / P)``: every trajectory lands
whole in one partition, no shuffle moves data, and one task per partition reads its own rows
(the Parquet row groups that hold them, one Arrow thread), cleans them and writes its own part
files; the parts in order are the sorted table. Only counts and per-row content hashes travel
back to the client, and a worker holds one partition at a time. ``kind``/``source`` categories
are the input's dictionaries (read first), so every part carries the same ones. When the input is not
sorted that way (``partition_by="mover"``, or a check fails) the stage falls back to Dask's
shuffle by ``obj_id`` (one mover -> one partition) and a sort on the client.

The same input gives the same tables and content hashes on the synchronous scheduler, a
LocalCluster of any size, or a remote scheduler; with the same ``npartitions`` the part files are
byte-identical too. ``key`` hashes the ingest output (its key and table hashes), the normalized
parameters and the engine; a complete directory for that key is returned without work.

Schedulers: ``"distributed"`` (default) starts a ``LocalCluster`` (processes, ``n_workers``, one
thread each, dashboard on a free port) and closes it afterwards, or connects to ``dask_address``
(``tcp://host:port``) when given (the data root must then be reachable from the workers at the
same path); LocalCluster workers start with :data:`WORKER_ENV` (malloc that reuses memory
instead of faulting in fresh pages per partition, one thread per numeric library); ``"threads"``
and ``"sync"`` use Dask's local schedulers (sync runs everything in this process: for tests and
debugging).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.clean import (
    ENGINES,
    ParamsLike,
    clean_partition,
    empty_clean_quarantine,
    merge_counts,
    normalize_params,
    params_to_json,
)

# The cluster helpers live in dask_runner; WORKER_ENV and local_cluster are re-exported from here.
from trajfm.data.dask_runner import WORKER_ENV as WORKER_ENV
from trajfm.data.dask_runner import Runner, dask_runner
from trajfm.data.dask_runner import local_cluster as local_cluster
from trajfm.data.schema import OPTIONAL_COLUMNS, empty_points, to_canonical
from trajfm.store import (
    SCHEMA_VERSION,
    StageWriter,
    data_root,
    is_complete,
    read_manifest,
    stable_hash,
    stage_dir,
)

STAGE = "preprocess"
PREPROCESS_VERSION = 2  # bump when cleaning behaviour or layout changes, so cached outputs are not reused
SCHEDULERS = ("distributed", "threads", "sync")
PARTITIONINGS = ("range", "mover")
ROWS_PER_PARTITION = 1_000_000  # default partition size (input fixes); at least one per worker
TABLES = ("points", "quarantine")
# Task-based shuffle (mover partitioning only): at this project's sizes it is faster than p2p.
SHUFFLE_METHOD = "tasks"


def preprocess_key(ingest_manifest: dict, params: ParamsLike = None, engine: str = "vectorized") -> str:
    """Cache key: the ingest output's key and table hashes, normalized parameters, engine, versions."""
    return stable_hash(
        {
            "stage": STAGE,
            "version": PREPROCESS_VERSION,
            "schema_version": SCHEMA_VERSION,
            "ingest": {"key": ingest_manifest.get("key"), "files": ingest_manifest.get("files")},
            "params": params_to_json(params),
            "engine": engine,
        }
    )


def _default_root(ingest_dir: Path) -> Path:
    """The data root the ingest directory lives under (``<root>/ingest/<key>``), else the default."""
    if ingest_dir.parent.name == "ingest":
        return data_root(ingest_dir.parent.parent)
    return data_root(None)


def preprocess(
    ingest_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    params: ParamsLike = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    scheduler: str = "distributed",
    npartitions: int | None = None,
    engine: str = "vectorized",
    partition_by: str = "range",
) -> Path:
    """Run the preprocess stage on an ingest output directory; returns the stage directory.

    ``root``: data root for the output (default: the root ``ingest_dir`` lives under).
    ``params``: cleaning parameters (``trajfm.data.clean.normalize_params``; per-kind defaults
    when ``None``). ``dask_address``: an existing Dask scheduler to use instead of a LocalCluster.
    ``n_workers``: LocalCluster worker processes. ``scheduler``: ``"distributed"``, ``"threads"``
    or ``"sync"``. ``npartitions``: partitions (default: one per worker, more when the input has
    over ``ROWS_PER_PARTITION`` fixes per worker); it changes the work split and the part files,
    never the tables. ``engine``: ``"vectorized"`` or ``"movingpandas"`` (the reference; slow).
    ``partition_by``: ``"range"`` (contiguous trajectories of the sorted input, no shuffle) or
    ``"mover"`` (Dask shuffle by ``obj_id``). A ``dask_address`` always means the distributed
    scheduler at that address, whatever ``scheduler`` says.
    """
    ingest_dir = Path(ingest_dir)
    if not is_complete(ingest_dir):
        raise FileNotFoundError(f"{ingest_dir} is not a complete stage directory (no manifest.json)")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if partition_by not in PARTITIONINGS:
        raise ValueError(f"partition_by must be one of {PARTITIONINGS}, got {partition_by!r}")
    ingest_manifest = read_manifest(ingest_dir)
    table = normalize_params(params)
    root = data_root(root) if root not in (None, "") else _default_root(ingest_dir)
    key = preprocess_key(ingest_manifest, table, engine)
    out = stage_dir(root, STAGE, key)
    if is_complete(out):
        return out

    points_path = ingest_dir / "points.parquet"
    started = time.perf_counter()
    with dask_runner(scheduler, dask_address, n_workers) as runner, StageWriter(root, STAGE, key) as writer:
        n_rows = _num_rows(points_path)
        parts = int(npartitions or default_npartitions(n_rows, runner.n_workers))
        native = native_intervals(points_path)
        job = _Job(str(points_path), table, engine, str(writer.path), native)
        written = None
        if partition_by == "range":
            written = _run_ranges(runner, job, n_rows, parts)
        if written is None:  # not sorted by trajectory: shuffle by mover, sort on the client
            written = _run_movers(runner, job, parts)
        counts, files = _summarize(written)
        if counts["rows_in"] != ingest_manifest.get("rows_kept", counts["rows_in"]):
            raise AssertionError(
                f"preprocess read {counts['rows_in']} rows, ingest kept {ingest_manifest.get('rows_kept')}"
            )
        writer.manifest["files"].update(files)
        writer.manifest.update(
            counts,
            params=params_to_json(table),
            engine=engine,
            dask=dict(runner.info, npartitions=parts, partition_by=written.partition_by, parts_written=written.n_parts),
            ingest={"dir": str(ingest_dir), "key": ingest_manifest.get("key")},
            native_interval_s=native,
            elapsed_s=round(time.perf_counter() - started, 3),
        )
    return writer.final


def native_intervals(points_path: str | os.PathLike) -> dict[str, float]:
    """Each source's native interval (median seconds between fixes) over the whole ingest output,
    so every partition resamples a source alike (``trajfm.data.sampling``). Reads three columns."""
    import pyarrow.parquet as pq

    from trajfm.data.sampling import source_native_interval_s

    df = pq.read_table(
        points_path, columns=["traj_id", "t", "source"], read_dictionary=["traj_id", "source"]
    ).to_pandas()
    return source_native_interval_s(df)


def default_npartitions(n_rows: int, n_workers: int) -> int:
    """One partition per worker, times enough to keep each under ``ROWS_PER_PARTITION`` fixes."""
    n_workers = max(1, int(n_workers))
    return n_workers * max(1, math.ceil(n_rows / (n_workers * ROWS_PER_PARTITION)))


def read_points(stage: str | os.PathLike, table: str = "points") -> pd.DataFrame:
    """A table of a preprocess directory (``points`` or ``quarantine``), all parts in order."""
    return pd.read_parquet(Path(stage) / f"{table}.parquet")


def read_preprocess_counts(path: str | os.PathLike) -> dict:
    """Row counts of a preprocess directory: rows_in, rows_kept, rows_quarantined, by reason, rows_out."""
    m = read_manifest(path)
    keys = ("rows_in", "rows_kept", "rows_quarantined", "quarantined_by_reason", "rows_out", "n_trajectories")
    return {k: m[k] for k in keys}


# ----------------------------------------------------------------------------------------------
# Work on the workers


@dataclass(frozen=True)
class _Job:
    points_path: str
    table: dict
    engine: str
    out_dir: str
    native_interval_s: dict | None = None  # source -> native interval (s), over the whole input


@dataclass
class _Part:
    """One partition's result, kept on its worker until written."""

    points: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict
    sorted_input: bool = True
    categories: dict = field(default_factory=dict)


@dataclass
class _Written:
    """Everything the client needs of the written parts (small: counts and row hashes)."""

    partition_by: str
    n_parts: int
    counts: list
    row_hashes: dict  # table -> list of uint64 arrays, in part order
    columns: dict  # table -> column names
    rows: dict  # table -> rows per part


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _read_trajectories(path: str, lo: int, hi: int) -> tuple[pd.DataFrame, bool]:
    """Rows of the trajectories that start in rows ``[lo, hi)`` of a Parquet file sorted by traj_id,
    and whether they are in traj_id order (when not, the caller must not rely on the ranges).

    Reads only the row groups that hold them, plus the row before ``lo`` (to see whether a
    trajectory starts at ``lo``) and the rows after ``hi`` up to the next trajectory's start.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    groups = _RowGroups(pq.ParquetFile(path))
    if lo >= hi or lo >= groups.n_rows:
        return groups.empty(), True
    groups.load_from(max(lo - 1, 0))
    start = 0 if lo == 0 else groups.first_change(lo, limit=hi)
    if start is None:  # no trajectory starts in [lo, hi): an earlier partition has them all
        return groups.empty(), True
    end = groups.n_rows if hi >= groups.n_rows else groups.first_change(hi, limit=groups.n_rows)
    part = groups.rows(start, groups.n_rows if end is None else end)
    ids = part.column("traj_id")
    in_order = len(part) < 2 or pc.all(pc.less_equal(ids.slice(0, len(part) - 1), ids.slice(1))).as_py()
    return part.to_pandas(), bool(in_order)


class _RowGroups:
    """The row groups of a Parquet file, loaded in order on demand; rows addressed absolutely."""

    def __init__(self, pf):
        self.pf = pf
        md = pf.metadata
        self.sizes = np.array([md.row_group(g).num_rows for g in range(md.num_row_groups)], dtype=np.int64)
        self.first = np.cumsum(self.sizes) - self.sizes
        self.n_rows = int(self.sizes.sum())
        self.tables: list = []
        self.base = self.loaded_end = 0
        self.next_group = 0

    def empty(self) -> pd.DataFrame:
        return self.pf.schema_arrow.empty_table().to_pandas()

    def load_from(self, row: int) -> None:
        self.next_group = int(np.searchsorted(self.first, row, side="right") - 1)
        self.base = self.loaded_end = int(self.first[self.next_group])

    def _load_next(self) -> bool:
        if self.next_group >= len(self.sizes):
            return False
        self.tables.append(self.pf.read_row_group(self.next_group, use_threads=False))
        self.loaded_end += int(self.sizes[self.next_group])
        self.next_group += 1
        return True

    def rows(self, start: int, end: int):
        import pyarrow as pa

        while self.loaded_end < end and self._load_next():
            pass
        return pa.concat_tables(self.tables).slice(start - self.base, end - start)

    def first_change(self, at: int, limit: int) -> int | None:
        """First row p in ``[at, limit)`` whose traj_id differs from row p - 1's (None: none)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        pos = at
        while pos < limit:
            while self.loaded_end <= pos and self._load_next():
                pass
            stop = min(self.loaded_end, limit)
            if stop <= pos:
                return None
            chunks = [c for t in self.tables for c in t.column("traj_id").chunks]
            ids = pa.chunked_array(chunks).slice(pos - 1 - self.base, stop - pos + 1)
            ids = ids.combine_chunks()
            change = np.flatnonzero(
                pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1)).to_numpy(zero_copy_only=False)
            )
            if len(change):
                return int(pos + change[0])
            pos = stop
            if pos < limit and not self._load_next():
                return None
        return None


def _clean_range(job: _Job, lo: int, hi: int) -> _Part:
    df, in_order = _read_trajectories(job.points_path, lo, hi)
    if not in_order:  # not sorted by traj_id: the client falls back to the shuffle by mover
        return _Part(df.iloc[:0], df.iloc[:0], {}, sorted_input=False)
    return _clean(df, job)


def _clean(df: pd.DataFrame, job: _Job) -> _Part:
    points, quarantine, counts = clean_partition(
        df, job.table, engine=job.engine, native_interval_s=job.native_interval_s
    )
    categories = {c: _category_values(df[c]) for c in ("kind", "source") if len(df)}
    return _Part(points, quarantine, counts, categories=categories)


def _category_values(col: pd.Series) -> set[str]:
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.dropna().unique()
    return set(map(str, values))


def _part_summary(part: _Part) -> dict:
    ids = part.points["traj_id"]
    return {
        "sorted_input": part.sorted_input,
        "categories": part.categories,
        "first": None if ids.empty else str(ids.iloc[0]),
        "last": None if ids.empty else str(ids.iloc[-1]),
        "q_first": None if part.quarantine.empty else str(part.quarantine["traj_id"].iloc[0]),
        "q_last": None if part.quarantine.empty else str(part.quarantine["traj_id"].iloc[-1]),
    }


def _write_part(part: _Part, index: int, out_dir: str, categories: dict, always: bool) -> dict:
    """Write a partition's tables as part files with the global categories; return their hashes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    result = {"counts": part.counts, "rows": {}, "row_hashes": {}, "columns": {}}
    for name, frame in (("points", part.points), ("quarantine", part.quarantine)):
        frame = _with_categories(frame, categories)
        result["columns"][name] = list(map(str, frame.columns))
        result["rows"][name] = int(len(frame))
        result["row_hashes"][name] = row_hashes(frame)
        if len(frame) or always:
            folder = Path(out_dir) / f"{name}.parquet"
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table, folder / f"part-{index:05d}.parquet", **_parquet_options(table.schema))
    return result


def _parquet_options(schema) -> dict:
    """Dictionary encoding for text columns only (floats and times are nearly all distinct: trying
    a dictionary on them costs time for nothing); byte-stream-split floats compress better; zstd
    (level 1) writes smaller files than snappy for less CPU on these tables."""
    import pyarrow as pa

    text = [
        f.name
        for f in schema
        if pa.types.is_dictionary(f.type) or pa.types.is_large_string(f.type) or pa.types.is_string(f.type)
    ]
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    return {
        "use_dictionary": text,
        "use_byte_stream_split": floats or False,
        "compression": "zstd",
        "compression_level": 1,
    }


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """``pd.util.hash_pandas_object(frame, index=False)`` as uint64, the way ``store.frame_hash``
    hashes rows, but each run of equal strings is hashed once (traj_id, obj_id come in runs)."""
    from pandas.core.util.hashing import combine_hash_arrays

    columns = [_column_hash(frame[c]) for c in frame.columns]
    return combine_hash_arrays(iter(columns), len(columns), len(frame)).astype(np.uint64, copy=False)


def _column_hash(col: pd.Series) -> np.ndarray:
    import pyarrow.compute as pc

    if isinstance(col.dtype, pd.StringDtype) and len(col) > 1 and not col.hasnans:
        arr = _arrow_of(col)
        change = np.r_[True, pc.not_equal(arr.slice(0, len(arr) - 1), arr.slice(1)).to_numpy(zero_copy_only=False)]
        starts = np.flatnonzero(change)
        if len(starts) * 4 < len(col):
            runs = pd.util.hash_pandas_object(col.iloc[starts], index=False).to_numpy(np.uint64)
            return np.repeat(runs, np.diff(np.append(starts, len(col))))
    return pd.util.hash_pandas_object(col, index=False).to_numpy(np.uint64)


def _arrow_of(col: pd.Series):
    import pyarrow as pa

    arr = col.array._pa_array if hasattr(col.array, "_pa_array") else pa.array(col.array)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _with_categories(frame: pd.DataFrame, categories: dict) -> pd.DataFrame:
    """The frame with ``kind``/``source`` on the stage-wide categories (same dictionary in every part)."""
    frame = frame.copy(deep=False)
    for col, cats in categories.items():
        if cats:
            frame[col] = frame[col].cat.set_categories(cats)
    return frame


def _run_ranges(runner: Runner, job: _Job, n_rows: int, parts: int) -> _Written | None:
    """Range partitions, each read, cleaned and written by one task on its worker (no barrier, one
    partition in memory per worker); None when the input turns out not to be sorted by trajectory."""
    bounds = [round(i * n_rows / parts) for i in range(parts + 1)]
    categories = _stage_categories(job.points_path)
    written = runner.gather(
        runner.map(_clean_write_range, [job] * parts, bounds[:-1], bounds[1:], range(parts), [categories] * parts)
    )
    if not all(w["sorted_input"] for w in written):
        return None
    # Parts must follow one another in table order (a traj_id that is a prefix of another can
    # break this: "a_5" > "a_1_0" although "a" < "a_1").
    for key_first, key_last in (("first", "last"), ("q_first", "q_last")):
        seq = [(w[key_first], w[key_last]) for w in written if w[key_first] is not None]
        if any(prev[1] >= nxt[0] for prev, nxt in zip(seq, seq[1:])):
            return None
    return _collect("range", written)


def _clean_write_range(job: _Job, lo: int, hi: int, index: int, categories: dict) -> dict:
    """One range partition: read its rows, clean, write its part files; returns counts, row
    hashes and the first/last ids (for the order check), never the rows."""
    part = _clean_range(job, lo, hi)
    summary = _part_summary(part)
    if not part.sorted_input:
        return summary
    for col, values in part.categories.items():
        unknown = values - set(categories.get(col, ()))
        if unknown:  # cannot happen: the categories come from every row group of the input
            raise RuntimeError(f"{col} values {sorted(unknown)} of rows {lo}-{hi} are not in the input's dictionaries")
    return {**summary, **_write_part(part, index, job.out_dir, categories, index == 0)}


def _stage_categories(path: str) -> dict:
    """Sorted ``kind``/``source`` values of the whole input: the union of its row groups'
    dictionaries (what the partitions' categoricals hold), read without decoding the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [c for c in ("kind", "source") if c in pq.ParquetFile(path).schema_arrow.names]
    table = pq.ParquetFile(path, read_dictionary=columns).read(columns=columns, use_threads=False)
    out = {}
    for col in columns:
        values: set[str] = set()
        for chunk in table.column(col).chunks:
            values |= {
                str(v)
                for v in (chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk).to_pylist()
                if v is not None
            }
        out[col] = sorted(values)
    return out


def _run_movers(runner: Runner, job: _Job, parts: int) -> _Written:
    """Shuffle by ``obj_id`` with Dask, clean each partition, sort on the client, write one part."""
    import dask.dataframe as dd

    for name in TABLES:  # drop anything a failed range attempt wrote
        folder = Path(job.out_dir) / f"{name}.parquet"
        if folder.exists():
            for f in folder.iterdir():
                f.unlink()
    ddf = dd.read_parquet(job.points_path)
    ddf = ddf.shuffle(on="obj_id", npartitions=parts, shuffle_method=SHUFFLE_METHOD)
    if runner.client is not None:
        futures = runner.client.compute(ddf.to_delayed())
        results = runner.gather(runner.client.map(_clean, futures, [job] * parts, pure=False))
    else:
        import dask

        frames = dask.compute(*ddf.to_delayed(), scheduler=runner.scheduler)
        results = [_clean(f, job) for f in frames]
    merged = _sort_on_client(results)
    categories = {c: sorted(set().union(*(r.categories.get(c, set()) for r in results))) for c in ("kind", "source")}
    return _collect("mover", [_write_part(merged, 0, job.out_dir, categories, True)])


def _sort_on_client(results: list[_Part]) -> _Part:
    """Concatenate partition results into table order: a stable sort by ``traj_id`` keeps each
    trajectory's rows in the order ``clean_partition`` gave them, as the range path does."""
    counts = merge_counts([r.counts for r in results])
    point_frames = [r.points for r in results if len(r.points)]
    points = to_canonical(pd.concat(point_frames, ignore_index=True)) if point_frames else to_canonical(empty_points())
    points = points.sort_values("traj_id", kind="stable", ignore_index=True)
    q_frames = [r.quarantine for r in results if len(r.quarantine)]
    if q_frames:
        quarantine = pd.concat(q_frames, ignore_index=True)
        reason, detail = quarantine.pop("reason"), quarantine.pop("detail")
        quarantine = to_canonical(quarantine)
        quarantine["reason"] = reason.astype("string").reset_index(drop=True)
        quarantine["detail"] = detail.astype("string").reset_index(drop=True)
        quarantine = quarantine.sort_values("traj_id", kind="stable", ignore_index=True)
    else:
        columns = results[0].quarantine.columns if results else []
        quarantine = empty_clean_quarantine([c for c in columns if c in OPTIONAL_COLUMNS])
    return _Part(points, quarantine, counts)


def _collect(partition_by: str, written: list[dict]) -> _Written:
    return _Written(
        partition_by=partition_by,
        n_parts=sum(1 for w in written if w["rows"]["points"] or w["rows"]["quarantine"]),
        counts=[w["counts"] for w in written],
        row_hashes={t: [w["row_hashes"][t] for w in written] for t in TABLES},
        columns={t: written[0]["columns"][t] for t in TABLES},
        rows={t: [w["rows"][t] for w in written] for t in TABLES},
    )


def table_hash(columns: list[str], row_hashes: list[np.ndarray]) -> str:
    """``store.frame_hash`` of the concatenation of parts, from each part's row hashes."""
    h = hashlib.sha256()
    h.update(",".join(map(str, columns)).encode())
    for part in row_hashes:
        h.update(np.ascontiguousarray(part, dtype=np.uint64).tobytes())
    return h.hexdigest()[:16]


def _summarize(written: _Written) -> tuple[dict, dict]:
    counts = merge_counts(written.counts)
    files = {
        t: {"rows": int(sum(written.rows[t])), "hash": table_hash(written.columns[t], written.row_hashes[t])}
        for t in TABLES
    }
    return counts, files


__all__ = ["preprocess", "preprocess_key", "read_points", "read_preprocess_counts", "default_npartitions", "SCHEDULERS"]
