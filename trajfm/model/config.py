"""Model configuration: ``GPTConfig`` (GPT-2's sizes) holding one small sub-config per idea, and
named presets stored as JSON files in ``presets/``.

``GPTConfig`` holds the core sizes (``n_layer``, ``n_head``, ``d_model``, ``block_size``,
``dropout``, ``bias``, ``n_features``, ``n_targets``) and these sub-configs:

==============  ==================  ==========================================================
attribute       class               fields
==============  ==================  ==========================================================
positions       PositionConfig      position, rope_base, st_rope_{min,max}_{m,s}
output          HeadConfig          head, n_mixture, cell_resolution, cell_radius, point_loss,
                                    huber_delta, score_positions
target          TargetConfig        anchor, frame, step_scale, step_scale_floor_m
patching        PatchConfig         patch_in, patch_out
inputs          InputConfig         space_encoding, space_{min,max}_m, space_scales,
                                    time_encoding, time2vec_dim, n_kinds, turn_inputs,
                                    length_input, augment
normalisation   NormConfig          norm, norm_points, norm_floor_m, norm_loss
infilling       InfillConfig        objective, infill_{min,max}_span, infill_time_prob,
                                    infill_weight
calibration     CalibrationConfig   forecast_blend, forecast_radius_m
==============  ==================  ==========================================================

Every field name is unique across the sub-configs, so a field is read as
``config.output.head`` and may be NAMED flat (``"head"``) wherever a config is read from a dict.

Serialised form (checkpoints, stage keys, ``to_dict``): nested, one dict per sub-config, every
field present. ``from_dict`` (and so presets and the trainers' model overrides) accepts that nested form, flat
field names, or both: a sub-config's dict fills the fields it does not name with their defaults,
and flat names are applied after the nested dicts (``{"output": {"head": "mixture"},
"n_mixture": 3}`` is a 3-component mixture head). ``config.with_overrides(**kw)`` and
``load_preset(name, **kw)`` apply overrides in the same forms, a sub-config dict merged into the
config's (``load_preset("tutorial", head="mixture")`` == ``load_preset("tutorial",
output={"head": "mixture"})``). An unknown name is an error. The bundled presets are written
nested.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
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

# levels of the radial error quantiles a calibrated model stores per forecast step (trajfm/model/blend.py)
RADIUS_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def check_choice(config, name: str, allowed: tuple) -> None:
    """ValueError unless ``config.<name>`` is one of ``allowed``."""
    if getattr(config, name) not in allowed:
        raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(config, name)!r}")


def check_positive(config, *names: str) -> None:
    """ValueError unless every ``config.<name>`` is an integer >= 1."""
    for name in names:
        if int(getattr(config, name)) < 1:
            raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(config, name)}")


@dataclass
class PositionConfig:
    """Where a token is (trajfm/model/positions.py)."""

    position: str = "learned"  # "learned" (GPT-2 table), "rope" (sequence index), "st-rope" (metres, seconds)
    rope_base: float = 10_000.0  # "rope": wavelengths from 2*pi to 2*pi*rope_base tokens
    st_rope_min_m: float = 20.0  # "st-rope": shortest / longest wavelength of east and north rotations, metres
    st_rope_max_m: float = 200_000.0
    st_rope_min_s: float = 10.0  # "st-rope": shortest / longest wavelength of time rotations, seconds
    st_rope_max_s: float = 100_000.0

    def __post_init__(self) -> None:
        check_choice(self, "position", POSITIONS)


@dataclass
class HeadConfig:
    """What the head outputs and its loss (trajfm/model/heads.py, cells.py)."""

    head: str = (
        "mse"  # "mse": point regression; "mixture": Gaussian mixture over (dx, dy, log dt); "cell": next H3 cell
    )
    n_mixture: int = 5  # "mixture": components K (diagonal covariances)
    cell_resolution: int = 9  # "cell": H3 resolution of the next-cell classes (9: ~200 m hexagon edges)
    cell_radius: int = 4  # "cell": rings of neighbours around the current cell, one class each (+1 "farther")
    point_loss: str = "mse"  # "mse" head only: "mse" (the tutorial's), "huber" (per value), "distance" (per point)
    huber_delta: float = 1.0  # "huber" / "distance": quadratic below this many normalized units, linear above
    score_positions: bool = False  # Q > 1: score the positions reached (running sums of the Q steps), as ADE does

    def __post_init__(self) -> None:
        check_positive(self, "n_mixture")
        check_choice(self, "head", HEADS)
        check_choice(self, "point_loss", POINT_LOSSES)
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if self.head == "cell" and (not 0 <= self.cell_resolution <= 15 or self.cell_radius < 1):
            raise ValueError(
                f"need 0 <= cell_resolution <= 15 and cell_radius >= 1, got {self.cell_resolution}, {self.cell_radius}"
            )
        if self.head != "mse" and (self.point_loss != "mse" or self.score_positions):
            raise ValueError("point_loss and score_positions shape the point-regression loss: use them with head 'mse'")


@dataclass
class TargetConfig:
    """The frame the head predicts in (trajfm/model/targets.py)."""

    anchor: str = "none"  # "velocity": predict the change from the current step (0 = constant velocity)
    frame: str = "absolute"  # "heading": (dx, dy) along / across the current heading instead of east / north
    step_scale: str = "std"  # metres per head unit of (dx, dy): "std" (the data's), "speed" (current step + floor)
    step_scale_floor_m: float = 10.0  # "speed": metres per unit = |current step| + this floor

    def __post_init__(self) -> None:
        check_choice(self, "anchor", ANCHORS)
        check_choice(self, "frame", FRAMES)
        check_choice(self, "step_scale", STEP_SCALES)
        if self.step_scale_floor_m <= 0:
            raise ValueError(f"step_scale_floor_m must be > 0, got {self.step_scale_floor_m}")


@dataclass
class PatchConfig:
    """TimesFM's patching (trajfm/model/patching.py)."""

    patch_in: int = 1  # points per input token P (1: no patching)
    patch_out: int = 1  # points predicted per token Q (may exceed patch_in)

    def __post_init__(self) -> None:
        check_positive(self, "patch_in", "patch_out")


