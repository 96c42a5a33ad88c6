"""The model: config and presets, the GPT-2 backbone over trajectory points, generation, checkpoints."""

from trajfm.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from trajfm.model.config import GPTConfig, describe_presets, list_presets, load_preset
from trajfm.model.generate import KVCache, Rollout
from trajfm.model.gpt import TrajGPT

__all__ = [
    "GPTConfig", "KVCache", "describe_presets", "Rollout", "TrajGPT", "list_presets", "load_checkpoint", "load_model", "load_preset",
    "save_checkpoint",
]
