"""Per-mover cleaning, splitting and resampling of canonical points, vectorized over a whole frame.

Steps, in order, with MovingPandas names and semantics (MovingPandas 0.23 is the reference; the
default ``engine="vectorized"`` is the fast path: numpy over all trajectories of a frame at once,
no Python loop per fix; ``engine="movingpandas"`` runs the same steps through MovingPandas itself,
see ``trajfm.data.mpd_engine``):

1. **Duplicates**: a fix with the same ``traj_id``, time and position as an earlier one is
   ``duplicate_fix``; of several fixes at the same time with different positions the first (in
   ``lon, lat`` order, so the choice is deterministic) is kept, the others are ``duplicate_time``.
2. **Speed outliers** (``OutlierCleaner(traj).clean(v_max=...)``): walking the track in time, a
   fix whose great-circle speed from the *previous kept* fix exceeds ``v_max_mps`` is dropped and
   the previous kept fix stays the reference, exactly as MovingPandas' loop does. Unlike
   MovingPandas, a track is never restored when it drops to one fix (the short filter removes it).
3. **Gap split** (``ObservationGapSplitter(traj).split(gap=...)``): a new segment starts where
   the time since the previous kept fix is greater than ``max_gap_s``. A segment of two or more
   fixes that never moves (0 m long) is ``short_trajectory``, as MovingPandas drops it.
4. **Stop split** (``StopSplitter(traj).split(max_diameter=, min_duration=)``, only for kinds
   with ``split_stops=True``): a stop is a run of fixes staying within
   ``stop_max_diameter_m`` metres for at least ``stop_min_duration_s`` (MovingPandas' measure,
   ``trajfm.data.stops``). The stop's first fix ends the segment before it, its last fix starts
   the next one, and the fixes in between are quarantined as ``stop``. Pieces of 0 m are
   ``short_trajectory``, as in MovingPandas.
5. **Minimum length**: a piece with fewer than ``min_points`` fixes, lasting less than
   ``min_duration_s``, or giving fewer than 2 resampled fixes is quarantined
   (``short_trajectory``) fix by fix.
6. **Generalization** (``MinTimeDeltaGeneralizer(traj).generalize(tolerance=...)``, only when
   ``generalize_s > 0``): of each kept piece, the first fix, every fix at least ``generalize_s``
   after the previous kept one, and the last fix are kept; the others are ``generalized``.
7. **Resampling** to ``interval_s``: fixes at every multiple of the interval since the Unix epoch
   inside the piece's time span, lon/lat interpolated linearly in time between the two
   surrounding fixes (over one step between fixes that is the local metric frame to well under
   a metre; longitude across the antimeridian the short way round); MovingPandas'
   ``get_position_at`` on the same time grid in the other engine.

Cost (one core, the real AIS + GeoLife set): steps 1-3, 5 and 7 run at about 1-2 million fixes
per second; the stop split, when switched on, at about 60 thousand (it measures undecided
windows exactly with shapely; still ~30x MovingPandas' detector).

Pieces are numbered per input trajectory in time order, counting every piece (gap segments, and
the pieces a stop split makes of them, kept or not): ``traj_id = f"{traj_id}_{k}"``. Without stop
splitting, ``k`` is MovingPandas' gap-segment index.

Accounting: ``rows_in == rows_kept + rows_quarantined`` where a kept row is an input fix inside an
output piece (after generalization); ``rows_out`` (resampled fixes) is counted separately.
Distances are haversine metres (``trajfm.geo``) except the stop measure (geodesic, as
MovingPandas); times are int64 nanoseconds until a difference is taken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Union

import numpy as np
import pandas as pd

from trajfm.data.sampling import DEFAULT_UPSAMPLE_TOLERANCE, effective_interval_ns, median_step_ns
from trajfm.data.schema import OPTIONAL_COLUMNS, POINT_COLUMNS, REASONS, empty_points, normalize_kind, to_canonical
from trajfm.geo import haversine_m

MAX_INTERVAL_S = 365.0 * 86400.0  # one year: a resampling interval beyond it is a typo (and overflows ns)

NS_PER_S = 1_000_000_000
ENGINES = ("vectorized", "movingpandas")
CLEAN_REASONS = ("duplicate_fix", "duplicate_time", "speed_outlier", "stop", "generalized", "short_trajectory")
KNOWN_REASONS = dict(REASONS)
# Reason codes as small integers while the arrays are built (0: the row is kept so far).
_REASON_LIST = ("", "missing_value", "nonfinite_coord", *CLEAN_REASONS, "unknown_kind")
_CODE = {r: i for i, r in enumerate(_REASON_LIST) if r}
_SEARCH_WINDOW = 32  # fixes examined per pass while looking for the end of an outlier run


@dataclass(frozen=True)
class PreprocessParams:
    """Cleaning thresholds for one kind of mover.

    ``v_max_mps``: speed above which a fix is an outlier, metres per second.
    ``max_gap_s``: observation gap (seconds) above which a track is split.
    ``interval_s``: resampling interval, seconds.
    ``min_points``: fewest original fixes a piece needs to be kept.
    ``min_duration_s``: shortest piece duration kept, seconds.
    ``split_stops``: split at stops (off by default: it costs far more than the other steps).
    ``stop_max_diameter_m``: a stop stays within this diameter, metres (MovingPandas' measure).
    ``stop_min_duration_s``: and lasts at least this long, seconds.
    ``generalize_s``: keep fixes at least this many seconds apart before resampling (0: off).
    ``upsample_tolerance``: a source whose native interval (median seconds between its fixes) is
    more than this times ``interval_s`` is resampled at the smallest multiple of ``interval_s``
    at or above its native interval instead, never interpolated finer (``trajfm.data.sampling``;
    ``inf``: always ``interval_s``; ``1``: never finer than native).
    """

    v_max_mps: float = 30.0
    max_gap_s: float = 1800.0
    interval_s: float = 60.0
    min_points: int = 10
    min_duration_s: float = 600.0
    split_stops: bool = False
    stop_max_diameter_m: float = 100.0
    stop_min_duration_s: float = 600.0
    generalize_s: float = 0.0
    upsample_tolerance: float = DEFAULT_UPSAMPLE_TOLERANCE

    def __post_init__(self) -> None:
        for name in ("v_max_mps", "max_gap_s", "interval_s", "stop_max_diameter_m", "stop_min_duration_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_points < 1 or self.min_duration_s < 0 or self.generalize_s < 0:
            raise ValueError(f"min_points must be >= 1, min_duration_s and generalize_s >= 0, got {self}")
        if not np.isfinite(float(self.interval_s)) or self.interval_s > MAX_INTERVAL_S:
            raise ValueError(
                f"interval_s must be a finite number of seconds <= {MAX_INTERVAL_S:g}, got {self.interval_s}"
            )
        if round(self.interval_s * NS_PER_S) < 1:
            raise ValueError(f"interval_s {self.interval_s} is below a nanosecond")
        if not float(self.upsample_tolerance) >= 1.0:
            raise ValueError(f"upsample_tolerance must be >= 1 (inf: always interval_s), got {self.upsample_tolerance}")

    @classmethod
    def for_kind(cls, kind: str, **overrides) -> "PreprocessParams":
        """Defaults for ``kind`` (see ``KIND_DEFAULTS``) with ``overrides`` applied."""
        if kind not in KIND_DEFAULTS:
            raise ValueError(f"no default preprocessing parameters for kind {kind!r}; known: {sorted(KIND_DEFAULTS)}")
        return replace(KIND_DEFAULTS[kind], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# Defaults per mover kind. Speeds are generous ceilings for the kind (a fix implying more is a
# position error); gaps and intervals follow each kind's usual sampling. Stop thresholds (used
# when split_stops is switched on) follow what "not going anywhere" looks like for the kind.
KIND_DEFAULTS: dict[str, PreprocessParams] = {
    # AIS: ~60-180 s reports; 30 m/s = 58 kn, above all but a few fast craft. A vessel at anchor
    # swings on its chain within ~250 m; half an hour there is a stop, not slow steaming.
    "vessel": PreprocessParams(
        v_max_mps=30.0,
        max_gap_s=1800.0,
        interval_s=60.0,
        min_points=10,
        min_duration_s=600.0,
        stop_max_diameter_m=250.0,
        stop_min_duration_s=1800.0,
    ),
    # Phone GPS of people (GeoLife-like, 1-5 s): 50 m/s keeps trips on trains and highways. 5 min
    # within 100 m (GPS noise indoors included) is a stay, not a walk.
    "person": PreprocessParams(
        v_max_mps=50.0,
        max_gap_s=300.0,
        interval_s=10.0,
        min_points=10,
        min_duration_s=120.0,
        stop_max_diameter_m=100.0,
        stop_min_duration_s=300.0,
    ),
    # Cars and taxis (15-180 s fixes): 60 m/s = 216 km/h. Parked or waiting 5 min within 100 m.
    "vehicle": PreprocessParams(
        v_max_mps=60.0,
        max_gap_s=600.0,
        interval_s=30.0,
        min_points=10,
        min_duration_s=300.0,
        stop_max_diameter_m=100.0,
        stop_min_duration_s=300.0,
    ),
    # City buses (10-60 s AVL fixes): 35 m/s = 126 km/h. Dwell at a stop is < 1 min; a 10 min
    # layover at a terminus is a stop.
    "bus": PreprocessParams(
        v_max_mps=35.0,
        max_gap_s=600.0,
        interval_s=30.0,
        min_points=10,
        min_duration_s=300.0,
        stop_max_diameter_m=100.0,
        stop_min_duration_s=600.0,
    ),
    # GPS-tagged birds (minutes to hours between fixes): 40 m/s = 144 km/h ground speed; roosting
    # for 3 h within 500 m is a stop.
    "bird": PreprocessParams(
        v_max_mps=40.0,
        max_gap_s=21600.0,
        interval_s=900.0,
        min_points=10,
        min_duration_s=3600.0,
        stop_max_diameter_m=500.0,
        stop_min_duration_s=10800.0,
    ),
    # ADS-B aircraft (1-60 s): 350 m/s covers jets with a strong tail wind; 15 min within 500 m
    # is parked at a stand.
    "aircraft": PreprocessParams(
        v_max_mps=350.0,
        max_gap_s=600.0,
        interval_s=30.0,
        min_points=10,
        min_duration_s=300.0,
        stop_max_diameter_m=500.0,
        stop_min_duration_s=900.0,
    ),
    # Kinds of the pre-training corpus (../shared/data/corpus, docs/corpus.md). Each interval is
    # the kind's usual native sampling or coarser; a source sampled more coarsely than its kind's
    # interval is resampled at its own rate (trajfm.data.sampling), never interpolated finer.
    # Trams (GTFS-RT / AVL, 5-15 s): line speeds top out near 70 km/h, 25 m/s = 90 km/h. A tram
    # at a platform dwells < 1 min; 10 min within 100 m is a layover at the terminus.
    "tram": PreprocessParams(
        v_max_mps=25.0,
        max_gap_s=600.0,
        interval_s=30.0,
        min_points=10,
        min_duration_s=300.0,
        stop_max_diameter_m=100.0,
        stop_min_duration_s=600.0,
    ),
    # Trolleybuses (AVL, 5-20 s): tied to the overhead wires, limited to about 65 km/h; 30 m/s
    # = 108 km/h still flags the jumps. Stops and layovers as buses.
    "trolleybus": PreprocessParams(
        v_max_mps=30.0,
        max_gap_s=600.0,
        interval_s=30.0,
        min_points=10,
        min_duration_s=300.0,
        stop_max_diameter_m=100.0,
        stop_min_duration_s=600.0,
    ),
    # Tropical/extratropical cyclones (best-track analyses, 6 h synoptic fixes): storms translate
    # at up to ~25 m/s in extratropical transition; 40 m/s is never a real track. 12 h without a
    # fix splits (a skipped synoptic time is normal, two are not). Many systems live 1-3 days, so
    # 5 fixes over 24 h is enough. A storm stalled within 50 km for 2 days is a stop.
    "storm": PreprocessParams(
        v_max_mps=40.0,
        max_gap_s=43200.0,
        interval_s=21600.0,
        min_points=5,
        min_duration_s=86400.0,
        stop_max_diameter_m=50000.0,
        stop_min_duration_s=172800.0,
    ),
    # Icebergs (daily scatterometer positions; days are missing when no pass saw them): they
    # drift at < 1 m/s; 3 m/s (260 km/day) is a mislocated berg. 3 days without a fix splits;
    # 10 fixes over 10 days make a track. Grounded within 10 km for 30 days is a stop.
    "ice": PreprocessParams(
        v_max_mps=3.0,
        max_gap_s=259200.0,
        interval_s=86400.0,
        min_points=10,
        min_duration_s=864000.0,
        stop_max_diameter_m=10000.0,
        stop_min_duration_s=2592000.0,
    ),
    # Ocean and sea-ice drifters, wave buoys (Iridium/GPS, 30 min): surface currents and ice drift
    # stay under ~2.5 m/s; 5 m/s flags fixes on a ship deck or bad fixes. 6 h of silence splits
    # (lost messages). Frozen in / grounded within 500 m for a day is a stop.
    "drifter": PreprocessParams(
        v_max_mps=5.0,
        max_gap_s=21600.0,
        interval_s=1800.0,
        min_points=10,
        min_duration_s=21600.0,
        stop_max_diameter_m=500.0,
        stop_min_duration_s=86400.0,
    ),
    # Mammals on land and at sea (GPS/Argos collars and tags: fishers 2 min, buffalo 1 h, deer
    # 6 h, seals tens of minutes): buffalo and deer sprint at ~15 m/s, seals swim < 3 m/s, so
    # 20 m/s marks position errors (Argos' km-scale ones included). Collars are duty-cycled: 12 h
    # without a fix splits. Bedding or hauled out within 50 m for 2 h is a stop.
    "animal": PreprocessParams(
        v_max_mps=20.0,
        max_gap_s=43200.0,
        interval_s=600.0,
        min_points=10,
        min_duration_s=7200.0,
        stop_max_diameter_m=50.0,
        stop_min_duration_s=7200.0,
    ),
    # Bats (GPS tags, minutes apart at night): fast fliers, ~15 m/s commuting; 25 m/s flags
    # errors. They roost all day: 3 h without a fix splits the nights' foraging trips. A night
    # roost is 1 h within 100 m.
    "bat": PreprocessParams(
        v_max_mps=25.0,
        max_gap_s=10800.0,
        interval_s=600.0,
        min_points=10,
        min_duration_s=3600.0,
        stop_max_diameter_m=100.0,
        stop_min_duration_s=3600.0,
    ),
}

ParamsLike = Union[None, PreprocessParams, Mapping[str, Union[PreprocessParams, Mapping, float, int]]]
_FIELD_NAMES = {f.name for f in fields(PreprocessParams)}


def normalize_params(params: ParamsLike = None) -> dict[str, PreprocessParams]:
    """Turn any accepted ``params`` into a table kind -> ``PreprocessParams``.

    - ``None``: ``KIND_DEFAULTS``.
    - a ``PreprocessParams``: used for every kind (key ``"*"``).
    - a mapping of field names to values (``{"interval_s": 30}``, ``{"split_stops": True}``):
      overrides on every kind's defaults.
    - a mapping of kinds to ``PreprocessParams`` or to field overrides
      (``{"vessel": {"v_max_mps": 25}}``); kinds not named keep their defaults, unless a ``"*"``
      entry is given, which then applies to every kind not named.

    Normalizing a normalized table returns it unchanged.
    """
    if params is None:
        return dict(KIND_DEFAULTS)
    if isinstance(params, PreprocessParams):
        return {"*": params}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be None, PreprocessParams or a mapping, got {type(params).__name__}")
    if params and set(params) <= _FIELD_NAMES:
        return {kind: replace(p, **params) for kind, p in KIND_DEFAULTS.items()}
    # With a "*" entry, kinds not named use it; otherwise they keep their defaults.
    table = {} if "*" in params else dict(KIND_DEFAULTS)
    for kind, value in params.items():
        if isinstance(value, PreprocessParams):
            table[kind] = value
        elif isinstance(value, Mapping):
            unknown = set(value) - _FIELD_NAMES
            if unknown:
                raise ValueError(
                    f"unknown parameter(s) {sorted(unknown)} for kind {kind!r}; known: {sorted(_FIELD_NAMES)}"
                )
            table[kind] = replace(KIND_DEFAULTS.get(kind, PreprocessParams()), **value)
        else:
            raise ValueError(f"params[{kind!r}] must be PreprocessParams or a mapping, got {value!r}")
    return table


def params_to_json(params: ParamsLike = None) -> dict[str, dict]:
    """JSON form of the normalized parameter table (manifests, cache keys)."""
    return {kind: p.to_dict() for kind, p in sorted(normalize_params(params).items())}


def params_for_kind(table: Mapping[str, PreprocessParams], kind: str) -> PreprocessParams:
    found = find_kind_params(table, kind)
    if found is None:
        raise ValueError(f"no preprocessing parameters for kind {kind!r}; pass params for it (known: {sorted(table)})")
    return found


def find_kind_params(table: Mapping[str, PreprocessParams], kind: str) -> PreprocessParams | None:
    """The parameters for ``kind``: its entry, else its canonical spelling's (``"Vessel"`` finds
    ``"vessel"``, see ``schema.normalize_kind``), else the ``"*"`` entry; ``None`` when none applies."""
    if kind in table:
        return table[kind]
    wanted = normalize_kind(kind)
    for name, params in table.items():
        if name != "*" and normalize_kind(name) == wanted:
            return params
    return table.get("*")


# ----------------------------------------------------------------------------------------------
# Output frames


def empty_clean_quarantine(columns: list[str] | None = None) -> pd.DataFrame:
    """Zero-row quarantine of the clean step: the input columns plus ``reason, detail``."""
    base = to_canonical(empty_points())
    for col in columns or []:
        if col in OPTIONAL_COLUMNS and col not in base:
            base[col] = pd.Series(dtype="string" if col == "mode" else "float64")
    base["reason"] = pd.Series(dtype="string")
    base["detail"] = pd.Series(dtype="string")
    return base


def empty_counts() -> dict:
    return {
        "rows_in": 0,
        "rows_kept": 0,
        "rows_quarantined": 0,
        "quarantined_by_reason": {r: 0 for r in CLEAN_REASONS},
        "rows_out": 0,
        "n_trajectories": 0,
        "n_segments": 0,
        "n_input_trajectories": 0,
        "n_native_interval": 0,  # kept pieces resampled at their native interval, not the kind's
    }


def merge_counts(parts: list[dict]) -> dict:
    """Sum the counts of several ``clean_partition`` calls."""
    total = empty_counts()
    for c in parts:
        for key, value in c.items():
            if key == "quarantined_by_reason":
                for reason, n in value.items():
                    total[key][reason] = total[key].get(reason, 0) + int(n)
            else:
                total[key] += int(value)
    return total


# ----------------------------------------------------------------------------------------------
# The steps, each on numpy arrays sorted by (trajectory, time)


def _group_bounds(new_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(new_group)) if len(starts) else starts.copy()
    return starts, ends


def _ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], end[i])`` without a Python loop."""
    n = np.asarray(end, dtype=np.int64) - start
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(n) - n
    return np.arange(total, dtype=np.int64) - np.repeat(offsets - start, n)


