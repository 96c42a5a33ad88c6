"""Fixed-length windows of encoded points, split chronologically, with train-only statistics.

Chronological split: fix times are cut at their ``train_frac`` and ``train_frac + val_frac``
quantiles; train is the earliest period, test the latest. ``split_by="global"`` (default) uses one
pair of cut times for all data, so a fix seen twice (the same vessel in two overlapping source
files) always lands in the same split; ``split_by="source"`` cuts each source's own span (every
source then contributes to test, but overlapping sources can leak across splits). Trajectories
that cross a cut are cut there too, so no window mixes periods. Each piece is encoded on its own
(its first point has zero displacement) and cut into windows of ``window`` points every
``stride`` points (``train_stride`` for the train split: overlapping training windows show every
point at several positions and patch phases, while validation and test windows stay disjoint);
a piece shorter than one window (but with at least ``min_points``) becomes one
window padded at the end, and ``mask`` marks the real points.

Normalization statistics come from the real (unpadded) points of the train split only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.schema import time_ns
from trajfm.features.encode import FEATURE_NAMES, N_FEATURES, encode_points
from trajfm.store import StageWriter, data_root, is_complete, read_manifest, stable_hash

SPLITS = ("train", "val", "test")


@dataclass
class WindowSet:
    """A batch of windows. Shapes: N windows of L points, F = len(FEATURE_NAMES)."""

    x: np.ndarray  # (N, L, F) float32 raw features (metres, log1p seconds, cycles)
    mask: np.ndarray  # (N, L) bool, True for real points; padding only at the end
    lon: np.ndarray  # (N, L) float64 WGS84 degrees
    lat: np.ndarray  # (N, L) float64 WGS84 degrees
    t_ns: np.ndarray  # (N, L) int64 nanoseconds since epoch, UTC
    traj_id: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.mask.sum())

    def save(self, path: Path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in ("x", "mask", "lon", "lat", "t_ns", "traj_id")})

    @classmethod
    def load(cls, path: Path) -> "WindowSet":
        with np.load(path, allow_pickle=False) as z:  # never unpickle
            return cls(**{k: z[k] for k in ("x", "mask", "lon", "lat", "t_ns", "traj_id")})

    def subset(self, index) -> "WindowSet":
        return WindowSet(
            self.x[index], self.mask[index], self.lon[index], self.lat[index], self.t_ns[index], self.traj_id[index]
        )

    @classmethod
    def empty(cls, window: int) -> "WindowSet":
        return cls(
            np.zeros((0, window, N_FEATURES), np.float32),
            np.zeros((0, window), bool),
            np.zeros((0, window)),
            np.zeros((0, window)),
            np.zeros((0, window), np.int64),
            np.zeros((0,), "<U1"),
        )


MAX_WINDOW_POINTS = 8192  # points per window, far above the presets' 64-point context; memory grows as windows x this


@dataclass
class WindowParams:
    window: int = 32  # points per window
    stride: int = 32  # points between window starts (= window: no overlap)
    train_stride: int | None = None  # train split only (e.g. 8: 4x overlapping windows); None = stride
    min_points: int = 12  # shortest piece kept (padded to a full window)
    train_frac: float = 0.7
    val_frac: float = 0.15
    split_by: str = "global"  # "global": one set of cut times; "source": cut each source's span
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("window", "stride", "train_stride", "min_points"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not float(value).is_integer()):
                raise ValueError(f"{name} must be a whole number of points, got {value!r}")
            if value is not None and value > MAX_WINDOW_POINTS:
                raise ValueError(
                    f"{name} {value:g} is above the limit of {MAX_WINDOW_POINTS} points per window "
                    f"(every window is held in memory at this length)"
                )
            if value is not None:
                object.__setattr__(self, name, int(value))
        if self.window < 1 or self.stride < 1 or (self.train_stride is not None and self.train_stride < 1):
            raise ValueError(
                f"window, stride and train_stride must be >= 1 (train_stride may be None), got "
                f"{self.window}, {self.stride}, {self.train_stride}"
            )


def split_periods(points: pd.DataFrame, train_frac: float, val_frac: float, split_by: str = "global") -> pd.Series:
    """Label each fix 'train' / 'val' / 'test' by time quantiles (of all fixes, or per source)."""
    if not 0 < train_frac < 1 or not 0 <= val_frac < 1 - train_frac:
        raise ValueError(f"need 0 < train_frac < 1 and 0 <= val_frac < 1 - train_frac, got {train_frac}, {val_frac}")
    t = time_ns(points["t"])  # exact int64 ns, never float seconds
    if split_by not in ("global", "source"):
        raise ValueError(f"split_by must be 'global' or 'source', got {split_by!r}")
    source = points["source"].astype(str).to_numpy() if split_by == "source" else np.zeros(len(points), dtype=object)
    period = np.full(len(points), "train", dtype=object)
    for src in np.unique(source):
        rows = np.flatnonzero(source == src)
        ts = t[rows]
        cut1 = np.quantile(ts, train_frac, method="lower")
        cut2 = np.quantile(ts, train_frac + val_frac, method="lower")
        period[rows[ts > cut1]] = "val"
        period[rows[ts > cut2]] = "test"
    return pd.Series(period, index=points.index)


def windows_of_piece(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    if n <= window:
        return [(0, n)]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:  # cover the tail too
        starts.append(n - window)
    return [(s, s + window) for s in starts]


def build_windows(points: pd.DataFrame, params: WindowParams) -> tuple[dict[str, WindowSet], dict]:
    """Cut processed points (canonical schema) into windows per split; returns sets and counts."""
    points = points.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
    period = split_periods(points, params.train_frac, params.val_frac, params.split_by)
    buckets: dict[str, list] = {s: [] for s in SPLITS}
    counts = {s: {"pieces": 0, "pieces_too_short": 0, "points_too_short": 0, "windows": 0} for s in SPLITS}
    L = params.window
    all_lon = points["lon"].to_numpy(np.float64)
    all_lat = points["lat"].to_numpy(np.float64)
    all_t = time_ns(points["t"])
    traj = points["traj_id"].astype(str).to_numpy()
    per = period.to_numpy()
    # Rows are sorted by (traj_id, t), so each (trajectory, period) piece is a contiguous run.
    starts = np.flatnonzero(np.r_[True, (traj[1:] != traj[:-1]) | (per[1:] != per[:-1])])
    ends = np.r_[starts[1:], len(points)]
    for s0, e0 in zip(starts, ends):
        split = per[s0]
        c = counts[split]
        c["pieces"] += 1
        n = e0 - s0
        if n < params.min_points:
            c["pieces_too_short"] += 1
            c["points_too_short"] += int(n)
            continue
        lon, lat, t_ns = all_lon[s0:e0], all_lat[s0:e0], all_t[s0:e0]
        feats = encode_points(lon, lat, t_ns)
        stride = params.train_stride if split == "train" and params.train_stride else params.stride
        for a, b in windows_of_piece(int(n), L, stride):
            buckets[split].append((feats[a:b], lon[a:b], lat[a:b], t_ns[a:b], traj[s0]))
            c["windows"] += 1
    sets = {s: stack_windows(buckets[s], L) for s in SPLITS}
    return sets, counts


def stack_windows(items: list, L: int) -> WindowSet:
    """Pad ``(features, lon, lat, t_ns, traj_id)`` pieces of at most ``L`` points into a WindowSet."""
    if not items:
        return WindowSet.empty(L)
    n = len(items)
    ws = WindowSet(
        x=np.zeros((n, L, N_FEATURES), np.float32),
        mask=np.zeros((n, L), bool),
        lon=np.zeros((n, L)),
        lat=np.zeros((n, L)),
        t_ns=np.zeros((n, L), np.int64),
        traj_id=np.array([it[4] for it in items]),
    )
    for i, (f, lo, la, t, _) in enumerate(items):
        k = len(f)
        ws.x[i, :k], ws.mask[i, :k], ws.lon[i, :k], ws.lat[i, :k], ws.t_ns[i, :k] = f, True, lo, la, t
    return ws


def normalization_stats(train: WindowSet) -> dict:
    """Mean/std of each feature over real train points only (padding never counts).

    Cycle features are left as they are (mean 0, std 1); a constant feature gets std 1.
    """
    real = train.x[train.mask].astype(np.float64)  # (n_points, F)
    if len(real) == 0:
        raise ValueError("the train split has no points: cannot compute normalization statistics")
    mean, std = real.mean(axis=0), real.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    n_cont = 3
    mean[n_cont:], std[n_cont:] = 0.0, 1.0
    return {"features": FEATURE_NAMES, "mean": mean.tolist(), "std": std.tolist(), "n_points": int(len(real))}


def make_features(preprocess_dir: str | Path, root=None, params: WindowParams | None = None) -> Path:
    """Stage ``features``: windows + stats from a preprocess output; returns the stage directory."""
    params = params or WindowParams()
    root = data_root(root)
    upstream = read_manifest(preprocess_dir)
    key = stable_hash({"upstream": upstream["files"], "params": asdict(params), "v": 1})
    out = root / "features" / key
    if is_complete(out):
        return out
    points = pd.read_parquet(Path(preprocess_dir) / "points.parquet")
    if len(points) == 0:
        raise ValueError(
            f"{preprocess_dir} has 0 points: nothing to cut into windows (every input row was quarantined? see its "
            "quarantine table)"
        )
    sets, counts = build_windows(points, params)
    if len(sets["train"]) == 0:
        raise ValueError(f"no training windows from {preprocess_dir}: {counts['train']}")
    stats = normalization_stats(sets["train"])
    with StageWriter(root, "features", key) as w:
        for split, ws in sets.items():
            ws.save(w.path / f"{split}.npz")
        w.write_json("stats", stats)
        w.manifest.update(
            params=asdict(params),
            upstream=str(preprocess_dir),
            counts=counts,
            windows={s: len(ws) for s, ws in sets.items()},
            points={s: ws.n_points for s, ws in sets.items()},
        )
    return out


def load_features(features_dir: str | Path) -> tuple[dict[str, WindowSet], dict]:
    """(window sets by split, normalization stats) from a features stage directory."""
    d = Path(features_dir)
    sets = {s: WindowSet.load(d / f"{s}.npz") for s in SPLITS}
    return sets, json.loads((d / "stats.json").read_text())
