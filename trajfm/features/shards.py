"""Feature shards: the windows of a whole corpus as bounded-size files, written source by source
and trajectory chunk by trajectory chunk, so memory stays bounded whatever the corpus size.

A shard is a ``WindowSet`` ``.npz`` (``WindowSet.save``; read back with ``allow_pickle=False``)
of at most ``max_windows`` windows of one split of one source. The windows are exactly those
``build_windows`` makes from the same points with ``split_by="source"`` (each source's fix
times cut at its own ``train_frac`` / ``train_frac + val_frac`` quantiles: a corpus spans
1851-2024, one global cut would put whole sources in one split), from the same encoding
(``encode_points``) and the same cutting (``windows_of_piece``), so a streamed trainer sees the
windows an in-memory trainer would (tests/test_pretrain_shards.py checks it on real data).

Sampling rates: with ``coarsen=(1, 2, 4)`` each chunk of trajectories is also cut at 2x and 4x
its native interval first (``trajfm.data.sampling.coarsen_views``: every m-th fix, never finer
than the input), each view a trajectory of its own (``<traj_id>@x<m>``), so the model meets
every source at several sampling intervals.

The stage's ``manifest.json`` lists every shard (split, source, windows, points, sha256, bytes)
and per source: points read, points in shards, points in pieces too short to keep (the
"quarantine" of this step, with its reason), windows per split. Points are accounted once:
``view_points == points_in_shards + points_too_short`` for every source (a window that overlaps
the previous one of its piece counts only its new points), where ``view_points`` are the points
of all views (``points_in`` without coarsening); per multiplier, ``coarsen_views``' own counts
(``rows_in == rows_kept + rows_skipped + rows_in_short_views``). ``stats.json`` holds the
normalization statistics of the train split only, over all sources, merged chunk by chunk
(Chan et al.'s parallel mean/variance) instead of from all windows in memory; they equal
``normalization_stats`` of the concatenated train windows up to float rounding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.schema import time_ns
from trajfm.features.encode import FEATURE_NAMES, N_FEATURES, encode_points
from trajfm.features.windows import SPLITS, WindowParams, WindowSet, stack_windows, windows_of_piece
from trajfm.store import file_sha256

SHARD_STAGE = "shards"
CHUNK_ROWS = 500_000  # points read per chunk of a source (whole trajectories; a longer one is read whole)
N_CONT = 3  # continuous features normalized (dx_m, dy_m, log_dt_s); the cycles stay as they are


@dataclass
class ShardParams:
    windows: WindowParams = field(default_factory=lambda: WindowParams(split_by="source"))
    max_windows: int = 4096  # windows per shard: 4096 x 64 points x 7 features float32 ~ 7 MB of x
    coarsen: tuple[int, ...] = (1,)  # sampling-interval multipliers (1 = native; a corpus' ``coarsen``)

    def __post_init__(self) -> None:
        if isinstance(self.windows, dict):
            self.windows = WindowParams(**self.windows)
        self.coarsen = tuple(int(m) for m in self.coarsen)
        if not self.coarsen or any(m < 1 for m in self.coarsen) or len(set(self.coarsen)) != len(self.coarsen):
            raise ValueError(f"coarsen must be distinct whole multipliers >= 1, got {self.coarsen}")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")
        if self.windows.split_by != "source":
            raise ValueError("shards cut each source's own time span: windows.split_by must be 'source'")


class RunningStats:
    """Per-feature count, mean and sum of squared deviations (float64), merged batch by batch."""

    def __init__(self, n_features: int = N_FEATURES):
        self.n = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def add(self, values: np.ndarray) -> None:
        """Merge ``values`` (n, F) into the running statistics (Chan, Golub & LeVeque)."""
        values = np.asarray(values, dtype=np.float64)
        nb = len(values)
        if nb == 0:
            return
        mb = values.mean(axis=0)
        m2b = ((values - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def result(self) -> dict:
        """The ``normalization_stats`` dict: population std, std 1 for constant features, cycles 0/1."""
        if self.n == 0:
            raise ValueError("the train split has no points: cannot compute normalization statistics")
        mean, std = self.mean.copy(), np.sqrt(self.m2 / self.n)
        std = np.where(std < 1e-6, 1.0, std)
        mean[N_CONT:], std[N_CONT:] = 0.0, 1.0
        return {"features": FEATURE_NAMES, "mean": mean.tolist(), "std": std.tolist(), "n_points": int(self.n)}


def source_cut_times(t_ns: np.ndarray, params: WindowParams) -> tuple[int, int]:
    """(train/val cut, val/test cut) in int64 ns: ``split_periods``'s quantiles of one source."""
    if not 0 < params.train_frac < 1 or not 0 <= params.val_frac < 1 - params.train_frac:
        raise ValueError(
            f"need 0 < train_frac < 1 and 0 <= val_frac < 1 - train_frac, got {params.train_frac}, {params.val_frac}"
        )
    cut1 = np.quantile(t_ns, params.train_frac, method="lower")
    cut2 = np.quantile(t_ns, params.train_frac + params.val_frac, method="lower")
    return int(cut1), int(cut2)