def _speed_mps(lon1, lat1, t1, lon2, lat2, t2) -> np.ndarray:
    dt_s = (np.asarray(t2) - np.asarray(t1)) / NS_PER_S
    with np.errstate(divide="ignore", invalid="ignore"):
        return haversine_m(lon1, lat1, lon2, lat2) / dt_s


def speed_outliers(
    t_ns: np.ndarray, lon: np.ndarray, lat: np.ndarray, new_group: np.ndarray, v_max_mps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MovingPandas ``OutlierCleaner`` semantics, vectorized across trajectories.

    Inputs are sorted by (trajectory, time) with strictly increasing time inside a trajectory;
    ``new_group`` marks each trajectory's first row; ``v_max_mps`` is per row. Returns
    ``(outlier, speed_mps)``: the rows dropped, and for them the speed from the previous kept fix.

    MovingPandas walks each track keeping an anchor (the last kept fix); a fix faster than
    ``v_max`` from the anchor is dropped. Between outliers the anchor simply follows the track, so
    a *run* of outliers can only start at a *flagged* step (previous fix -> fix faster than
    ``v_max``), and it ends at the first later fix reachable from the fix before the run. So:

    1. for every flagged step at once, find where a run starting there would end (searching
       ``_SEARCH_WINDOW`` fixes at a time, all runs together);
    2. the runs that really happen are a chain per track: the first flagged step, then the first
       flagged step after the previous run's end, and so on (pointer chasing over flagged steps);
    3. the fixes inside those runs are the outliers.
    """
    n = len(t_ns)
    outlier = np.zeros(n, dtype=bool)
    speed = np.full(n, np.nan)
    if n < 2:
        return outlier, speed
    step = np.zeros(n)
    step[1:] = _speed_mps(lon[:-1], lat[:-1], t_ns[:-1], lon[1:], lat[1:], t_ns[1:])
    step[new_group] = 0.0
    flagged = np.flatnonzero(step > v_max_mps)
    if len(flagged) == 0:
        return outlier, speed

    starts, ends = _group_bounds(new_group)
    group = np.searchsorted(starts, flagged, side="right") - 1
    end = ends[group]
    anchor = flagged - 1
    vmax = v_max_mps[flagged]
    # 1. Where would a run starting at each flagged step end? (end of track: never reachable)
    close = end.copy()
    pos = flagged.copy()
    window = np.arange(_SEARCH_WINDOW)
    open_runs = np.arange(len(flagged))
    while len(open_runs):
        cand = pos[open_runs, None] + window[None, :]
        valid = cand < end[open_runs, None]
        cand_c = np.minimum(cand, n - 1)
        a = anchor[open_runs, None]
        v = _speed_mps(lon[a], lat[a], t_ns[a], lon[cand_c], lat[cand_c], t_ns[cand_c])
        reachable = valid & (v <= vmax[open_runs, None])
        hit = reachable.any(axis=1)
        close[open_runs[hit]] = cand[hit, reachable[hit].argmax(axis=1)]
        pos[open_runs] += _SEARCH_WINDOW
        open_runs = open_runs[~hit & (pos[open_runs] < end[open_runs])]
    # 2. The runs that happen: from each track's first flagged step, the next flagged after the end.
    nxt = np.searchsorted(flagged, close, side="right")
    nxt_ok = nxt < len(flagged)
    nxt_ok[nxt_ok] = flagged[nxt[nxt_ok]] < end[nxt_ok]
    first = np.r_[True, group[1:] != group[:-1]]
    happens = np.zeros(len(flagged), dtype=bool)
    cur = np.flatnonzero(first)
    while len(cur):
        happens[cur] = True
        cur = nxt[cur[nxt_ok[cur]]]
    # 3. Outliers: each run's fixes, with their speed from the fix before the run.
    k = np.flatnonzero(happens)
    rows = _ranges(flagged[k], close[k])
    a = np.repeat(anchor[k], close[k] - flagged[k])
    outlier[rows] = True
    speed[rows] = _speed_mps(lon[a], lat[a], t_ns[a], lon[rows], lat[rows], t_ns[rows])
    return outlier, speed


def time_grid(t_first: np.ndarray, t_last: np.ndarray, interval_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid times (int64 ns) at multiples of ``interval_ns`` inside each ``[t_first, t_last]``.

    Returns ``(piece, grid_t)``: the piece index of each grid time and the time, pieces in the
    order given, times increasing inside a piece.
    """
    g0 = -(-t_first // interval_ns) * interval_ns  # first grid time >= t_first
    g1 = (t_last // interval_ns) * interval_ns  # last grid time <= t_last
    n_grid = np.where(g1 >= g0, (g1 - g0) // interval_ns + 1, 0)
    piece = np.repeat(np.arange(len(t_first)), n_grid)
    first_out = np.cumsum(n_grid) - n_grid
    grid_t = g0[piece] + (np.arange(len(piece)) - first_out[piece]) * interval_ns[piece]
    return piece, grid_t


def interpolate_at(
    t_ns: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    piece: np.ndarray,
    grid_t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of each piece at ``grid_t``, linear in time between the surrounding fixes.

    Piece ``p`` is rows ``start[p]:end[p]`` (two or more) of ``t_ns``, strictly increasing inside
    a piece; pieces do not overlap; each ``grid_t`` lies inside its piece's time span. Longitude
    is interpolated the short way across the antimeridian.
    """
    if len(piece) == 0:
        return np.zeros(0), np.zeros(0)
    # The fix at or before each grid time inside its own piece: one sort of fixes and grid times
    # by (piece, time), fixes first at equal times. (Laying pieces end to end on one int64 time
    # axis overflowed for sources spanning centuries of piece durations, e.g. 46 years of icebergs.)
    n_rows = end - start
    contiguous = bool((start[1:] == end[:-1]).all())
    rows = None if contiguous else _ranges(start, end)
    t_rows = t_ns[start[0] : end[-1]] if contiguous else t_ns[rows]
    row_piece = np.repeat(np.arange(len(start)), n_rows)
    n_fix = len(t_rows)
    flag = np.concatenate([np.zeros(n_fix, np.int8), np.ones(len(grid_t), np.int8)])
    order = np.lexsort((flag, np.concatenate([t_rows, grid_t]), np.concatenate([row_piece, piece])))
    fixes_so_far = np.cumsum(flag[order] == 0)
    at_grid = flag[order] == 1
    k = np.empty(len(grid_t), np.int64)
    k[order[at_grid] - n_fix] = fixes_so_far[at_grid] - 1
    # k is the fix at or before the grid time; at a piece's last fix, step back one.
    k = np.minimum(k, (np.cumsum(n_rows) - 2)[piece])
    i = k + start[0] if contiguous else rows[k]
    j = i + 1 if contiguous else rows[k + 1]
    t_i = t_ns[i]
    w = (grid_t - t_i) / (t_ns[j] - t_i)
    lon_i, lat_i = lon[i], lat[i]
    dlon = lon[j] - lon_i
    wrap = np.abs(dlon) > 180.0  # the short way across the antimeridian
    if wrap.any():
        dlon[wrap] -= np.copysign(360.0, dlon[wrap])
    out_lon = lon_i + w * dlon
    if wrap.any():
        out = np.abs(out_lon) > 180.0
        out_lon[out] -= np.copysign(360.0, out_lon[out])
    out_lat = lat_i + w * (lat[j] - lat_i)
    return out_lon, out_lat


def resample_to_interval(
    t_ns: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    interval_ns: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample segments to fixes at multiples of their interval (ns since the epoch).

    Segment ``s`` is rows ``seg_start[s]:seg_end[s]`` of time-sorted ``t_ns`` (int64 UTC ns) and
    ``lon, lat`` (degrees). Returns ``(segment, t_ns, lon, lat)`` of the resampled fixes: every
    ``m * interval_ns[s]`` within the segment's [first, last] time, lon/lat linear in time.
    Used by ``trajfm.forecaster.resample_points``.
    """
    seg, grid_t = time_grid(t_ns[seg_start], t_ns[seg_end - 1], interval_ns)
    out_lon, out_lat = interpolate_at(t_ns, lon, lat, seg_start, seg_end, seg, grid_t)
    return seg, grid_t, out_lon, out_lat


def min_time_delta(t_ns: np.ndarray, start: np.ndarray, end: np.ndarray, tolerance_ns: np.ndarray) -> np.ndarray:
    """MovingPandas ``MinTimeDeltaGeneralizer`` on pieces ``start[p]:end[p]`` of sorted ``t_ns``.

    Keeps each piece's first fix, then each fix at least ``tolerance_ns[p]`` after the previous
    kept one, and the last fix. Returns the keep mask. One pass per kept fix of the longest
    piece, each pass over all pieces at once.
    """
    keep = np.zeros(len(t_ns), dtype=bool)
    if len(start) == 0:
        return keep
    n_rows = end - start
    piece_of_row = np.repeat(np.arange(len(start)), n_rows)
    span = t_ns[end - 1] - t_ns[start] + 1
    base = np.cumsum(span + tolerance_ns) - (span + tolerance_ns)
    rows = _ranges(start, end)
    v = np.empty(len(t_ns), dtype=np.int64)
    v[rows] = t_ns[rows] - t_ns[start][piece_of_row] + base[piece_of_row]
    # The next kept fix after a kept fix i is the first fix of its piece at >= t_i + tolerance.
    nxt = np.full(len(t_ns), -1, dtype=np.int64)
    nxt[rows] = rows[
        np.searchsorted(v[rows], v[rows] + tolerance_ns[piece_of_row], side="left").clip(max=len(rows) - 1)
    ]
    cur, stop = start.copy(), end.copy()
    while len(cur):
        keep[cur] = True
        cur_next = nxt[cur]
        alive = (cur_next > cur) & (cur_next < stop)
        cur, stop = cur_next[alive], stop[alive]
    keep[end - 1] = True
    return keep


# ----------------------------------------------------------------------------------------------
# Splitting into pieces (the engine-specific part)


@dataclass
class Pieces:
    """Where the speed, gap and stop steps put each fix (indices are rows of the sorted arrays).

    ``drop``: reason code per row (0: in a piece); ``notes``: ``(rows, details)`` pairs explaining
    dropped rows; ``rows``: rows in pieces, in order; piece ``p`` is ``rows[start[p]:end[p]]``,
    numbered ``k[p]`` within its trajectory; ``n_segments``: gap segments (before stops).
    """

    drop: np.ndarray
    rows: np.ndarray
    start: np.ndarray
    end: np.ndarray
    k: np.ndarray
    n_segments: int
    notes: list = field(default_factory=list)


def split_vectorized(t, lon, lat, codes, kinds, kind_params) -> Pieces:
    """Speed outliers, gap split and stop split on arrays sorted by (trajectory, time)."""
    n = len(t)
    drop = np.zeros(n, dtype=np.int8)
    notes: list = []
    new_traj = np.ones(n, dtype=bool)
    new_traj[1:] = codes[1:] != codes[:-1]
    v_max = _per_row(kind_params, kinds, "v_max_mps")
    outlier, speed = speed_outliers(t, lon, lat, new_traj, v_max)
    if outlier.any():
        drop[outlier] = _CODE["speed_outlier"]
        notes.append((np.flatnonzero(outlier), _speed_notes(speed[outlier], v_max[outlier])))

    # Gap split: a new segment where the time since the previous kept fix exceeds max_gap_s.
    keep = np.flatnonzero(~outlier)
    tk, xk, yk, ck = t[keep], lon[keep], lat[keep], codes[keep]
    first_of_traj = np.ones(len(ck), dtype=bool)
    first_of_traj[1:] = ck[1:] != ck[:-1]
    max_gap_ns = np.round(_per_row(kind_params, kinds[keep], "max_gap_s") * NS_PER_S).astype(np.int64)
    new_seg = first_of_traj.copy()
    new_seg[1:] |= (tk[1:] - tk[:-1]) > max_gap_ns[1:]
    seg_start, seg_end = _group_bounds(new_seg)
    seg_len = seg_end - seg_start
    # MovingPandas' splitters drop segments of 0 m: two or more fixes, all at one position.
    moves = _moves(xk, yk)
    still = _zero_length(xk, yk, seg_start, seg_end, moves) & (seg_len >= 2)
    seg_kind = kinds[keep][seg_start]

    # Stop split of the segments whose kind asks for it.
    stop_first = stop_last = np.zeros(0, np.int64)
    split = _per_row(kind_params, seg_kind, "split_stops").astype(bool) & ~still & (seg_len >= 2)
    if split.any():
        from trajfm.data.stops import detect_stops

        stop_first, stop_last = detect_stops(
            tk,
            xk,
            yk,
            seg_start[split],
            seg_end[split],
            _per_row(kind_params, seg_kind[split], "stop_max_diameter_m"),
            np.round(_per_row(kind_params, seg_kind[split], "stop_min_duration_s") * NS_PER_S).astype(np.int64),
        )
    # Pieces of the segments: [start, first stop fix], [stop's last fix, next stop's first], ...
    p_start = np.sort(np.concatenate([seg_start, stop_last]))
    p_last = np.sort(np.concatenate([seg_end - 1, stop_first]))
    in_stop = np.zeros(len(keep), dtype=np.int64)
    np.add.at(in_stop, stop_first + 1, 1)
    np.add.at(in_stop, stop_last, -1)
    interior = np.cumsum(in_stop) > 0
    if interior.any():
        drop[keep[interior]] = _CODE["stop"]
        notes.append((keep[interior], "inside a stop"))

    # Number pieces within each trajectory, then drop the 0 m ones (never the 1-fix ones: the
    # length filter reports those).
    piece_traj = ck[p_start]
    first_piece = np.ones(len(piece_traj), dtype=bool)
    first_piece[1:] = piece_traj[1:] != piece_traj[:-1]
    piece_no = np.arange(len(p_start))
    k = piece_no - np.maximum.accumulate(np.where(first_piece, piece_no, 0))
    zero = _zero_length(xk, yk, p_start, p_last + 1, moves) & (p_last > p_start)
    if zero.any():
        rows = keep[_ranges(p_start[zero], p_last[zero] + 1)]
        drop[rows] = _CODE["short_trajectory"]
        notes.append((rows, "piece of 0 m: every fix at one position"))
    good = ~zero
    sizes = p_last[good] - p_start[good] + 1
    end = np.cumsum(sizes)
    return Pieces(
        drop=drop,
        rows=keep[_ranges(p_start[good], p_last[good] + 1)],
        start=end - sizes,
        end=end,
        k=k[good],
        n_segments=int(len(seg_start)),
        notes=notes,
    )


def _zero_length(x, y, start, end, moved_before=None) -> np.ndarray:
    """Per piece ``start:end`` of ``x, y``: True when every fix has the piece's first position.

    ``moved_before``: cumulative count of position changes (``_moves(x, y)``), to reuse.
    """
    if len(start) == 0:
        return np.zeros(0, dtype=bool)
    cs = _moves(x, y) if moved_before is None else moved_before
    return cs[end - 1] == cs[start]


def _moves(x, y) -> np.ndarray:
    """``cs[i]``: how many times the position changed between fix 0 and fix i."""
    step = np.zeros(len(x), dtype=np.int64)
    step[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
    return np.cumsum(step)


def _speed_notes(speed, v_max) -> list[str]:
    return [f"{v:.1f} m/s from the previous kept fix > v_max {vm:g} m/s" for v, vm in zip(speed, v_max)]


class _Vectorized:
    split = staticmethod(split_vectorized)

    @staticmethod
    def generalize(t, lon, lat, start, end, tolerance_ns):
        return min_time_delta(t, start, end, tolerance_ns)

    @staticmethod
    def positions(t, lon, lat, start, end, piece, grid_t):
        return interpolate_at(t, lon, lat, start, end, piece, grid_t)


def _engine(name: str):
    if name == "vectorized":
        return _Vectorized
    if name == "movingpandas":
        from trajfm.data import mpd_engine

        return mpd_engine
    raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# The partition function


def clean_partition(
    df: pd.DataFrame,
    params: ParamsLike = None,
    engine: str = "vectorized",
    native_interval_s: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Clean, split, filter and resample every trajectory in ``df`` (canonical points).

    ``df`` must hold whole trajectories (all fixes of a ``traj_id``); its row order does not
    matter (fixes are ordered by ``traj_id, t, lon, lat`` then the optional columns, so the
    result depends on the content only). ``params``: see ``normalize_params`` (per-kind
    defaults when ``None``). ``engine``: ``"vectorized"`` (numpy) or ``"movingpandas"`` (the
    same steps through MovingPandas; slow, for reference and parity checks).
    ``native_interval_s``: each source's native interval in seconds (``source`` -> s), which
    decides its resampling interval (``trajfm.data.sampling``); sources it does not name are
    measured on ``df`` (``sampling.source_native_interval_s``: exact when ``df`` holds the
    whole source; the preprocess stage passes the whole input's).

    Returns ``(points, quarantine, counts)``:

    - ``points``: resampled canonical points (``POINT_COLUMNS`` only; sog/cog are not
      resampled), ``traj_id = f"{traj_id}_{k}"``, sorted by ``traj_id, t``.
    - ``quarantine``: rejected input rows with their columns plus ``reason`` (``duplicate_fix``,
      ``duplicate_time``, ``speed_outlier``, ``stop``, ``generalized``, ``short_trajectory``;
      ``missing_value`` / ``nonfinite_coord`` for rows that are not valid fixes) and ``detail``,
      in sorted order.
    - ``counts``: ``rows_in, rows_kept, rows_quarantined, quarantined_by_reason, rows_out,
      n_trajectories`` (output pieces), ``n_segments`` (gap segments, before stops and the length
      filter), ``n_input_trajectories``.
    """
    table = normalize_params(params)
    impl = _engine(engine)
    optional = [c for c in OPTIONAL_COLUMNS if c in df.columns]
    counts = empty_counts()
    if len(df) == 0:
        return to_canonical(empty_points()), empty_clean_quarantine(optional), counts

    df = _canonical_input(df[POINT_COLUMNS + optional])
    n = len(df)
    traj_codes, traj_names = _factorize_sorted(df["traj_id"])
    t_all = df["t"].array.asi8 if hasattr(df["t"].array, "asi8") else _time_ns(df["t"])
    lon_all, lat_all = df["lon"].to_numpy(np.float64), df["lat"].to_numpy(np.float64)
    numeric_optional = [df[c].to_numpy(np.float64) for c in optional if c != "mode"]
    order = _content_order(traj_codes, t_all, lon_all, lat_all, numeric_optional)
    if order is not None:
        traj_codes, t_all, lon_all, lat_all = traj_codes[order], t_all[order], lon_all[order], lat_all[order]
    kind_codes = df["kind"].cat.codes.to_numpy()
    kind_codes = kind_codes[order] if order is not None else kind_codes
    kind_names = [str(k) for k in df["kind"].cat.categories]
    row_of = order if order is not None else np.arange(n)
    src_codes = df["source"].cat.codes.to_numpy()
    src_codes = src_codes[order] if order is not None else src_codes
    src_native_ns = _source_native_ns(
        traj_codes, t_all, src_codes, [str(s) for s in df["source"].cat.categories], native_interval_s
    )

    reason = np.zeros(n, dtype=np.int8)
    notes: list = []  # (sorted rows, detail or details) for every rejected row

    # Rows that are not fixes at all (possible when the frame did not come from ingest).
    invalid_id = (traj_codes < 0) | (kind_codes < 0) | df["obj_id"].isna().to_numpy()[row_of]
    invalid_id |= t_all == np.iinfo(np.int64).min
    invalid_xy = ~(np.isfinite(lon_all) & np.isfinite(lat_all)) & ~invalid_id
    if invalid_id.any():
        reason[invalid_id] = _CODE["missing_value"]
        notes.append((np.flatnonzero(invalid_id), "traj_id, obj_id, kind or t is missing"))
    if invalid_xy.any():
        reason[invalid_xy] = _CODE["nonfinite_coord"]
        notes.append((np.flatnonzero(invalid_xy), "lon or lat is NaN or infinite"))
    live = np.flatnonzero(reason == 0)
    kind_params = {}
    for code in np.unique(kind_codes[live]):
        found = find_kind_params(table, kind_names[code])
        if found is not None:
            kind_params[code] = found
    unknown = ~np.isin(kind_codes[live], list(kind_params))
    if unknown.any():  # one odd row must not fail the stage: quarantined with its kind named
        rows = live[unknown]
        reason[rows] = _CODE["unknown_kind"]
        known = ", ".join(sorted(k for k in table if k != "*"))
        detail = {
            c: f"kind {kind_names[c]!r} has no preprocessing parameters (known: {known}; or pass params for it)"
            for c in np.unique(kind_codes[rows])
        }
        notes.append((rows, [detail[c] for c in kind_codes[rows]]))
        live = live[~unknown]

    # 1. Duplicates: exact duplicates are adjacent after the sort; then same-time fixes are.
    same_time = np.zeros(len(live), dtype=bool)
    same_time[1:] = (traj_codes[live[1:]] == traj_codes[live[:-1]]) & (t_all[live[1:]] == t_all[live[:-1]])
    if same_time.any():
        dup_fix = np.zeros(len(live), dtype=bool)
        dup_fix[1:] = (
            same_time[1:] & (lon_all[live[1:]] == lon_all[live[:-1]]) & (lat_all[live[1:]] == lat_all[live[:-1]])
        )
        if dup_fix.any():
            reason[live[dup_fix]] = _CODE["duplicate_fix"]
            notes.append((live[dup_fix], "same time and position as an earlier fix"))
            live, same_time = live[~dup_fix], same_time[~dup_fix]
            same_time[0] = False
            same_time[1:] = (traj_codes[live[1:]] == traj_codes[live[:-1]]) & (t_all[live[1:]] == t_all[live[:-1]])
        if same_time.any():
            # Distance to the fix kept for that instant: the first of the run of equal times.
            run_head = np.maximum.accumulate(np.where(same_time, 0, np.arange(len(live))))
            rows, heads = live[same_time], live[run_head[same_time]]
            dist = haversine_m(lon_all[heads], lat_all[heads], lon_all[rows], lat_all[rows])
            reason[rows] = _CODE["duplicate_time"]
            notes.append((rows, [f"same time as a kept fix {d:.0f} m away" for d in dist]))
            live = live[~same_time]

    # 2-4. Speed outliers, gap split, stop split (engine-specific).
    t, lon, lat = t_all[live], lon_all[live], lat_all[live]
    codes, kinds = traj_codes[live], kind_codes[live]
    pieces = impl.split(t, lon, lat, codes, kinds, kind_params)
    dropped = pieces.drop > 0
    reason[live[dropped]] = pieces.drop[dropped]
    notes.extend((live[rows], text) for rows, text in pieces.notes)

    # 5. Minimum length (original fixes, duration, at least 2 resampled fixes).
    prow = pieces.rows
    p_first, p_last = prow[pieces.start], prow[pieces.end - 1]
    p_kind, p_traj = kinds[p_first], codes[p_first]
    min_points = _per_row(kind_params, p_kind, "min_points")
    min_dur_ns = np.round(_per_row(kind_params, p_kind, "min_duration_s") * NS_PER_S).astype(np.int64)
    interval_ns = np.round(_per_row(kind_params, p_kind, "interval_s") * NS_PER_S).astype(np.int64)
    # Sampling rate is the data's: never interpolate a source much finer than its own fixes.
    p_src = src_codes[live][p_first]
    native_ns = np.where(p_src >= 0, src_native_ns[np.maximum(p_src, 0)], 0)
    kind_interval_ns = interval_ns
    interval_ns = effective_interval_ns(interval_ns, native_ns, _per_row(kind_params, p_kind, "upsample_tolerance"))
    n_pts = pieces.end - pieces.start
    t_first, t_last = t[p_first], t[p_last]
    n_grid = np.maximum(t_last // interval_ns - (-(-t_first // interval_ns)) + 1, 0)
    long_enough = (n_pts >= min_points) & (t_last - t_first >= min_dur_ns) & (n_grid >= 2)
    short = np.flatnonzero(~long_enough)
    if len(short):
        rows = live[prow[_ranges(pieces.start[short], pieces.end[short])]]
        reason[rows] = _CODE["short_trajectory"]
        piece_detail = [
            f"segment {traj_names[c]}_{k}: {p} fixes over {d / NS_PER_S:.0f} s "
            f"(needs {mp:g} fixes, {md / NS_PER_S:g} s, 2 resampled fixes)"
            for c, k, p, d, mp, md in zip(
                p_traj[short],
                pieces.k[short],
                n_pts[short],
                (t_last - t_first)[short],
                min_points[short],
                min_dur_ns[short],
            )
        ]
        notes.append((rows, np.repeat(np.asarray(piece_detail, dtype=object), n_pts[short]).tolist()))

    # Kept pieces in output order: by their new traj_id as text ("x_10" sorts before "x_2").
    kept = np.flatnonzero(long_enough)
    n_native_interval = int((interval_ns[kept] != kind_interval_ns[kept]).sum())
    new_ids = [f"{traj_names[c]}_{k}" for c, k in zip(p_traj[kept], pieces.k[kept])]
    by_id = sorted(range(len(kept)), key=new_ids.__getitem__)
    kept = kept[by_id]
    new_ids = [new_ids[i] for i in by_id]
    k_rows = _ranges(pieces.start[kept], pieces.end[kept])
    sizes = n_pts[kept]
    k_end = np.cumsum(sizes)
    k_start = k_end - sizes
    sel = prow[k_rows]  # rows of `live` in kept pieces, piece after piece in output order
    t_k, lon_k, lat_k = t[sel], lon[sel], lat[sel]

    # 6. Generalization, where asked for.
    tol_ns = np.round(_per_row(kind_params, p_kind[kept], "generalize_s") * NS_PER_S).astype(np.int64)
    if (tol_ns > 0).any():
        on = tol_ns > 0
        keep_fix = impl.generalize(t_k, lon_k, lat_k, k_start[on], k_end[on], tol_ns[on])
        keep_fix |= np.repeat(~on, sizes)
        if not keep_fix.all():
            rows = live[sel[~keep_fix]]
            reason[rows] = _CODE["generalized"]
            notes.append((rows, "less than generalize_s after the previous kept fix"))
            sel, t_k, lon_k, lat_k = sel[keep_fix], t_k[keep_fix], lon_k[keep_fix], lat_k[keep_fix]
            sizes = np.add.reduceat(keep_fix.astype(np.int64), k_start) if len(k_start) else sizes
            k_end = np.cumsum(sizes)
            k_start = k_end - sizes

    # 7. Resample the kept pieces.
    piece, grid_t = time_grid(t_k[k_start], t_k[k_end - 1], interval_ns[kept])
    out_lon, out_lat = impl.positions(t_k, lon_k, lat_k, k_start, k_end, piece, grid_t)
    head = row_of[live[sel[k_start]]] if len(kept) else np.zeros(0, np.int64)
    points = _points_frame(df, new_ids, head, piece, grid_t, out_lon, out_lat)

    quarantine = _quarantine_frame(df, row_of, reason, notes)
    by_reason = {r: 0 for r in CLEAN_REASONS}
    codes_present, n_present = np.unique(reason[reason > 0], return_counts=True)
    for code, c in zip(codes_present, n_present):
        by_reason[_REASON_LIST[code]] = int(c)
    counts.update(
        rows_in=n,
        rows_kept=int(len(sel)),
        rows_quarantined=int(len(quarantine)),
        quarantined_by_reason=by_reason,
        rows_out=int(len(points)),
        n_trajectories=int(len(kept)),
        n_segments=int(pieces.n_segments),
        n_input_trajectories=int(len(traj_names)),
        n_native_interval=n_native_interval,
    )
    if counts["rows_in"] != counts["rows_kept"] + counts["rows_quarantined"]:
        raise AssertionError(f"clean lost rows: {counts}")
    return points, quarantine, counts


def _source_native_ns(traj_codes, t_ns, src_codes, src_names, given) -> np.ndarray:
    """Native interval (int64 ns; 0: unknown) per source code: ``given`` seconds where named,
    else the median positive step of the source's trajectories in these (sorted) rows."""
    out = median_step_ns(traj_codes, t_ns, src_codes, len(src_names))
    for code, name in enumerate(src_names):
        if given is not None and name in given and given[name] is not None:
            out[code] = int(round(float(given[name]) * NS_PER_S))
    return out


def _points_frame(df, new_ids, head, piece, grid_t, out_lon, out_lat) -> pd.DataFrame:
    """Resampled points; ``head`` is one input row of each kept piece (for its ids and kind)."""
    import pyarrow as pa

    take = pa.array(piece, type=pa.int64())
    traj = pa.array(new_ids, type=pa.large_string()).take(take)
    obj = _arrow(df["obj_id"]).take(pa.array(head, type=pa.int64())).take(take)
    return pd.DataFrame(
        {
            "traj_id": pd.arrays.ArrowStringArray(traj),
            "obj_id": pd.arrays.ArrowStringArray(obj),
            "t": pd.DatetimeIndex(grid_t.view("datetime64[ns]")).tz_localize("UTC"),
            "lon": out_lon,
            "lat": out_lat,
            "kind": _categorical_take(df["kind"], head, piece),
            "source": _categorical_take(df["source"], head, piece),
        }
    )


def _quarantine_frame(df, row_of, reason, notes) -> pd.DataFrame:
    rejected = np.flatnonzero(reason > 0)  # sorted rows, so the quarantine is in content order
    detail = np.empty(len(reason), dtype=object)
    for rows, text in notes:
        detail[rows] = text if isinstance(text, str) else np.asarray(text, dtype=object)
    quarantine = df.take(row_of[rejected]).reset_index(drop=True)
    quarantine["reason"] = pd.Series(np.asarray(_REASON_LIST, dtype=object)[reason[rejected]], dtype="string")
    quarantine["detail"] = pd.Series(detail[rejected], dtype="string")
    return quarantine


def _arrow(column: pd.Series):
    """The pyarrow array behind a string column (no copy for Arrow-backed strings)."""
    import pyarrow as pa

    arr = pa.array(column.array) if not hasattr(column.array, "_pa_array") else column.array._pa_array
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _factorize_sorted(ids: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Codes of ``ids`` in sorted-name order (-1 for missing) and the sorted names.

    A column already sorted (as ingest writes it) is coded from its change points, with no hashing.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = _arrow(ids)
    if len(arr) > 1 and arr.null_count == 0:
        prev, nxt = arr.slice(0, len(arr) - 1), arr.slice(1)
        if pc.all(pc.less_equal(prev, nxt)).as_py():
            change = np.r_[True, pc.not_equal(prev, nxt).to_numpy(zero_copy_only=False)]
            names = pc.filter(arr, pa.array(change)).to_pylist()
            return np.cumsum(change) - 1, names
    codes, names = pd.factorize(ids, sort=True)
    return codes, [str(x) for x in names]


def _content_order(codes, t, lon, lat, numeric_optional) -> np.ndarray | None:
    """Row order by (trajectory, time, lon, lat, optional values); None when already in it.

    The same order as one lexsort on every key, but only equal-time runs are sorted on the
    position and optional keys, and an input already sorted by (trajectory, time) costs one pass.
    """
    n = len(codes)
    same_traj = codes[1:] == codes[:-1]
    in_order = bool(((codes[1:] > codes[:-1]) | (same_traj & (t[1:] >= t[:-1]))).all())
    order = None if in_order else np.lexsort((t, codes))
    c = codes if order is None else codes[order]
    tt = t if order is None else t[order]
    tie = np.zeros(n, dtype=bool)
    tie[1:] = (c[1:] == c[:-1]) & (tt[1:] == tt[:-1])
    if not tie.any():
        return order
    order = np.arange(n) if order is None else order
    in_run = tie.copy()
    in_run[:-1] |= tie[1:]  # the first row of each run of equal times, too
    run_rows = np.flatnonzero(in_run)
    run_id = np.cumsum(~tie[run_rows])
    src = order[run_rows]
    keys = [k[src] for k in reversed(numeric_optional)] + [lat[src], lon[src], run_id]
    order[run_rows] = src[np.lexsort(keys)]
    return order


def _time_ns(t: pd.Series) -> np.ndarray:
    return t.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT")).view(np.int64)


def _per_row(kind_params: Mapping[int, PreprocessParams], kinds: np.ndarray, name: str) -> np.ndarray:
    """Parameter ``name`` of each row's mover kind (``kinds`` are category codes), as float64."""
    out = np.empty(len(kinds), dtype=np.float64)
    for code, p in kind_params.items():
        out[kinds == code] = float(getattr(p, name))
    return out


def _categorical_take(column: pd.Series, head: np.ndarray, piece: np.ndarray) -> pd.Categorical:
    """``column[head[piece]]`` of a categorical column, through its codes; unused categories dropped."""
    codes = column.cat.codes.to_numpy()[head]
    used = np.zeros(len(column.cat.categories), dtype=bool)
    used[codes[codes >= 0]] = True
    remap = np.where(codes >= 0, (np.cumsum(used) - 1)[codes], -1)
    return pd.Categorical.from_codes(remap[piece], categories=column.cat.categories[used])


def _canonical_input(df: pd.DataFrame) -> pd.DataFrame:
    """``schema.to_canonical`` unless the frame already has the canonical dtypes (saves casts)."""
    expected = to_canonical(empty_points()).dtypes
    already = all(
        (str(df[c].dtype) == "category") if str(dtype) == "category" else df[c].dtype == dtype
        for c, dtype in expected.items()
    ) and all(df[c].dtype == "float64" for c in df.columns if c in OPTIONAL_COLUMNS and c != "mode")
    return df.reset_index(drop=True) if already and "mode" not in df.columns else to_canonical(df)
