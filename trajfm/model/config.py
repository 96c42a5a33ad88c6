"""Model configuration: one dataclass, and named presets stored as JSON files in ``presets/``.

A preset is the JSON of a ``GPTConfig``; ``load_preset("tutorial", dropout=0.0)`` reads it and
applies overrides. A path to a ``.json`` file works in place of a name. Every field added after
the first release has a default that reproduces the original model (learned positions, MSE head
on plain east/north targets, one point per token, no extra inputs, next-point objective), so
older checkpoints and presets load unchanged and compute the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from trajfm.features.encode import N_FEATURES, N_TARGETS

PRESET_DIR = Path(__file__).resolve().parent / "presets"

POSITIONS = ("learned", "rope", "st-rope")
HEADS = ("mse", "mixture", "cell")
SPACE_ENCODINGS = ("none", "sinusoidal")
TIME_ENCODINGS = ("none", "time2vec")
ANCHORS = ("none", "velocity")
FRAMES = ("absolute", "heading")
STEP_SCALES = ("std", "speed")
POINT_LOSSES = ("mse", "huber", "distance")
OBJECTIVES = ("next", "infill", "mixed")
AUGMENTS = ("none", "rotate", "rotate-flip")
NORMS = ("global", "context")
NORM_LOSSES = ("metres", "units")


# Fields added after train-stage keys were first hashed from ``to_dict``: left out of it at their
# defaults, so earlier configs keep their dicts (cache keys, resume identities, checkpoints).
ADDED_DEFAULTS = {
    "turn_inputs": False,
    "length_input": False,
    "anchor": "none",
    "frame": "absolute",
    "step_scale": "std",
    "step_scale_floor_m": 10.0,
    "point_loss": "mse",
    "huber_delta": 1.0,
    "score_positions": False,
    "objective": "next",
    "infill_min_span": 1,
    "infill_max_span": 8,
    "infill_time_prob": 0.5,
    "infill_weight": 1.0,
    "cell_resolution": 9,
    "cell_radius": 4,
    "augment": "none",
    "norm": "global",
    "norm_points": 8,
    "norm_floor_m": 5.0,
    "norm_loss": "metres",
    "forecast_blend": None,
    "forecast_radius_m": None,
}
# levels of the radial error quantiles a calibrated model stores per forecast step (trajfm/model/blend.py)
RADIUS_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class GPTConfig:
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads per block
    d_model: int = 96  # width of the residual stream (GPT-2's n_embd)
    block_size: int = 64  # longest sequence in points (size of the position table x patch_in)
    dropout: float = 0.1  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    n_features: int = N_FEATURES  # raw inputs per point (trajfm.features.encode.FEATURE_NAMES)
    n_targets: int = N_TARGETS  # predicted features of the next point (TARGET_NAMES)
    # --- positions (trajfm/model/positions.py) ---
    position: str = "learned"  # "learned" (GPT-2 table), "rope" (sequence index), "st-rope" (metres, seconds)
    rope_base: float = 10_000.0  # "rope": wavelengths from 2*pi to 2*pi*rope_base tokens
    st_rope_min_m: float = 20.0  # "st-rope": shortest / longest wavelength of east and north rotations, metres
    st_rope_max_m: float = 200_000.0
    st_rope_min_s: float = 10.0  # "st-rope": shortest / longest wavelength of time rotations, seconds
    st_rope_max_s: float = 100_000.0
    # --- head (trajfm/model/heads.py) ---
    head: str = "mse"  # "mse": point regression; "mixture": Gaussian mixture over (dx, dy, log dt); "cell": next H3 cell (cells.py)
    n_mixture: int = 5  # "mixture": components K (diagonal covariances)
    cell_resolution: int = 9  # "cell": H3 resolution of the next-cell classes (9: ~200 m hexagon edges)
    cell_radius: int = 4  # "cell": rings of neighbours around the current cell, one class each (+1 "farther")
    # --- patching (trajfm/model/patching.py, TimesFM) ---
    patch_in: int = 1  # points per input token P (1: no patching)
    patch_out: int = 1  # points predicted per token Q (may exceed patch_in)
    # --- extra input encodings (trajfm/model/embeddings.py) ---
    space_encoding: str = "none"  # "sinusoidal": multi-scale sin/cos of absolute position (needs lonlat)
    space_min_m: float = 100.0  # shortest / longest wavelength of the absolute-position encoding, metres
    space_max_m: float = 1_000_000.0
    space_scales: int = 8  # wavelengths, geometrically spaced
    time_encoding: str = "none"  # "time2vec": learned periodic encoding of elapsed time and time of week
    time2vec_dim: int = 8  # per time scalar: 1 linear + (time2vec_dim - 1) periodic
    n_kinds: int = 0  # > 0: a learned embedding per mover kind (index 0 = unknown)
    turn_inputs: bool = False  # each step also as (along, left) metres in the frame of the step before it
    length_input: bool = False  # log1p of each step's length in metres as an input (stopped vs drifting)
    # --- what the head predicts, and its loss (trajfm/model/targets.py, heads.py) ---
    anchor: str = "none"  # "velocity": predict the change from the current step (0 = constant velocity)
    frame: str = "absolute"  # "heading": (dx, dy) along / across the current heading instead of east / north
    step_scale: str = "std"  # metres per head unit of (dx, dy): "std" (the data's), "speed" (current step + floor)
    step_scale_floor_m: float = 10.0  # "speed": metres per unit = |current step| + this floor
    point_loss: str = "mse"  # "mse" head only: "mse" (the tutorial's), "huber" (per value), "distance" (per point)
    huber_delta: float = 1.0  # "huber" / "distance": quadratic below this many normalized units, linear above
    score_positions: bool = False  # Q > 1: score the positions reached (running sums of the Q steps), as ADE does
    # --- objective (trajfm/model/infill.py) ---
    objective: str = "next"  # "next": next point(s); "infill": masked spans; "mixed": both, summed
    infill_min_span: int = 1  # masked span length in points, uniform in [min, max] (shorter rows: shorter spans)
    infill_max_span: int = 8
    infill_time_prob: float = 0.5  # chance that a span's travel time is hidden too (travel-time estimation)
    infill_weight: float = 1.0  # "mixed": loss = next + infill_weight * infill
    # --- training-time augmentation (TrajGPT.loss, training mode only) ---
    augment: str = (
        "none"  # "rotate": each window's steps turned by a random angle; "rotate-flip": and mirrored half the time
    )
    # --- input scale (TimesFM's per-context normalization; TrajGPT.context_scale) ---
    norm: str = "global"  # "global": training-set mean/std; "context": each sequence in units of its own early steps
    norm_points: int = 8  # "context": steps 1..norm_points of a sequence set its scale (mean length) and time shift
    norm_floor_m: float = 5.0  # "context": added to the mean step length (a stationary start still has a scale)
    norm_loss: str = (
        "metres"  # "context", MSE head: (dx, dy) errors weighted back to metres ("units": each sequence's own)
    )
    # --- forecast calibration, fitted on the validation split after training (trajfm/model/blend.py) ---
    forecast_blend: tuple | None = None  # per forecast step: weight of the model against constant velocity (0..1)
    forecast_radius_m: tuple | None = (
        None  # per forecast step: quantiles (m) at RADIUS_LEVELS of the distance to the truth
    )

    def __post_init__(self) -> None:
        if self.forecast_blend is not None:  # JSON gives lists: keep tuples, so configs compare equal
            self.forecast_blend = tuple(float(v) for v in self.forecast_blend)
            if not self.forecast_blend or not all(0.0 <= w <= 1.0 for w in self.forecast_blend):
                raise ValueError(
                    f"forecast_blend needs one weight in [0, 1] per forecast step, got {self.forecast_blend}"
                )
        if self.forecast_radius_m is not None:
            self.forecast_radius_m = tuple(tuple(float(v) for v in row) for row in self.forecast_radius_m)
            rows = self.forecast_radius_m
            if not rows or any(
                len(r) != len(RADIUS_LEVELS) or min(r) <= 0 or any(b < a for a, b in zip(r, r[1:])) for r in rows
            ):
                raise ValueError(
                    f"forecast_radius_m needs, per forecast step, {len(RADIUS_LEVELS)} increasing radii > 0 m "
                    f"(quantiles at {RADIUS_LEVELS})"
                )
        for name in (
            "n_layer",
            "n_head",
            "d_model",
            "block_size",
            "n_features",
            "n_targets",
            "n_mixture",
            "patch_in",
            "patch_out",
            "space_scales",
            "time2vec_dim",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_targets > self.n_features:
            raise ValueError("targets are the first n_targets input features: need n_targets <= n_features")
        for name, allowed in (
            ("position", POSITIONS),
            ("head", HEADS),
            ("space_encoding", SPACE_ENCODINGS),
            ("time_encoding", TIME_ENCODINGS),
            ("anchor", ANCHORS),
            ("frame", FRAMES),
            ("step_scale", STEP_SCALES),
            ("point_loss", POINT_LOSSES),
            ("objective", OBJECTIVES),
            ("augment", AUGMENTS),
            ("norm", NORMS),
            ("norm_loss", NORM_LOSSES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.position != "learned" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got d_model/n_head = {self.head_dim}")
        if self.position == "st-rope" and self.head_dim < 6:
            raise ValueError("st-rope needs a head size >= 6 (a rotation pair each for east, north, time)")
        if self.block_size % self.patch_in:
            raise ValueError(f"block_size ({self.block_size}) must be a multiple of patch_in ({self.patch_in})")
        if self.n_kinds < 0:
            raise ValueError(f"n_kinds must be >= 0, got {self.n_kinds}")
        if self.time_encoding != "none" and self.n_features < 7:
            raise ValueError("time2vec reads log_dt_s and the day-of-week cycle: needs the 7 standard features")
        if (
            self.anchor != "none" or self.frame != "absolute" or self.turn_inputs or self.length_input
        ) and self.n_targets < 2:
            raise ValueError("anchor / frame / turn_inputs / length_input read (dx, dy): need n_targets >= 2")
        if self.step_scale_floor_m <= 0:
            raise ValueError(f"step_scale_floor_m must be > 0, got {self.step_scale_floor_m}")
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if self.head == "cell":
            if not 0 <= self.cell_resolution <= 15 or self.cell_radius < 1:
                raise ValueError(
                    f"need 0 <= cell_resolution <= 15 and cell_radius >= 1, got {self.cell_resolution}, {self.cell_radius}"
                )
            if (self.patch_in, self.patch_out, self.objective) != (1, 1, "next"):
                raise ValueError(
                    "the cell head classifies the next point of each point: needs patch_in = patch_out = 1, objective 'next'"
                )
        if self.augment != "none" and (self.space_encoding != "none" or self.n_targets < 2):
            raise ValueError(
                "augment turns each window's (dx, dy) steps: needs n_targets >= 2 and no absolute "
                "space_encoding (turned steps would no longer match the window's lon/lat)"
            )
        if self.norm == "context":
            if self.norm_points < 1 or self.norm_floor_m <= 0 or self.norm_points >= self.block_size:
                raise ValueError(
                    f"norm 'context' needs 1 <= norm_points < block_size and norm_floor_m > 0, got "
                    f"{self.norm_points}, {self.norm_floor_m}"
                )
            if (
                self.objective != "next"
                or self.head == "cell"
                or self.step_scale != "std"
                or self.time_encoding != "none"
            ):
                raise ValueError(
                    "norm 'context' rescales (dx, dy, log dt) per sequence: it needs objective 'next', a "
                    "point head (mse / mixture), step_scale 'std' and no time encoding"
                )
            if self.n_targets < 3:
                raise ValueError("norm 'context' shifts log_dt_s: needs n_targets = 3")
        if self.head != "mse" and (self.point_loss != "mse" or self.score_positions):
            raise ValueError("point_loss and score_positions shape the point-regression loss: use them with head 'mse'")
        if self.objective != "next":
            if self.patch_in != 1:
                raise ValueError("infilling works on single points: objective 'infill'/'mixed' needs patch_in = 1")
            if self.n_targets != 3 or self.n_features < 3:
                raise ValueError("infilling rebuilds (dx_m, dy_m, log_dt_s): needs n_targets = 3")
            if not 1 <= self.infill_min_span <= self.infill_max_span:
                raise ValueError(
                    f"need 1 <= infill_min_span <= infill_max_span, got {self.infill_min_span}, {self.infill_max_span}"
                )
            if not 0.0 <= self.infill_time_prob <= 1.0 or self.infill_weight < 0:
                raise ValueError("need 0 <= infill_time_prob <= 1 and infill_weight >= 0")

    @property
    def n_inputs(self) -> int:
        """Numbers per point the input projection reads: the features, + 2 with ``turn_inputs``,
        + 1 with ``length_input``."""
        return self.n_features + 2 * int(self.turn_inputs) + int(self.length_input)

    @property
    def first_scored_token(self) -> int:
        """First token the next-point loss scores: 0, or with ``norm="context"`` the first token
        whose input ends at or after point ``norm_points`` (earlier tokens would see a scale made
        partly of the steps they predict)."""
        if self.norm != "context":
            return 0
        return -(-(self.norm_points + 1) // self.patch_in) - 1

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def n_tokens(self) -> int:
        """Longest sequence in tokens (= block_size points / patch_in)."""
        return self.block_size // self.patch_in

    def to_dict(self) -> dict:
        """All fields, except those of ``ADDED_DEFAULTS`` that hold their default: a config that
        could be written before they existed keeps the same dict (cache keys, resume identities)."""
        keep = {"norm_loss"} if self.norm == "context" else set()  # added after the first context-norm models
        return {
            k: v for k, v in asdict(self).items() if k in keep or not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


def list_presets() -> list[str]:
    """Names of the bundled presets (the JSON files in ``trajfm/model/presets``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def describe_presets() -> dict[str, str]:
    """Name -> one-line description (the preset file's ``_comment``) of every bundled preset."""
    return {name: json.loads((PRESET_DIR / f"{name}.json").read_text()).get("_comment", "") for name in list_presets()}


def load_preset(name: str, **overrides) -> GPTConfig:
    """The ``GPTConfig`` of a named preset (or a ``.json`` path), with ``overrides`` applied."""
    path = Path(name)
    if path.suffix != ".json" or not path.is_file():
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    d = json.loads(path.read_text())
    d.pop("_comment", None)  # presets may explain themselves
    d.update(overrides)
    return GPTConfig.from_dict(d)
