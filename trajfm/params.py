"""The flows' parameters as typed, validated models (Pydantic), shared by every flow and the CLI.

Prefect builds each deployment's "Custom run" form from a flow's signature and docstring: a
parameter typed with one of these models shows its fields with their descriptions, ``PresetName``
is a drop-down of the bundled presets, and a value that does not validate is refused before any
stage runs, with a one-line reason (an unknown key names the known ones; NaN and infinity are
refused; a flag must be a JSON boolean, never a string such as ``"no"``).

Each model turns back into the plain dict its library function takes (``to_params()``), so the
tasks, their cache keys and the stage manifests see exactly what they saw before. The CLI and
``prefect deployment run -p`` pass plain JSON dicts; Prefect (and ``validate_params``) parse
them into these models.

One default preset for every flow, the CLI and ``prefect.yaml``: ``DEFAULT_PRESET``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    create_model,
    model_validator,
)

from trajfm.data.clean import KIND_DEFAULTS, PreprocessParams
from trajfm.defaults import DEFAULT_PRESET, DEFAULT_PRETRAIN_PRESET  # noqa: F401  (re-exported for flows)

# DEFAULT_PRESET (and DEFAULT_PRETRAIN_PRESET) live in trajfm/defaults.py.
# The bundled presets (trajfm.model.config.list_presets, read without importing torch).
PRESETS: tuple[str, ...] = tuple(sorted(p.stem for p in (Path(__file__).parent / "model" / "presets").glob("*.json")))
assert DEFAULT_PRESET in PRESETS, f"DEFAULT_PRESET {DEFAULT_PRESET!r} is not a bundled preset: {PRESETS}"
# A drop-down in Prefect's form (a JSON-schema enum); a typo is refused before any stage runs.
PresetName = Literal[PRESETS]  # type: ignore[valid-type]

KINDS: tuple[str, ...] = tuple(KIND_DEFAULTS)
Engine = Literal["vectorized", "movingpandas"]
Split = Literal["train", "val", "test"]


class ParamsError(ValueError):
    """A parameter mapping that does not validate; the message is one line."""


class ParamsModel(BaseModel):
    """Unknown keys are an error that lists the known ones; NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True, validate_default=False)
    what: ClassVar[str] = "params"

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
            unknown = sorted(str(k) for k in data if k not in known)
            if unknown:
                shown = sorted({f.alias or name for name, f in cls.model_fields.items()})
                raise ValueError(f"unknown key(s) {unknown} in {cls.what}; known: {shown}")
        return data

    def to_params(self) -> dict:
        """The plain dict the library takes: only the keys that were given (None = the default)."""
        return self.model_dump(exclude_none=True, by_alias=True)


def parse(model: type[BaseModel], value: Any, what: str | None = None) -> Any:
    """``value`` (None, a dict or already a model) as ``model``; a ``ParamsError`` in one line."""
    if value is None or isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ParamsError(f"{what or model.__name__}: {one_line(exc)}") from None


