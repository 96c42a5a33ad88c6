"""The model: config and presets, the GPT-2 backbone over trajectory points, KV-cache generation,
masked-span infilling, checkpoints (see ``gpt.py``'s docstring for which idea lives in which file)."""

from trajfm.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from trajfm.model.config import (
    CalibrationConfig,
    GPTConfig,
    HeadConfig,
    InfillConfig,
    InputConfig,
    NormConfig,
    PatchConfig,
    PositionConfig,
    TargetConfig,
    describe_presets,
    list_presets,
    load_preset,
)
from trajfm.model.generate import KVCache, Rollout
from trajfm.model.gpt import TrajGPT
from trajfm.model.infill import InfillResult, infill, linear_interpolation
from trajfm.model.inputs import ModelInputs

__all__ = [
    "CalibrationConfig",
    "GPTConfig",
    "HeadConfig",
    "InfillConfig",
    "InfillResult",
    "InputConfig",
    "KVCache",
    "ModelInputs",
    "NormConfig",
    "PatchConfig",
    "PositionConfig",
    "Rollout",
    "TargetConfig",
    "TrajGPT",
    "describe_presets",
    "infill",
    "linear_interpolation",
    "list_presets",
    "load_checkpoint",
    "load_model",
    "load_preset",
    "save_checkpoint",
]