@dataclass
class InputConfig:
    """Extra input encodings (trajfm/model/embeddings.py) and training-time augmentation."""

    space_encoding: str = "none"  # "sinusoidal": multi-scale sin/cos of absolute position (needs lonlat)
    space_min_m: float = 100.0  # shortest / longest wavelength of the absolute-position encoding, metres
    space_max_m: float = 1_000_000.0
    space_scales: int = 8  # wavelengths, geometrically spaced
    time_encoding: str = "none"  # "time2vec": learned periodic encoding of elapsed time and time of week
    time2vec_dim: int = 8  # per time scalar: 1 linear + (time2vec_dim - 1) periodic
    n_kinds: int = 0  # > 0: a learned embedding per mover kind (index 0 = unknown)
    turn_inputs: bool = False  # each step also as (along, left) metres in the frame of the step before it
    length_input: bool = False  # log1p of each step's length in metres as an input (stopped vs drifting)
    # TrajGPT.loss, training mode only: "rotate": each window's steps turned by a random angle;
    # "rotate-flip": and mirrored half the time
    augment: str = "none"

    def __post_init__(self) -> None:
        check_positive(self, "space_scales", "time2vec_dim")
        check_choice(self, "space_encoding", SPACE_ENCODINGS)
        check_choice(self, "time_encoding", TIME_ENCODINGS)
        check_choice(self, "augment", AUGMENTS)
        if self.n_kinds < 0:
            raise ValueError(f"n_kinds must be >= 0, got {self.n_kinds}")


@dataclass
class NormConfig:
    """Input scale (TimesFM's per-context normalization; TrajGPT.context_scale)."""

    norm: str = "global"  # "global": training-set mean/std; "context": each sequence in units of its own early steps
    norm_points: int = 8  # "context": steps 1..norm_points of a sequence set its scale (mean length) and time shift
    norm_floor_m: float = 5.0  # "context": added to the mean step length (a stationary start still has a scale)
    norm_loss: str = "metres"  # "context", MSE head: (dx, dy) errors weighted back to metres ("units": its own)

    def __post_init__(self) -> None:
        check_choice(self, "norm", NORMS)
        check_choice(self, "norm_loss", NORM_LOSSES)


