"""Training settings and the schedule: ``TrainConfig``, which of its settings decide the numbers
(``config_identity``: resume identities and stage keys), the device and bf16 autocast, the
learning-rate schedule (linear warmup, then cosine decay) and the AdamW optimizer over it."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch

from trajfm.model.gpt import TrajGPT
from trajfm.store import file_sha256

# Settings that change nothing in the numbers: a checkpoint written under other values resumes.
RESUME_IGNORES = ("device", "checkpoint_every", "log_every", "progress")
# ... and the settings a stage key leaves out (a stage is the same whatever its checkpoint cadence).
STAGE_IGNORES = ("device", "log_every", "progress")
AMP_MODES = ("auto", "bf16", "off")
SELECT_BY = ("loss", "fde")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # windows per optimizer step (the global batch, over all processes)
    lr: float = 1e-3  # peak learning rate, after warmup
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # AdamW, on weight matrices and embeddings only
    warmup_steps: int = 100  # linear warmup from ~0 to lr
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    seed: int = 0
    device: str = "auto"  # "auto" -> cuda if available else cpu; or any torch device string
    # steps between last.pt rewrites (also written every epoch end and on SIGTERM)
    checkpoint_every: int = 500
    max_steps: int | None = None  # cap on total steps (the schedule is laid out over the cap)
    grad_accum_steps: int = 1  # micro-batches per step (per process); same gradient, less memory
    amp: str = "auto"  # "auto": bf16 autocast on CUDA (when supported), off elsewhere; "bf16"; "off"
    compile: bool = False  # torch.compile the loss (forward + head); numbers may differ in the last bits
    log_every: int = 50  # steps between step metrics sent to an active MLflow run; 0: epoch metrics only
    progress: bool | None = None  # progress bar: None shows it on a terminal only (tqdm's rule)
    init_checkpoint: str | None = None  # fine-tune: start from these weights (and their normalization)
    # > 0: validate, keep and return an exponential moving average of the weights (``WeightAverage``)
    ema_decay: float = 0.0
    select_by: str = "loss"  # the epoch kept: lowest validation "loss", or "fde" (forecast error, metres; below)
    select_context: int = 20  # "fde": points of context of each validation window ...
    select_horizon: int = 10  # ... and the step whose great-circle error (FDE) is averaged

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, warmup_steps >= 0, checkpoint_every >= 0: {self}")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1: {self}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 or None, got {self.max_steps}")
        if self.grad_accum_steps < 1 or self.log_every < 0:
            raise ValueError(f"need grad_accum_steps >= 1 and log_every >= 0: {self}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.select_context < 2 or self.select_horizon < 1:
            raise ValueError(f"need select_context >= 2 and select_horizon >= 1: {self}")


def config_identity(cfg: TrainConfig, ignore: tuple[str, ...] = RESUME_IGNORES) -> dict:
    """The settings that decide the numbers: all but ``ignore``. ``init_checkpoint`` counts by its
    content (sha256), not its path."""
    out = {k: v for k, v in asdict(cfg).items() if k not in ignore}
    if out.get("init_checkpoint"):
        out["init_checkpoint"] = "sha256:" + file_sha256(out["init_checkpoint"])
    return out


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: bf16, or None (full float32)."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def planned_steps(n_windows: int, cfg: TrainConfig) -> int:
    """Optimizer steps a run makes: ``epochs`` passes of ceil(n / batch_size), capped by ``max_steps``."""
    total = cfg.epochs * math.ceil(n_windows / cfg.batch_size)
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup, then cosine."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: TrajGPT, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (dim >= 2); never biases or LayerNorm gains (nanoGPT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_and_schedule(model: TrajGPT, cfg: TrainConfig, device: torch.device, total_steps: int):
    """AdamW (betas 0.9, 0.95; fused on CUDA) and its ``lr_factor`` schedule over ``total_steps``."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return optimizer, scheduler
