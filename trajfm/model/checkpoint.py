"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors and plain Python only.

Layout: ``{"format", "version", "config" (``GPTConfig.to_dict``: nested, one dict per
sub-config), "model" (state_dict), "optimizer" (optional state_dict), "extra" (dict)}``.
Version 1 checkpoints (written before the sub-configs, with a flat config dict) are converted on
load: ``load_checkpoint`` returns them with the nested config and version 2. Writes are atomic (temporary file in the
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
VERSION = 2  # 2: nested config (GPTConfig sub-configs); 1: flat config, converted on load
FLAT_CONFIG_VERSION = 1


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
    """The checkpoint dict, loaded with ``weights_only=True`` (never unpickles code).

    A truncated or corrupt file raises ``ValueError`` naming it (not torch's zip-reader error).
    """
    import pickle

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # torch: "[Errno 22] Invalid argument"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            raise ValueError(
                f"{path}: refused, it holds objects other than tensors and plain data ({first[:160]})"
            ) from None
        raise ValueError(f"{path}: not a readable checkpoint, truncated or corrupt ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trajfm checkpoint")
    if ckpt.get("version") == FLAT_CONFIG_VERSION:  # a flat config dict: GPTConfig.from_dict reads flat names
        try:
            ckpt = {**ckpt, "version": VERSION, "config": GPTConfig.from_dict(ckpt["config"]).to_dict()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: version 1 checkpoint whose flat model config does not convert ({exc})") from None
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


def check_device(name: str) -> torch.device:
    """``name`` as a ``torch.device`` that exists on this machine, else ``ValueError`` in one line
    (``cuda:7`` on a machine with 1 GPU, or on a CPU-only torch, fails here, not deep in a run)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device is available on this machine; use cpu")
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s): cuda:0 .. cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: use cpu, cuda, cuda:N or mps")
    return device