def one_line(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``where: why; where: why``."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        if e["type"] != "value_error" and got is not None and not isinstance(got, Mapping):
            msg += f" (got {got!r})"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def as_dict(value: Any) -> dict | None:
    """A model (or a plain dict, or None) as the library's plain dict."""
    if value is None:
        return None
    if isinstance(value, ParamsModel):
        return value.to_params()
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return dict(value)


# ----------------------------------------------------------------------------------------------
# Preprocessing: cleaning thresholds, for every kind or per kind (trajfm.data.clean)


class KindPreprocess(ParamsModel):
    """Cleaning thresholds (overrides of a kind's defaults; a field left out keeps the default)."""

    what: ClassVar[str] = "preprocess params"
    v_max_mps: Optional[float] = Field(
        None, gt=0, description="speed above which a fix is an outlier, metres per second"
    )
    max_gap_s: Optional[float] = Field(None, gt=0, description="observation gap above which a track is split, seconds")
    interval_s: Optional[float] = Field(None, gt=0, description="resampling interval, seconds")
    min_points: Optional[int] = Field(None, ge=1, description="fewest original fixes a piece needs to be kept")
    min_duration_s: Optional[float] = Field(None, ge=0, description="shortest piece duration kept, seconds")
    split_stops: Optional[StrictBool] = Field(
        None, description="split at stops (true/false; off by default: it is the slowest step)"
    )
    stop_max_diameter_m: Optional[float] = Field(None, gt=0, description="a stop stays within this diameter, metres")
    stop_min_duration_s: Optional[float] = Field(None, gt=0, description="a stop lasts at least this long, seconds")
    generalize_s: Optional[float] = Field(
        None, ge=0, description="keep fixes at least this many seconds apart before resampling (0: off)"
    )
    upsample_tolerance: Optional[float] = Field(
        None,
        ge=1,
        description="a source whose native interval exceeds interval_s by more than this factor is "
        "resampled at its own (coarser) interval, never upsampled (inf: always interval_s)",
    )


_THRESHOLDS = tuple(KindPreprocess.model_fields)
assert set(_THRESHOLDS) == set(PreprocessParams.__dataclass_fields__), (
    "KindPreprocess out of step with PreprocessParams"
)


def _kind_defaults_text(kind: str) -> str:
    p = KIND_DEFAULTS[kind]
    return (
        f"overrides for {kind} movers (defaults: v_max_mps {p.v_max_mps:g}, max_gap_s {p.max_gap_s:g}, "
        f"interval_s {p.interval_s:g}, min_points {p.min_points}, min_duration_s {p.min_duration_s:g})"
    )


class _PreprocessBase(KindPreprocess):
    def to_params(self) -> dict | None:
        """The ``trajfm.data.clean.normalize_params`` mapping: flat thresholds alone apply over
        every kind's defaults; with per-kind entries, flat thresholds go into every kind's entry."""
        flat = {k: getattr(self, k) for k in _THRESHOLDS if getattr(self, k) is not None}
        per_kind = {k: getattr(self, k).to_params() for k in KINDS if getattr(self, k) is not None}
        other = self.other_kinds.to_params() if self.other_kinds is not None else None
        if not per_kind and other is None:
            return flat or None
        table = {k: {**flat, **per_kind.get(k, {})} for k in (KINDS if flat else per_kind)}
        if other is not None:
            table["*"] = {**flat, **other}
        return table


PreprocessOptions = create_model(
    "PreprocessOptions",
    __base__=_PreprocessBase,
    __doc__=(
        "Cleaning thresholds: the fields here apply to every kind; an entry per kind overrides that kind's defaults."
    ),
    **{kind: (Optional[KindPreprocess], Field(None, description=_kind_defaults_text(kind))) for kind in KINDS},
    other_kinds=(
        Optional[KindPreprocess],
        Field(None, alias="*", description="kinds not named: built-in defaults plus these"),
    ),
)


# ----------------------------------------------------------------------------------------------
# Windows (trajfm.features.windows.WindowParams)


class WindowOptions(ParamsModel):
    """Windows cut from the cleaned trajectories and the chronological train/val/test split."""

    what: ClassVar[str] = "window params"
    window: Optional[int] = Field(None, ge=1, description="points per window (default 32)")
    stride: Optional[int] = Field(
        None, ge=1, description="points between window starts (default: the window, no overlap)"
    )
    train_stride: Optional[int] = Field(
        None, ge=1, description="train split only, e.g. 8 for 4x overlapping windows (default: stride)"
    )
    min_points: Optional[int] = Field(
        None, ge=1, description="shortest piece kept, padded to a full window (default 12)"
    )
    train_frac: Optional[float] = Field(
        None, gt=0, lt=1, description="fraction of the time span in the train split (default 0.7)"
    )
    val_frac: Optional[float] = Field(
        None, ge=0, lt=1, description="fraction of the time span in the validation split (default 0.15)"
    )
    split_by: Optional[Literal["global", "source"]] = Field(
        None, description="global: one set of cut times; source: cut each source's own time span (default global)"
    )
    extra: Optional[dict[str, Any]] = Field(None, description="free-form extras recorded in the manifest")


# ----------------------------------------------------------------------------------------------
# Training (trajfm.train.TrainConfig)


class TrainOverrides(ParamsModel):
    """Overrides of the training configuration; a field left out keeps the default."""

    what: ClassVar[str] = "train overrides"
    epochs: Optional[int] = Field(None, ge=0, description="passes over the train split")
    batch_size: Optional[int] = Field(
        None, ge=1, description="windows per optimizer step (the global batch, over all processes)"
    )
    lr: Optional[float] = Field(None, gt=0, description="peak learning rate, after warmup (default 1e-3)")
    min_lr_ratio: Optional[float] = Field(
        None, ge=0, le=1, description="cosine decay ends at lr * min_lr_ratio (default 0.1)"
    )
    weight_decay: Optional[float] = Field(
        None, ge=0, description="AdamW weight decay on matrices and embeddings (default 0.1)"
    )
    warmup_steps: Optional[int] = Field(None, ge=0, description="linear warmup steps (default 100)")
    grad_clip: Optional[float] = Field(None, ge=0, description="max global gradient norm; 0 disables (default 1.0)")
    seed: Optional[int] = Field(None, description="random seed (default 0)")
    device: Optional[str] = Field(
        None, description='"auto" (CUDA when present, else CPU) or a torch device such as "cpu", "cuda:0"'
    )
    checkpoint_every: Optional[int] = Field(
        None, ge=0, description="steps between last.pt rewrites (also every epoch end and on SIGTERM)"
    )
    max_steps: Optional[int] = Field(None, ge=0, description="cap on total optimizer steps")
    grad_accum_steps: Optional[int] = Field(
        None, ge=1, description="micro-batches per step and process (same gradient, less memory)"
    )
    amp: Optional[Literal["auto", "bf16", "off"]] = Field(
        None, description="mixed precision: auto = bf16 on CUDA when supported"
    )
    compile: Optional[StrictBool] = Field(
        None, description="torch.compile the loss (numbers may differ in the last bits)"
    )
    log_every: Optional[int] = Field(
        None, ge=0, description="steps between step metrics sent to MLflow; 0: epoch metrics only"
    )
    progress: Optional[StrictBool] = Field(
        None, description="progress bar (default: on a terminal only, never under CI=true)"
    )
    init_checkpoint: Optional[str] = Field(
        None, description="fine-tune: start from these weights (a model.pt or last.pt)"
    )
    ema_decay: Optional[float] = Field(
        None, ge=0, lt=1, description="> 0: keep an exponential moving average of the weights"
    )
    select_by: Optional[Literal["loss", "fde"]] = Field(
        None, description="epoch kept: lowest validation loss, or lowest validation FDE (metres)"
    )
    select_context: Optional[int] = Field(
        None, ge=2, description='"fde" selection: points of context per validation window'
    )
    select_horizon: Optional[int] = Field(None, ge=1, description='"fde" selection: the step whose error is averaged')


# ----------------------------------------------------------------------------------------------
# Reader options (trajfm.data.ingest) and quality gates (trajfm.quality.suites)


class IngestOptions(ParamsModel):
    """Reader options for every source file."""

    what: ClassVar[str] = "ingest params"
    format: Optional[str] = Field(
        None,
        description="force one reader for all files, e.g. tracktable, geolife, generic (default: detected per file)",
    )
    kind: Optional[str] = Field(
        None, description=f"mover kind of every point ({', '.join(KINDS)}; default: the format's)"
    )
    source: Optional[str] = Field(None, description="the source tag (default: the format's, e.g. the file stem)")
    columns: Optional[dict[str, str]] = Field(
        None, description='generic CSV: canonical name -> file column, e.g. {"lon": "x"}'
    )
    timezone: Optional[str] = Field(None, description="zone of naive times, e.g. Europe/London (generic, tdrive)")
    time_format: Optional[str] = Field(None, description="generic: auto, epoch_s, epoch_ms, ... or a strftime pattern")
    delimiter: Optional[str] = Field(None, description="generic CSV delimiter")
    chunk_rows: Optional[int] = Field(None, ge=1, description="rows per read chunk (memory only; not in the cache key)")
    chunk_bytes: Optional[int] = Field(None, ge=1, description="bytes per read chunk (memory only)")
    memory_rows: Optional[int] = Field(
        None, ge=1, description="points held in memory before sorted runs spill to disk (memory only)"
    )


QUALITY_CHECKS = ("not_null", "lon_range", "lat_range", "time_range", "time_increasing", "speed", "traj_length")


class QualityOptions(ParamsModel):
    """Overrides of the Great Expectations gates (raw and processed)."""

    what: ClassVar[str] = "quality params"
    v_max_mps: Optional[float] = Field(
        None, gt=0, description="processed gate: highest plausible speed, metres per second"
    )
    min_points: Optional[int] = Field(None, ge=1, description="processed gate: fewest fixes per trajectory")
    mostly: Optional[dict[Literal[QUALITY_CHECKS], float]] = Field(  # type: ignore[valid-type]
        None, description="per check: the fraction of rows (0..1) that must pass"
    )
    severity: Optional[dict[Literal[QUALITY_CHECKS], Literal["critical", "warning"]]] = Field(  # type: ignore[valid-type]
        None, description="per check: critical fails the gate, warning only reports"
    )

    @model_validator(mode="after")
    def _fractions(self):
        for check, frac in (self.mostly or {}).items():
            if not 0.0 <= frac <= 1.0:
                raise ValueError(f"mostly[{check!r}] must be in [0, 1], got {frac}")
        return self