@dataclass
class InfillConfig:
    """The training objective (trajfm/model/infill.py)."""

    objective: str = "next"  # "next": next point(s); "infill": masked spans; "mixed": both, summed
    infill_min_span: int = 1  # masked span length in points, uniform in [min, max] (shorter rows: shorter spans)
    infill_max_span: int = 8
    infill_time_prob: float = 0.5  # chance that a span's travel time is hidden too (travel-time estimation)
    infill_weight: float = 1.0  # "mixed": loss = next + infill_weight * infill

    def __post_init__(self) -> None:
        check_choice(self, "objective", OBJECTIVES)
        if self.objective == "next":
            return
        if not 1 <= self.infill_min_span <= self.infill_max_span:
            raise ValueError(
                f"need 1 <= infill_min_span <= infill_max_span, got {self.infill_min_span}, {self.infill_max_span}"
            )
        if not 0.0 <= self.infill_time_prob <= 1.0 or self.infill_weight < 0:
            raise ValueError("need 0 <= infill_time_prob <= 1 and infill_weight >= 0")


@dataclass
class CalibrationConfig:
    """Forecast calibration, fitted on the validation split after training (trajfm/model/blend.py)."""

    forecast_blend: tuple | None = None  # per forecast step: weight of the model against constant velocity (0..1)
    forecast_radius_m: tuple | None = None  # per forecast step: quantiles (m) at RADIUS_LEVELS of the distance

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


