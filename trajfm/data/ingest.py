"""Ingest: read raw source files into one canonical points table plus one quarantine table.

``ingest(sources, root, params)`` writes ``<root>/ingest/<key>/`` with

- ``points.parquet``: canonical points (``schema.to_canonical``: lon/lat WGS84 degrees, ``t``
  ``datetime64[ns, UTC]``), sorted by ``traj_id, t`` (ties keep file order);
- ``quarantine.parquet``: ``file, line, raw, reason, detail`` for every rejected row;
- ``manifest.json``: ``rows_read == rows_kept + rows_quarantined``, counts by reason and per file,
  the source fingerprints, the parameters, and the sources a directory scan skipped (and why).

Sources: files, directories (searched recursively for the formats' extensions), glob patterns
(``data/**/*.plt``) and fsspec URLs (``memory://...``, ``s3://...``, ``file://...``), in any mix.

Bounded memory: files are read in chunks (``chunk_rows`` lines); points are held in memory up to
``memory_rows`` rows, then spilled to disk as sorted runs and merged into ``points.parquet`` in
batches, so the output (byte-for-byte the same rows and content hash) does not depend on how
much fits in memory. Quarantined rows are written as they come.

``key`` hashes the files' fingerprints (path, size, modification time or ETag) and the
parameters that change the output (not the memory knobs), so re-ingesting unchanged files returns
the existing directory without reading anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.readers import READERS, SourceFile
from trajfm.data.readers.generic import check_mapping
from trajfm.data.readers.result import empty_quarantine
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS
from trajfm.data.readers.sources import Source, resolve_sources
from trajfm.data.readers.times import check_timezone
from trajfm.data.schema import OPTIONAL_COLUMNS, POINT_COLUMNS, empty_points, normalize_kinds, to_canonical
from trajfm.store import (
    SCHEMA_VERSION,
    StageWriter,
    data_root,
    file_fingerprint,
    frame_hash,
    is_complete,
    read_manifest,
    stable_hash,
    stage_dir,
)

STAGE = "ingest"
INGEST_VERSION = 2  # bump when reader behaviour changes, so cached outputs are not reused
# Parameters that shape the output (all in the cache key). None: the format's default / not used.
DEFAULT_PARAMS = {
    "kind": None,  # mover kind for every point (default: the format's, e.g. vessel for AIS)
    "format": None,  # force one reader for all files (default: detected per file)
    "source": None,  # the `source` tag (default: the format's, e.g. the file stem or "geolife")
    "columns": None,  # generic: canonical name -> file column
    "timezone": None,  # generic / tdrive: zone of naive times
    "time_format": None,  # generic: auto, epoch_s, epoch_ms, ... or a strftime pattern
    "delimiter": None,  # generic CSV
}
READER_OPTIONS = ("columns", "timezone", "time_format", "delimiter")
DEFAULT_MEMORY_ROWS = 2_000_000  # points held in memory before sorted runs are spilled to disk
# Memory knobs: accepted in params, never in the cache key (the output does not depend on them).
PERFORMANCE_PARAMS = {
    "chunk_rows": DEFAULT_CHUNK_ROWS,
    "chunk_bytes": DEFAULT_CHUNK_BYTES,
    "memory_rows": DEFAULT_MEMORY_ROWS,
}


@dataclass(frozen=True)
class IngestSummary:
    """Counts of one ingest run, read back from its manifest (all counts are rows = fixes)."""

    path: Path
    key: str
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    per_file: dict[str, dict]
    n_trajectories: int
    n_objects: int
    params: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    skipped_sources: list[dict] = field(default_factory=list)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "IngestSummary":
        m = read_manifest(path)
        return cls(
            path=Path(path),
            key=m["key"],
            rows_read=m["rows_read"],
            rows_kept=m["rows_kept"],
            rows_quarantined=m["rows_quarantined"],
            quarantined_by_reason=m["quarantined_by_reason"],
            per_file=m["per_file"],
            n_trajectories=m["n_trajectories"],
            n_objects=m["n_objects"],
            params=m["params"],
            sources=m["sources"],
            skipped_sources=m.get("skipped_sources", []),
        )


def read_ingest_summary(path: str | os.PathLike) -> IngestSummary:
    """Counts of the ingest output directory ``path``."""
    return IngestSummary.from_dir(path)


def load_points(path: str | os.PathLike) -> pd.DataFrame:
    """Canonical points of an ingest (or any stage) directory."""
    return pd.read_parquet(Path(path) / "points.parquet")


def load_quarantine(path: str | os.PathLike) -> pd.DataFrame:
    """Quarantine table of a stage directory."""
    return pd.read_parquet(Path(path) / "quarantine.parquet")


# ---------------------------------------------------------------------------------------------
# Sources


def fingerprint(file: SourceFile) -> dict:
    """Identity of an input file for cache keys: path, size and modification time (or ETag)."""
    if file.is_local:
        return file_fingerprint(file.url)
    import fsspec

    fs, path = fsspec.core.url_to_fs(file.url)
    info = fs.info(path)
    out = {"path": file.url, "size": info.get("size")}
    for k in ("mtime", "LastModified", "last_modified", "ETag", "etag", "md5", "generation", "created"):
        if k in info:
            out[k] = str(info[k])
    return out


# ---------------------------------------------------------------------------------------------
# Parameters and key


def _check_params(params: dict | None) -> dict:
    given = dict(params or {})
    unknown = set(given) - set(DEFAULT_PARAMS) - set(PERFORMANCE_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown ingest params {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS) + sorted(PERFORMANCE_PARAMS)}"
        )
    merged = {**DEFAULT_PARAMS, **PERFORMANCE_PARAMS, **given}
    if merged["format"] is not None and merged["format"] not in READERS:
        raise ValueError(f"unknown format {merged['format']!r}; known: {sorted(READERS)}")
    for name in PERFORMANCE_PARAMS:
        if not isinstance(merged[name], int) or merged[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {merged[name]!r}")
    check_timezone(merged["timezone"])
    if merged["format"] == "generic":
        check_mapping(merged["columns"], merged["kind"], merged["time_format"] or "auto")
    return merged


def _output_params(params: dict) -> dict:
    return {k: params[k] for k in DEFAULT_PARAMS}


def _reader_options(params: dict, source: Source) -> dict:
    """The options passed to the reader of ``source`` (``None`` ones are left to its defaults)."""
    options = {k: params[k] for k in READER_OPTIONS if params[k] is not None}
    try:
        READERS[source.format].check_options(options)
    except ValueError as exc:
        raise ValueError(f"{source.file}: {exc}") from None
    return options


def ingest_key(files: list[Source] | list[Path], params: dict) -> str:
    """Cache key: input file fingerprints, output-shaping parameters, reader and schema versions."""
    prints = [fingerprint(f.file if isinstance(f, Source) else SourceFile.of(f)) for f in files]
    formats = [f.format for f in files if isinstance(f, Source)]
    return stable_hash(
        {
            "stage": STAGE,
            "version": INGEST_VERSION,
            "schema_version": SCHEMA_VERSION,
            "files": prints,
            "formats": formats,
            "params": {k: params.get(k) for k in DEFAULT_PARAMS},
        }
    )


def planned_key(sources, params: dict | None = None) -> str:
    """The key ``ingest`` would use now: expands directories/globs and fingerprints every file,
    so a cache keyed on it misses when any file is added, removed or modified."""
    params = _check_params(params)
    files, _ = resolve_sources(sources, params["format"])
    return ingest_key(files, params)


# ---------------------------------------------------------------------------------------------
# The stage


def ingest(
    sources: list[str | os.PathLike] | str | os.PathLike,
    root: str | os.PathLike | None = None,
    params: dict | None = None,
) -> Path:
    """Read every source file and write the ``ingest`` stage; returns its directory.

    ``params`` (all optional): ``kind`` (mover kind of every point; default the format's),
    ``format`` (force one reader; default detected per file), ``source`` (the ``source`` tag),
    the generic reader's ``columns``, ``timezone``, ``time_format``, ``delimiter`` (``timezone``
    also for tdrive), and the memory knobs ``chunk_rows`` (lines read at once), ``chunk_bytes``,
    ``memory_rows`` (points held before spilling sorted runs to disk), which do not change the
    output or the key. A complete directory for the same key is returned as is.
    """
    params = _check_params(params)
    files, skipped = resolve_sources(sources, params["format"])
    options = {s.file.url: _reader_options(params, s) for s in files}  # fails before any reading
    root = data_root(root)
    key = ingest_key(files, params)
    out = stage_dir(root, STAGE, key)
    if is_complete(out):
        return out

    started = time.perf_counter()
    names = _display_names([s.file for s in files])
    per_file: dict[str, dict] = {}
    with StageWriter(root, STAGE, key) as writer:
        spill = writer.path / "_spill"
        points = _PointSink(spill, params["memory_rows"])
        quarantine = _QuarantineSink(writer.path / "quarantine.parquet")
        try:
            from trajfm.progress import track

            for s in track(files, desc="ingest", unit="file"):
                per_file[names[s.file.url]] = _read_one(s, params, options[s.file.url], points, quarantine)
            rows_read = sum(f["rows_read"] for f in per_file.values())
            points_info = points.finish(writer.path / "points.parquet")
            quarantine_info = quarantine.finish()
        finally:
            points.close()
            quarantine.close()
            shutil.rmtree(spill, ignore_errors=True)
        kept, quarantined = points_info["rows"], quarantine_info["rows"]
        if rows_read != kept + quarantined:
            raise AssertionError(f"ingest lost rows: read {rows_read}, kept {kept}, quarantined {quarantined}")
        elapsed = time.perf_counter() - started
        writer.manifest["files"]["points"] = {"rows": kept, "hash": points_info["hash"]}
        writer.manifest["files"]["quarantine"] = {"rows": quarantined, "hash": quarantine_info["hash"]}
        writer.manifest.update(
            rows_read=int(rows_read),
            rows_kept=int(kept),
            rows_quarantined=int(quarantined),
            quarantined_by_reason=quarantine_info["by_reason"],
            per_file=per_file,
            n_trajectories=points_info["n_trajectories"],
            n_objects=points_info["n_objects"],
            t_min=points_info["t_min"],
            t_max=points_info["t_max"],
            time_reversals=int(sum(f["time_reversals"] for f in per_file.values())),
            sources=[fingerprint(s.file) for s in files],
            skipped_sources=skipped,
            params=_output_params(params),
            performance={k: params[k] for k in PERFORMANCE_PARAMS} | {"spilled_runs": points_info["runs"]},
            elapsed_s=round(elapsed, 3),
            rows_per_s=int(rows_read / elapsed) if elapsed > 0 else None,
        )
    return writer.final


def _read_one(source: Source, params: dict, options: dict, points: "_PointSink", quarantine: "_QuarantineSink") -> dict:
    """Stream one file into the sinks; returns its counts."""
    fmt = READERS[source.format]
    counts = {"rows_read": 0, "rows_kept": 0, "rows_quarantined": 0, "time_reversals": 0}
    by_reason: dict[str, int] = {}
    notes: list[str] = []
    kinds: set[str] = set()
    for chunk in fmt.chunks(
        source.file,
        kind=params["kind"],
        source=params["source"],
        chunk_rows=params["chunk_rows"],
        chunk_bytes=params["chunk_bytes"],
        **options,
    ):
        points.add(chunk.points)
        quarantine.add(chunk.quarantine)
        counts["rows_read"] += chunk.rows_read
        counts["rows_kept"] += chunk.rows_kept
        counts["rows_quarantined"] += chunk.rows_quarantined
        counts["time_reversals"] += chunk.time_reversals
        for reason, n in chunk.quarantined_by_reason().items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        notes.extend(chunk.notes[: max(0, 20 - len(notes))])
        if len(chunk.points):
            kinds.update(str(k) for k in chunk.points["kind"].unique())
    return {
        "path": source.file.url,
        "format": source.format,
        **counts,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "kinds": sorted(kinds),
        "notes": notes,
    }


def _display_names(files: list[SourceFile]) -> dict[str, str]:
    """Per-file manifest keys: the file name, with as many parent folders as make it unique."""
    parts = {f.url: f.url.replace("\\", "/").rstrip("/").split("/") for f in files}
    depth = 1
    while True:
        names = {url: "/".join(p[-depth:]) for url, p in parts.items()}
        if len(set(names.values())) == len(names) or depth > max((len(p) for p in parts.values()), default=1):
            return names
        depth += 1


# ---------------------------------------------------------------------------------------------
# Sinks: where chunks go


def _hash_rows(h, df: pd.DataFrame) -> None:
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())


class _QuarantineSink:
    """Appends quarantine chunks to a Parquet file as they come (file order)."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = path
        self.template = empty_quarantine()
        self.schema = pa.Schema.from_pandas(self.template, preserve_index=False)
        self.writer = None
        self.rows = 0
        self.by_reason: dict[str, int] = {}
        self.hash = hashlib.sha256(",".join(self.template.columns).encode())

    def add(self, q: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not len(q):
            return
        q = q[self.template.columns].astype(self.template.dtypes.to_dict()).reset_index(drop=True)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(pa.Table.from_pandas(q, schema=self.schema, preserve_index=False))
        _hash_rows(self.hash, q)
        self.rows += len(q)
        for reason, n in q["reason"].value_counts().items():
            self.by_reason[str(reason)] = self.by_reason.get(str(reason), 0) + int(n)

    def finish(self) -> dict:
        if self.writer is None:
            self.template.to_parquet(self.path, index=False)
        self.close()
        return {
            "rows": self.rows,
            "hash": self.hash.hexdigest()[:16],
            "by_reason": dict(sorted(self.by_reason.items())),
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _PointSink:
    """Collects canonical point chunks and writes them sorted by ``traj_id, t`` (ties: file order).

    Up to ``memory_rows`` points stay in memory; beyond, each batch is sorted and spilled to disk
    as a run, and ``finish`` merges the runs batch by batch (a k-way merge: each step emits every
    buffered row not after the smallest of the buffers' last keys). Memory: about
    ``memory_rows`` points either way. Same rows, order, dtypes and content hash as sorting
    everything at once.
    """

    def __init__(self, spill_dir: Path, memory_rows: int):
        self.spill_dir = spill_dir
        self.memory_rows = memory_rows
        self.frames: list[pd.DataFrame] = []
        self.in_memory = 0
        self.runs: list[Path] = []
        self.seq = 0
        self.objects: set[str] = set()
        self.kinds: set[str] = set()
        self.sources: set[str] = set()
        self.optional: set[str] = set()
        self.t_min = self.t_max = None
        self.writer = None

    def add(self, points: pd.DataFrame) -> None:
        if not len(points):
            return
        missing = [c for c in POINT_COLUMNS if c not in points.columns]
        if missing:
            raise ValueError(f"a reader returned points without the canonical columns {missing}")
        # Kinds in one spelling ("Vessel", " vessel" -> "vessel"): they pick per-kind parameters.
        p = points.assign(
            _seq=np.arange(self.seq, self.seq + len(points), dtype=np.int64), kind=normalize_kinds(points["kind"])
        )
        self.seq += len(p)
        self.objects.update(p["obj_id"].dropna().unique().tolist())
        self.kinds.update(_values_of(p["kind"]))
        self.sources.update(_values_of(p["source"]))
        self.optional.update(c for c in OPTIONAL_COLUMNS if c in p.columns)
        t = pd.to_datetime(p["t"], utc=True)
        lo, hi = t.min(), t.max()
        self.t_min = lo if self.t_min is None else min(self.t_min, lo)
        self.t_max = hi if self.t_max is None else max(self.t_max, hi)
        self.frames.append(p)
        self.in_memory += len(p)
        if self.in_memory >= self.memory_rows:
            self._spill()

    def _sorted_frames(self) -> pd.DataFrame:
        df = pd.concat(self.frames, ignore_index=True) if len(self.frames) > 1 else self.frames[0]
        self.frames, self.in_memory = [], 0
        return df.sort_values(["traj_id", "t", "_seq"], kind="stable", ignore_index=True)

    def _spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        run = self.spill_dir / f"run{len(self.runs):05d}.parquet"
        df = self._sorted_frames()
        df.to_parquet(run, index=False, row_group_size=max(1_000, self.memory_rows // 16))
        self.runs.append(run)

    def _batch_rows(self) -> int:
        """Rows read from each run per merge step: the runs' buffers share about half the budget."""
        return max(1_000, self.memory_rows // (2 * max(len(self.runs), 1)))

    def _stats(self, n_trajectories: int, hash_hex: str, rows: int) -> dict:
        return {
            "rows": int(rows),
            "hash": hash_hex,
            "n_trajectories": int(n_trajectories),
            "n_objects": len(self.objects),
            "t_min": str(self.t_min) if self.t_min is not None else None,
            "t_max": str(self.t_max) if self.t_max is not None else None,
            "runs": len(self.runs),
        }

    def finish(self, path: Path) -> dict:
        if not self.runs:
            # Everything fitted in memory: one sort, one write (the common case).
            if self.frames:
                points = self._final_dtypes(self._sorted_frames())
            else:
                points = to_canonical(empty_points())
            points.to_parquet(path, index=False)
            return self._stats(points["traj_id"].nunique(), frame_hash(points), len(points))
        if self.frames:
            self._spill()
        return self._merge(path)

    def _final_dtypes(self, df: pd.DataFrame) -> pd.DataFrame:
        """Sorted points in the canonical dtypes, the same for every batch: categories are all the
        values seen, sorted; optional columns missing from a file are NaN (``mode``: NA)."""
        out = {
            "traj_id": _as_dtype(df["traj_id"], "string"),
            "obj_id": _as_dtype(df["obj_id"], "string"),
            "t": df["t"]
            if str(df["t"].dtype) == "datetime64[ns, UTC]"
            else pd.to_datetime(df["t"], utc=True).astype("datetime64[ns, UTC]"),
            "lon": _as_dtype(df["lon"], "float64"),
            "lat": _as_dtype(df["lat"], "float64"),
            "kind": _as_category(df["kind"], sorted(self.kinds)),
            "source": _as_category(df["source"], sorted(self.sources)),
        }
        for col in OPTIONAL_COLUMNS:
            if col in self.optional:
                dtype = "string" if col == "mode" else "float64"
                out[col] = (
                    _as_dtype(df[col], dtype)
                    if col in df.columns
                    else pd.Series(pd.NA if col == "mode" else np.nan, index=df.index, dtype=dtype)
                )
        return pd.DataFrame(out).reset_index(drop=True)

    def _merge(self, path: Path) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        batch = self._batch_rows()
        readers = [pq.ParquetFile(r).iter_batches(batch_size=batch) for r in self.runs]
        buffers: list[pd.DataFrame | None] = [None] * len(readers)
        h = None
        rows = 0
        n_traj = 0
        last_traj = None
        while True:
            for i, reader in enumerate(readers):
                while reader is not None and (buffers[i] is None or not len(buffers[i])):
                    nxt = next(reader, None)
                    if nxt is None:
                        readers[i] = reader = None
                        buffers[i] = None
                    else:
                        buffers[i] = nxt.to_pandas()
            live = [i for i, b in enumerate(buffers) if b is not None and len(b)]
            if not live:
                break
            bound = min(_last_key(buffers[i]) for i in live)
            pieces = []
            for i in live:
                n = _rows_up_to(buffers[i], bound)
                pieces.append(buffers[i].iloc[:n])
                buffers[i] = buffers[i].iloc[n:]
            merged = pd.concat(pieces, ignore_index=True).sort_values(["traj_id", "t", "_seq"], ignore_index=True)
            out = self._final_dtypes(merged)
            if self.writer is None:
                schema = pa.Schema.from_pandas(out, preserve_index=False)
                self.writer = pq.ParquetWriter(path, schema)
                h = hashlib.sha256(",".join(map(str, out.columns)).encode())
            self.writer.write_table(pa.Table.from_pandas(out, schema=self.writer.schema, preserve_index=False))
            _hash_rows(h, out)
            rows += len(out)
            ids = out["traj_id"].to_numpy(dtype=object)
            n_traj += int((ids[1:] != ids[:-1]).sum()) + int(ids[0] != last_traj)
            last_traj = ids[-1]
        self.close()
        return self._stats(n_traj, h.hexdigest()[:16], rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _values_of(column: pd.Series) -> list[str]:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(v) for v in column.cat.categories]
    return [str(v) for v in column.dropna().unique()]


def _as_dtype(column: pd.Series, dtype: str) -> pd.Series:
    return column if str(column.dtype) == dtype else column.astype(dtype)


def _as_category(column: pd.Series, categories: list[str]) -> pd.Categorical:
    """``column`` as a categorical over exactly ``categories`` (recoding codes, not strings)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.set_categories(categories).array
    return pd.Categorical(column.astype("string"), categories=categories)


def _last_key(df: pd.DataFrame) -> tuple:
    row = df.iloc[-1]
    return (row["traj_id"], pd.Timestamp(row["t"]).value, int(row["_seq"]))


def _rows_up_to(df: pd.DataFrame, bound: tuple) -> int:
    """Rows of a sorted buffer whose ``(traj_id, t, _seq)`` is not after ``bound`` (a prefix)."""
    tid = df["traj_id"].to_numpy(dtype=object)
    t = df["t"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    seq = df["_seq"].to_numpy()
    b_tid, b_t, b_seq = bound
    same = tid == b_tid
    le = (tid < b_tid) | (same & ((t < b_t) | ((t == b_t) & (seq <= b_seq))))
    return int(le.sum())


__all__ = [
    "DEFAULT_PARAMS",
    "IngestSummary",
    "ingest",
    "ingest_key",
    "load_points",
    "load_quarantine",
    "read_ingest_summary",
    "resolve_sources",
]
