"""Cleaning parameters: ``PreprocessParams`` (the thresholds for one kind of mover), the defaults
per kind (``KIND_DEFAULTS``) and the forms a caller may give them in (``normalize_params``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, Union

import numpy as np

from trajfm.data.sampling import DEFAULT_UPSAMPLE_TOLERANCE, NS_PER_S
from trajfm.data.schema import normalize_kind

MAX_INTERVAL_S = 365.0 * 86400.0  # one year: a resampling interval beyond it is a typo (and overflows ns)


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
FIELD_NAMES = {f.name for f in fields(PreprocessParams)}


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
    if params and set(params) <= FIELD_NAMES:
        return {kind: replace(p, **params) for kind, p in KIND_DEFAULTS.items()}
    # With a "*" entry, kinds not named use it; otherwise they keep their defaults.
    table = {} if "*" in params else dict(KIND_DEFAULTS)
    for kind, value in params.items():
        if isinstance(value, PreprocessParams):
            table[kind] = value
        elif isinstance(value, Mapping):
            unknown = set(value) - FIELD_NAMES
            if unknown:
                raise ValueError(
                    f"unknown parameter(s) {sorted(unknown)} for kind {kind!r}; known: {sorted(FIELD_NAMES)}"
                )
            table[kind] = replace(KIND_DEFAULTS.get(kind, PreprocessParams()), **value)
        else:
            raise ValueError(f"params[{kind!r}] must be PreprocessParams or a mapping, got {value!r}")
    return table


def params_to_json(params: ParamsLike = None) -> dict[str, dict]:
    """JSON form of the normalized parameter table (manifests, cache keys)."""
    return {kind: p.to_dict() for kind, p in sorted(normalize_params(params).items())}


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