# sub-config attribute of GPTConfig -> its class
SUB_CONFIGS = {
    "positions": PositionConfig,
    "output": HeadConfig,
    "target": TargetConfig,
    "patching": PatchConfig,
    "inputs": InputConfig,
    "normalisation": NormConfig,
    "infilling": InfillConfig,
    "calibration": CalibrationConfig,
}
# flat field name -> the sub-config attribute holding it (every name lives in exactly one)
FLAT_FIELDS = {f.name: group for group, cls in SUB_CONFIGS.items() for f in fields(cls)}
assert len(FLAT_FIELDS) == sum(len(fields(cls)) for cls in SUB_CONFIGS.values()), "field names must be unique"


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
    positions: PositionConfig = field(default_factory=PositionConfig)
    output: HeadConfig = field(default_factory=HeadConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    patching: PatchConfig = field(default_factory=PatchConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    normalisation: NormConfig = field(default_factory=NormConfig)
    infilling: InfillConfig = field(default_factory=InfillConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        for name, cls in SUB_CONFIGS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"GPTConfig.{name} must be a {cls.__name__} (GPTConfig.from_dict reads dicts)")
        check_positive(self, "n_layer", "n_head", "d_model", "block_size", "n_features", "n_targets")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_targets > self.n_features:
            raise ValueError("targets are the first n_targets input features: need n_targets <= n_features")
        self._check_positions_and_patches()
        self._check_inputs()
        self._check_head_and_objective()

    def _check_positions_and_patches(self) -> None:
        position = self.positions.position
        if position != "learned" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got d_model/n_head = {self.head_dim}")
        if position == "st-rope" and self.head_dim < 6:
            raise ValueError("st-rope needs a head size >= 6 (a rotation pair each for east, north, time)")
        if self.block_size % self.patching.patch_in:
            raise ValueError(
                f"block_size ({self.block_size}) must be a multiple of patch_in ({self.patching.patch_in})"
            )

    def _check_inputs(self) -> None:
        i, t = self.inputs, self.target
        if i.time_encoding != "none" and self.n_features < 7:
            raise ValueError("time2vec reads log_dt_s and the day-of-week cycle: needs the 7 standard features")
        if (t.anchor != "none" or t.frame != "absolute" or i.turn_inputs or i.length_input) and self.n_targets < 2:
            raise ValueError("anchor / frame / turn_inputs / length_input read (dx, dy): need n_targets >= 2")

    def _check_head_and_objective(self) -> None:
        i, n, o = self.inputs, self.normalisation, self.infilling
        head, patch = self.output.head, self.patching
        if head == "cell" and (patch.patch_in, patch.patch_out, o.objective) != (1, 1, "next"):
            raise ValueError(
                "the cell head classifies the next point of each point: "
                "needs patch_in = patch_out = 1, objective 'next'"
            )
        if i.augment != "none" and (i.space_encoding != "none" or self.n_targets < 2):
            raise ValueError(
                "augment turns each window's (dx, dy) steps: needs n_targets >= 2 and no absolute "
                "space_encoding (turned steps would no longer match the window's lon/lat)"
            )
        if n.norm == "context":
            if n.norm_points < 1 or n.norm_floor_m <= 0 or n.norm_points >= self.block_size:
                raise ValueError(
                    f"norm 'context' needs 1 <= norm_points < block_size and norm_floor_m > 0, got "
                    f"{n.norm_points}, {n.norm_floor_m}"
                )
            if o.objective != "next" or head == "cell" or self.target.step_scale != "std" or i.time_encoding != "none":
                raise ValueError(
                    "norm 'context' rescales (dx, dy, log dt) per sequence: it needs objective 'next', a "
                    "point head (mse / mixture), step_scale 'std' and no time encoding"
                )
            if self.n_targets < 3:
                raise ValueError("norm 'context' shifts log_dt_s: needs n_targets = 3")
        if o.objective != "next":
            if patch.patch_in != 1:
                raise ValueError("infilling works on single points: objective 'infill'/'mixed' needs patch_in = 1")
            if self.n_targets != 3 or self.n_features < 3:
                raise ValueError("infilling rebuilds (dx_m, dy_m, log_dt_s): needs n_targets = 3")

    @property
    def n_inputs(self) -> int:
        """Numbers per point the input projection reads: the features, + 2 with ``turn_inputs``,
        + 1 with ``length_input``."""
        return self.n_features + 2 * int(self.inputs.turn_inputs) + int(self.inputs.length_input)

    @property
    def first_scored_token(self) -> int:
        """First token the next-point loss scores: 0, or with ``norm="context"`` the first token
        whose input ends at or after point ``norm_points`` (earlier tokens would see a scale made
        partly of the steps they predict)."""
        if self.normalisation.norm != "context":
            return 0
        return -(-(self.normalisation.norm_points + 1) // self.patching.patch_in) - 1

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def n_tokens(self) -> int:
        """Longest sequence in tokens (= block_size points / patch_in)."""
        return self.block_size // self.patching.patch_in

    def to_dict(self) -> dict:
        """The nested form: the core sizes, and one dict per sub-config with all its fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """A config from its nested form, flat field names, or both (the module docstring)."""
        core = {f.name for f in fields(cls)} - set(SUB_CONFIGS)
        unknown = sorted(set(d) - core - set(SUB_CONFIGS) - set(FLAT_FIELDS))
        if unknown:
            known = sorted(core | set(SUB_CONFIGS) | set(FLAT_FIELDS))
            raise ValueError(f"unknown GPTConfig fields {unknown}; known: {known}")
        groups: dict[str, dict] = {name: {} for name in SUB_CONFIGS}
        for name in SUB_CONFIGS:
            given = d.get(name, {})
            given = asdict(given) if isinstance(given, SUB_CONFIGS[name]) else dict(given)
            bad = sorted(set(given) - {f.name for f in fields(SUB_CONFIGS[name])})
            if bad:
                raise ValueError(f"unknown GPTConfig fields {[f'{name}.{k}' for k in bad]}")
            groups[name].update(given)
        for key, value in d.items():
            if key in FLAT_FIELDS:
                groups[FLAT_FIELDS[key]][key] = value
        subs = {name: SUB_CONFIGS[name](**kw) for name, kw in groups.items()}
        return cls(**{k: v for k, v in d.items() if k in core}, **subs)

    def with_overrides(self, **overrides) -> GPTConfig:
        """A copy with ``overrides`` applied: flat field names, core sizes, or sub-config dicts
        (merged into this config's sub-config: the fields they do not name keep their values)."""
        d = self.to_dict()
        for key, value in overrides.items():
            d[key] = {**d[key], **value} if key in SUB_CONFIGS and isinstance(value, dict) else value
        return GPTConfig.from_dict(d)


def list_presets() -> list[str]:
    """Names of the bundled presets (the JSON files in ``trajfm/model/presets``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def describe_presets() -> dict[str, str]:
    """Name -> one-line description (the preset file's ``_comment``) of every bundled preset."""
    return {name: json.loads((PRESET_DIR / f"{name}.json").read_text()).get("_comment", "") for name in list_presets()}


def load_preset(name: str, **overrides) -> GPTConfig:
    """The ``GPTConfig`` of a named preset (or a ``.json`` path), with ``overrides`` applied
    (flat field names or nested sub-config dicts, as ``GPTConfig.from_dict`` reads them)."""
    path = Path(name)
    if path.suffix != ".json" or not path.is_file():
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    d = json.loads(path.read_text())
    d.pop("_comment", None)  # presets may explain themselves
    return GPTConfig.from_dict(d).with_overrides(**overrides)