def read_chunks(path: str | Path, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Processed points of one Parquet file, or of a Parquet dataset directory (the preprocess
    stage's partitions: no trajectory spans two), in chunks of whole trajectories. A file is
    read in batches of ``rows`` (sorted by ``traj_id, t``, as every stage writes it; a trajectory
    cut by a read boundary is carried into the next chunk); a partition file is read whole
    (bounded by the preprocess stage's partition size) and sorted."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        for part in sorted(path.rglob("*.parquet")):
            df = pq.read_table(part, columns=["traj_id", "t", "lon", "lat"]).to_pandas()
            df = df.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
            yield from _whole_trajectories(df, rows)
        return
    pf = pq.ParquetFile(path)
    carry: pd.DataFrame | None = None
    for batch in pf.iter_batches(batch_size=rows, columns=["traj_id", "t", "lon", "lat"]):
        df = batch.to_pandas()
        if carry is not None and len(carry):
            df = pd.concat([carry, df], ignore_index=True)
        if len(df) == 0:
            continue
        traj = df["traj_id"].astype(str).to_numpy()
        last = traj[-1]
        first_of_last = int(np.flatnonzero(traj != last)[-1] + 1) if (traj != last).any() else 0
        carry = df.iloc[first_of_last:].reset_index(drop=True)
        if first_of_last:
            yield df.iloc[:first_of_last].reset_index(drop=True)
    if carry is not None and len(carry):
        yield carry


def _whole_trajectories(df: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    """Slices of about ``rows`` rows of a sorted frame, cut only between trajectories."""
    if len(df) == 0:
        return
    traj = df["traj_id"].astype(str).to_numpy()
    starts = np.flatnonzero(np.r_[True, traj[1:] != traj[:-1]])
    cut, begin = [], 0
    for s0 in starts[1:]:
        if s0 - begin >= rows:
            cut.append(s0)
            begin = s0
    for a, b in zip([0, *cut], [*cut, len(df)]):
        yield df.iloc[a:b].reset_index(drop=True)


def chunk_windows(points: pd.DataFrame, cuts: tuple[int, int], params: WindowParams) -> tuple[dict, dict, dict]:
    """Windows by split of a chunk of whole trajectories, with the source's ``cuts``; the loop of
    ``build_windows`` (same pieces, encoding and windows). Returns (items by split, counts), items
    being ``stack_windows`` tuples, counts per split: pieces, pieces_too_short, points_too_short,
    points_in_windows (each point once), windows; and per split the points each window adds to
    its piece (the overlap with the previous window of the piece counted once)."""
    points = points.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
    t_all = time_ns(points["t"])
    per = np.where(t_all > cuts[1], "test", np.where(t_all > cuts[0], "val", "train")).astype(object)
    lon_all = points["lon"].to_numpy(np.float64)
    lat_all = points["lat"].to_numpy(np.float64)
    traj = points["traj_id"].astype(str).to_numpy()
    items: dict[str, list] = {s: [] for s in SPLITS}
    new: dict[str, list] = {s: [] for s in SPLITS}
    counts = {
        s: {"pieces": 0, "pieces_too_short": 0, "points_too_short": 0, "points_in_windows": 0, "windows": 0}
        for s in SPLITS
    }
    if len(points) == 0:
        return items, counts, new
    starts = np.flatnonzero(np.r_[True, (traj[1:] != traj[:-1]) | (per[1:] != per[:-1])])
    ends = np.r_[starts[1:], len(points)]
    for s0, e0 in zip(starts, ends):
        split, n = per[s0], int(e0 - s0)
        c = counts[split]
        c["pieces"] += 1
        if n < params.min_points:
            c["pieces_too_short"] += 1
            c["points_too_short"] += n
            continue
        lon, lat, t = lon_all[s0:e0], lat_all[s0:e0], t_all[s0:e0]
        feats = encode_points(lon, lat, t)
        stride = params.train_stride if split == "train" and params.train_stride else params.stride
        covered = 0
        for a, b in windows_of_piece(n, params.window, stride):
            items[split].append((feats[a:b], lon[a:b], lat[a:b], t[a:b], traj[s0]))
            c["windows"] += 1
            new[split].append(b - max(a, covered))
            c["points_in_windows"] += new[split][-1]
            covered = b
    return items, counts, new


class _ShardSink:
    """Buffers one (source, split)'s windows and writes a shard each ``max_windows``."""

    def __init__(self, out: Path, source: str, split: str, params: ShardParams):
        self.out, self.source, self.split, self.params = out, source, split, params
        self.items: list = []
        self.new_points = 0
        self.shards: list[dict] = []

    def add(self, items: list, new_points: list[int]) -> None:
        for it, p in zip(items, new_points):
            self.items.append(it)
            self.new_points += p
            if len(self.items) >= self.params.max_windows:
                self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        ws = stack_windows(self.items, self.params.windows.window)
        rel = Path(self.split) / f"{_safe(self.source)}-{len(self.shards):05d}.npz"
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        ws.save(self.out / rel)
        self.shards.append(
            {
                "path": rel.as_posix(),
                "split": self.split,
                "source": self.source,
                "windows": len(ws),
                "points": int(self.new_points),
                "window_points": ws.n_points,
                "sha256": file_sha256(self.out / rel),
                "bytes": (self.out / rel).stat().st_size,
            }
        )
        self.items, self.new_points = [], 0


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_shards(
    sources: Iterable[tuple[str, str | Path]],
    out: str | Path,
    params: ShardParams | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> dict:
    """Write the shards of ``sources`` (``(name, processed points Parquet)`` pairs) into ``out``;
    returns the manifest (also written to ``out/shards.json``) and writes ``out/stats.json``.

    Memory: one chunk of a source plus at most ``max_windows`` windows per split."""
    import pyarrow.parquet as pq

    params = params or ShardParams()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = RunningStats()
    shards: list[dict] = []
    per_source: dict[str, dict] = {}
    for name, path in sources:
        if name in per_source:
            raise ValueError(f"source {name!r} given twice")
        t = time_ns(pq.read_table(path, columns=["t"]).column("t").to_pandas())  # a file or a dataset directory
        if len(t) == 0:
            per_source[name] = _source_counts()
            continue
        per_source[name] = _shard_source(name, path, t, out, params, stats, shards, chunk_rows)
    manifest = {
        "params": _params_json(params),
        "shards": shards,
        "sources": per_source,
        "windows": {s: sum(sh["windows"] for sh in shards if sh["split"] == s) for s in SPLITS},
        "points_in": sum(v["points_in"] for v in per_source.values()),
        "view_points": sum(v["view_points"] for v in per_source.values()),
        "points_in_shards": sum(v["points_in_shards"] for v in per_source.values()),
        "points_too_short": sum(v["points_too_short"] for v in per_source.values()),
    }
    manifest["sha256"] = hashlib.sha256("".join(sh["sha256"] for sh in shards).encode()).hexdigest()
    if manifest["windows"]["train"] == 0:
        raise ValueError(f"no training windows in any source: {per_source}")
    (out / "stats.json").write_text(json.dumps(stats.result(), indent=2))
    (out / "shards.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _source_counts() -> dict:
    """A source's point, piece and window counts, all zero."""
    return {
        "points_in": 0,
        "view_points": 0,
        "points_in_shards": 0,
        "points_too_short": 0,
        "pieces": 0,
        "pieces_too_short": 0,
        "windows": {s: 0 for s in SPLITS},
        "views": {},
    }


def _shard_source(name: str, path, t, out: Path, params: ShardParams, stats, shards: list, chunk_rows: int) -> dict:
    """Cut one source (``t`` its times, ns) chunk by chunk into its shards (appended to ``shards``);
    the train windows' features go into ``stats``. Returns the source's counts."""
    cuts = source_cut_times(t, params.windows)
    sinks = {s: _ShardSink(out, name, s, params) for s in SPLITS}
    acc = _source_counts()
    for chunk in read_chunks(path, chunk_rows):
        acc["points_in"] += len(chunk)
        chunk = _views(chunk, params, acc["views"])
        acc["view_points"] += len(chunk)
        items, counts, new = chunk_windows(chunk, cuts, params.windows)
        for s in SPLITS:
            c = counts[s]
            acc["pieces"] += c["pieces"]
            acc["pieces_too_short"] += c["pieces_too_short"]
            acc["points_too_short"] += c["points_too_short"]
            acc["points_in_shards"] += c["points_in_windows"]
            acc["windows"][s] += c["windows"]
            sinks[s].add(items[s], new[s])
            if s == "train":
                for f, *_ in items[s]:
                    stats.add(f)
    for sink in sinks.values():
        sink.flush()
        shards.extend(sink.shards)
    if acc["view_points"] != acc["points_in_shards"] + acc["points_too_short"]:
        raise AssertionError(f"source {name}: {acc} does not add up")  # a bug here, never bad input
    acc["cuts_ns"] = list(cuts)
    acc["quarantine_reason"] = f"piece shorter than min_points={params.windows.min_points}"
    return acc


def _params_json(params: ShardParams) -> dict:
    return {"windows": asdict(params.windows), "max_windows": params.max_windows, "coarsen": list(params.coarsen)}


def _views(chunk: pd.DataFrame, params: ShardParams, counts: dict) -> pd.DataFrame:
    """The chunk's trajectories at each multiplier of ``params.coarsen`` (native only: as is);
    ``counts[m]`` accumulates ``coarsen_views``' accounting."""
    if params.coarsen == (1,):
        return chunk
    from trajfm.data.sampling import coarsen_views

    views, c = coarsen_views(chunk, params.coarsen, min_points=1)  # short views are counted by the windows step
    for m, cm in c.items():
        total = counts.setdefault(str(m), {k: 0 for k in cm})
        for k, v in cm.items():
            total[k] += v
    return views.drop(columns="multiplier")


def make_shards(sources: list[tuple[str, str]], root=None, params: ShardParams | None = None) -> Path:
    """Stage ``shards``: ``write_shards`` into ``<root>/shards/<key>/`` (key: the sources' file
    fingerprints and the params), atomically; an identical request returns the finished stage."""
    from trajfm.store import StageWriter, data_root, file_fingerprint, is_complete, stable_hash

    params = params or ShardParams()
    root = data_root(root)
    key = stable_hash(
        {"sources": [[n, file_fingerprint(p)] for n, p in sources], "params": _params_json(params), "v": 1}
    )
    final = root / SHARD_STAGE / key
    if is_complete(final):
        return final
    with StageWriter(root, SHARD_STAGE, key) as w:
        manifest = write_shards(sources, w.path, params)
        w.manifest.update({k: v for k, v in manifest.items() if k != "shards"}, n_shards=len(manifest["shards"]))
    return final


def load_manifest(shards_dir: str | Path) -> dict:
    """The shard list and counts of a shards directory (``shards.json``)."""
    return json.loads((Path(shards_dir) / "shards.json").read_text())


def load_shard(shards_dir: str | Path, shard: dict, verify: bool = False) -> WindowSet:
    """One shard's windows; ``verify`` checks its sha256 against the manifest first."""
    path = Path(shards_dir) / shard["path"]
    if verify and file_sha256(path) != shard["sha256"]:
        raise ValueError(f"shard {path} does not match its manifest hash (corrupt or replaced)")
    return WindowSet.load(path)


def sample_split(shards_dir: str | Path, split: str, min_points: int, max_windows: int = 4000) -> WindowSet:
    """Up to ``max_windows`` windows of ``split`` with at least ``min_points`` real points, shard
    by shard in manifest order (memory bounded by ``max_windows``, deterministic)."""
    parts, n = [], 0
    for sh in load_manifest(shards_dir)["shards"]:
        if sh["split"] != split or n >= max_windows:
            continue
        ws = load_shard(shards_dir, sh)
        ws = ws.subset(np.flatnonzero(ws.mask.sum(axis=1) >= min_points)[: max_windows - n])
        if len(ws):
            parts.append(ws)
            n += len(ws)
    if not parts:
        raise ValueError(f"no {split} window of {shards_dir} has {min_points} real points")
    return WindowSet(
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "mask", "lon", "lat", "t_ns", "traj_id"))
    )


def load_split(shards_dir: str | Path, split: str) -> WindowSet:
    """All windows of one split, in manifest order (small corpora and tests only: in memory)."""
    parts = [load_shard(shards_dir, sh) for sh in load_manifest(shards_dir)["shards"] if sh["split"] == split]
    if not parts:
        return WindowSet.empty(load_manifest(shards_dir)["params"]["windows"]["window"])
    return WindowSet(
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "mask", "lon", "lat", "t_ns", "traj_id"))
    )
