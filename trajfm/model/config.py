"""Model configuration: one dataclass, and named presets stored as JSON files in ``presets/``.

A preset is the JSON of a ``GPTConfig``; ``load_preset("tutorial", dropout=0.0)`` reads it and
applies overrides. A path to a ``.json`` file works in place of a name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from trajfm.features.encode import N_FEATURES, N_TARGETS

PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class GPTConfig:
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads per block
    d_model: int = 96  # width of the residual stream (GPT-2's n_embd)
    block_size: int = 64  # longest sequence in points (size of the position table)
    dropout: float = 0.1  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    n_features: int = N_FEATURES  # raw inputs per point (trajfm.features.encode.FEATURE_NAMES)
    n_targets: int = N_TARGETS  # predicted features of the next point (TARGET_NAMES)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "block_size", "n_features", "n_targets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_targets > self.n_features:
            raise ValueError("targets are the first n_targets input features: need n_targets <= n_features")

    def to_dict(self) -> dict:
        return asdict(self)

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


def load_preset(name: str, **overrides) -> GPTConfig:
    """The ``GPTConfig`` of a named preset (or a ``.json`` path), with ``overrides`` applied."""
    path = Path(name)
    if path.suffix != ".json" or not path.is_file():
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    d = json.loads(path.read_text())
    d.update(overrides)
    return GPTConfig.from_dict(d)
