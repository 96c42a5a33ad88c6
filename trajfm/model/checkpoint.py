"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors and plain Python only.

Layout: ``{"format", "version", "config" (GPTConfig as dict), "model" (state_dict),
"optimizer" (optional state_dict), "extra" (dict)}``. Writes are atomic (temporary file in the
same directory, fsync, ``os.replace``), so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajfm.model.config import GPTConfig
from trajfm.model.gpt import TrajGPT

FORMAT = "trajfm.checkpoint"
VERSION = 1


def _plain(obj: Any, where: str = "extra") -> Any:
    """``obj`` with numpy values and paths made plain; TypeError for anything unpicklable safely."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a weights_only checkpoint")


def atomic_torch_save(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` via a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_checkpoint(
    path: str | os.PathLike, model: TrajGPT, optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None
) -> Path:
    """Write model config + weights (+ optimizer state, + ``extra``) atomically to ``path``."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "extra": _plain(dict(extra or {})),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict, loaded with ``weights_only=True`` (never unpickles code)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trajfm checkpoint")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (want {VERSION})")
    return ckpt


def model_from_checkpoint(ckpt: dict, map_location: str | torch.device = "cpu") -> TrajGPT:
    model = TrajGPT(GPTConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrajGPT:
    """A ``TrajGPT`` with weights and normalization from ``path``, in eval mode."""
    return model_from_checkpoint(load_checkpoint(path, map_location), map_location)
