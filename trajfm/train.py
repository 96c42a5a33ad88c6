"""Training loop: AdamW, linear warmup + cosine decay, gradient clipping, atomic resumable checkpoints.

Deterministic: the same windows, statistics and configs give the same losses. Model init uses
``torch.manual_seed(seed)``; the batch order of epoch ``e`` is a permutation drawn from its own
generator seeded from ``(seed, e)``, so a run resumed at any step sees exactly the batches and
dropout masks (global RNG state is checkpointed) an uninterrupted run would.

``checkpoint_dir/last.pt`` holds everything needed to resume (model, optimizer, scheduler, step,
RNG states, history) and is rewritten atomically every ``checkpoint_every`` steps and at the end
of each epoch. When it exists and was written for the same model config, train config (ignoring
``device`` and ``checkpoint_every``), statistics and data, ``train`` resumes from it; a run that
had finished returns at once. With validation data, ``best.pt`` keeps the weights of the epoch
with the lowest validation loss.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from trajfm.features.windows import WindowSet
from trajfm.model.checkpoint import load_checkpoint, save_checkpoint
from trajfm.model.config import GPTConfig
from trajfm.model.gpt import TrajGPT

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
_RESUME_IGNORES = ("device", "checkpoint_every")  # change nothing in the numbers


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # windows per step
    lr: float = 1e-3  # peak learning rate, after warmup
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # AdamW, on weight matrices and embeddings only
    warmup_steps: int = 100  # linear warmup from ~0 to lr
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    seed: int = 0
    device: str = "auto"  # "auto" -> cuda if available else cpu; or any torch device string
    checkpoint_every: int = 500  # steps between last.pt rewrites (also written every epoch end)
    max_steps: int | None = None  # cap on total steps (the schedule is laid out over the cap)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, warmup_steps >= 0, checkpoint_every >= 0: {self}")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1: {self}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 or None, got {self.max_steps}")


@dataclass
class TrainResult:
    model: TrajGPT  # the weights saved at `checkpoint`, in eval mode
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, step, train_loss, val_loss, points_per_s, lr
    checkpoint: Path | None = None  # best.pt when validation data was given, else last.pt
    last_checkpoint: Path | None = None  # full training state (for resuming)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _tensors(ws: WindowSet, block_size: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L', F) float32 features and (N, L') bool mask, truncated to ``block_size`` points."""
    if ws.x.ndim != 3 or ws.x.shape[-1] != n_features:
        raise ValueError(f"windows need shape (N, L, {n_features}), got {ws.x.shape}")
    x = torch.from_numpy(np.ascontiguousarray(ws.x[:, :block_size], dtype=np.float32))
    mask = torch.from_numpy(np.ascontiguousarray(ws.mask[:, :block_size], dtype=bool))
    return x, mask


def _lonlat(ws: WindowSet, block_size: int) -> torch.Tensor:
    """(N, L', 2) float64 (lon, lat) degrees, for models that encode absolute position."""
    return torch.from_numpy(np.ascontiguousarray(np.stack([ws.lon, ws.lat], axis=-1)[:, :block_size], dtype=np.float64))


def _fingerprint(x: torch.Tensor, mask: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    h.update(mask.numpy().tobytes())
    return h.hexdigest()[:16]


def _plain_stats(stats: dict, n_features: int) -> dict:
    mean = [float(v) for v in np.asarray(stats["mean"], dtype=np.float64).ravel()]
    std = [float(v) for v in np.asarray(stats["std"], dtype=np.float64).ravel()]
    if len(mean) != n_features or len(std) != n_features:
        raise ValueError(f"stats need {n_features} means and stds, got {len(mean)} and {len(std)}")
    return {"mean": mean, "std": std}


def _param_groups(model: TrajGPT, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (dim >= 2); never biases or LayerNorm gains (nanoGPT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@torch.no_grad()
def evaluate_loss(
    model: TrajGPT, x: torch.Tensor, mask: torch.Tensor, batch_size: int, device: torch.device, lonlat: torch.Tensor | None = None
) -> float:
    """Mean next-point loss (``model.loss``: MSE in normalized units, or mixture NLL) over a
    dataset, each batch weighted by its real consecutive pairs. ``lonlat`` (N, L, 2) degrees
    only for models that encode absolute position."""
    was_training = model.training
    model.eval()
    total, pairs = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, mb = x[i : i + batch_size].to(device), mask[i : i + batch_size].to(device)
        lb = None if lonlat is None else lonlat[i : i + batch_size].to(device)
        n = int((mb[:, :-1] & mb[:, 1:]).sum())
        if n:
            total += float(model.loss(xb, mb, lonlat=lb)) * n
            pairs += n
    model.train(was_training)
    return total / pairs if pairs else float("nan")


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # independent of global RNG
    return torch.randperm(n, generator=g)


def train(
    train: WindowSet,
    val: WindowSet | None,
    model_config: GPTConfig,
    stats: dict,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a ``TrajGPT`` on ``train`` windows (raw features); returns the model and history.

    ``stats`` is ``{"mean": [F], "std": [F]}`` of the train split (raw units). ``on_epoch`` gets
    each history record as it is made (for logging). Windows longer than ``block_size`` keep
    their first ``block_size`` points.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    stats = _plain_stats(stats, model_config.n_features)
    x, mask = _tensors(train, model_config.block_size, model_config.n_features)
    if len(x) == 0:
        raise ValueError("no training windows")
    if val is not None and len(val) > 0:
        vx, vmask = _tensors(val, model_config.block_size, model_config.n_features)
    else:
        vx = vmask = None
    spatial = model_config.space_encoding != "none"  # the model reads absolute (lon, lat)
    lonlat = _lonlat(train, model_config.block_size) if spatial else None
    vlonlat = _lonlat(val, model_config.block_size) if spatial and vx is not None else None
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total_steps = planned_steps(len(x), cfg)

    torch.manual_seed(cfg.seed)
    model = TrajGPT(model_config)
    model.set_normalization(stats["mean"], stats["std"])
    model.to(device)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    identity = {
        "model_config": model_config.to_dict(),
        "train_config": {k: v for k, v in asdict(cfg).items() if k not in _RESUME_IGNORES},
        "stats": stats,
        "train_data": _fingerprint(x, mask),
        "val_data": _fingerprint(vx, vmask) if vx is not None else None,
    }

    # Training state; replaced by last.pt's when resuming.
    step, history, best_val = 0, [], None
    acc = {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}  # running over the current epoch
    last_path, best_path = checkpoint_dir / LAST, checkpoint_dir / BEST
    resumed = _try_resume(last_path, identity, model, optimizer, scheduler, device)
    if resumed is not None:
        step, history, best_val, acc = resumed["step"], resumed["history"], resumed["best_val"], resumed["acc"]
        log.info("resuming from %s at step %d/%d", last_path, step, total_steps)
    elif best_path.exists():
        best_path.unlink()  # stale: belongs to another run

    def save_last() -> None:
        extra = {
            "kind": "train_state",
            "identity": identity,
            "step": step,
            "total_steps": total_steps,
            "history": history,
            "best_val": best_val,
            "acc": acc,
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(device),
        }
        save_checkpoint(last_path, model, optimizer, extra)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=None, leave=False)
    order, order_epoch = None, -1
    t0 = time.perf_counter()
    while step < total_steps:
        epoch, i = divmod(step, steps_per_epoch)
        if order_epoch != epoch:
            order, order_epoch = _epoch_order(cfg.seed, epoch, len(x)), epoch
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        xb, mb = x[idx].to(device, non_blocking=True), mask[idx].to(device, non_blocking=True)
        lb = lonlat[idx].to(device, non_blocking=True) if lonlat is not None else None

        loss = model.loss(xb, mb, lonlat=lb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1

        loss_value = float(loss.detach())
        acc["loss_sum"] += loss_value
        acc["batches"] += 1
        acc["points"] += int(mb.sum())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")

        epoch_done = step % steps_per_epoch == 0 or step == total_steps
        if epoch_done:
            acc["seconds"] += time.perf_counter() - t0
            val_loss = evaluate_loss(model, vx, vmask, cfg.batch_size, device, vlonlat) if vx is not None else None
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": acc["loss_sum"] / max(acc["batches"], 1),
                "val_loss": val_loss,
                "points_per_s": acc["points"] / max(acc["seconds"], 1e-9),
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(record)
            acc = {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}
            if val_loss is not None and math.isfinite(val_loss) and (best_val is None or val_loss < best_val):
                best_val = val_loss
                save_checkpoint(best_path, model, None, {"kind": "best", "epoch": epoch + 1, "step": step, "val_loss": val_loss, "stats": stats})
            save_last()
            log.info("epoch %d step %d train %.5f val %s", record["epoch"], step, record["train_loss"], val_loss)
            if on_epoch is not None:
                on_epoch(dict(record))
            t0 = time.perf_counter()
        elif cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
            acc["seconds"] += time.perf_counter() - t0
            save_last()
            t0 = time.perf_counter()
    bar.close()
    if not last_path.exists():  # zero steps to run (e.g. max_steps=0)
        save_last()

    use_best = vx is not None and best_path.exists()
    final_path = best_path if use_best else last_path
    if use_best:
        model.load_state_dict(load_checkpoint(best_path, device)["model"])
    return TrainResult(model=model.eval(), history=history, checkpoint=final_path, last_checkpoint=last_path)


def _try_resume(path: Path, identity: dict, model, optimizer, scheduler, device: torch.device) -> dict | None:
    """Load training state from ``path`` into model/optimizer/scheduler/RNG if it matches ``identity``."""
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except Exception as exc:  # unreadable: start over rather than fail forever
        log.warning("cannot read %s (%s): starting a fresh run", path, exc)
        return None
    extra = ckpt.get("extra", {})
    if extra.get("kind") != "train_state" or extra.get("identity") != identity:
        log.warning("%s was written for another config or data: starting a fresh run", path)
        return None
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"], device)
    return {"step": int(extra["step"]), "history": list(extra["history"]), "best_val": extra["best_val"], "acc": dict(extra["acc"])}


# --- the ``train`` stage -------------------------------------------------------------------

CHECKPOINT_STAGE = "checkpoints"  # <root>/checkpoints/<train key>/: last.pt, best.pt (survive retries)


def run_training(
    features_dir: str | Path,
    root=None,
    preset: str = "tutorial",
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    on_epoch: Callable[[dict, float], None] | None = None,
) -> Path:
    """Stage ``train``: train ``preset`` on a features stage; returns the stage directory.

    The directory holds ``model.pt`` (a ``save_checkpoint`` file: the best-validation weights
    with their normalization), ``history.json`` and a manifest with ``preset``, the configs and
    ``final`` (last epoch's losses, best validation loss, parameter count). Its key hashes the
    features and every setting except ``device``, so identical requests return the finished
    directory at once. Checkpoints for resuming live under ``<root>/checkpoints/<key>/``, outside
    the stage's temporary directory, so a crashed or retried run continues where it stopped.
    ``on_epoch(record, fraction_done)`` is called after every epoch.
    """
    from trajfm.features.windows import load_features
    from trajfm.model.config import load_preset
    from trajfm.store import StageWriter, data_root, is_complete, read_manifest, stable_hash

    root = data_root(root)
    model_config = load_preset(preset, **(model_overrides or {}))
    cfg = TrainConfig(**(train_overrides or {}))
    settings = {k: v for k, v in asdict(cfg).items() if k != "device"}
    key = stable_hash(
        {"features": read_manifest(features_dir)["key"], "preset": preset, "model": model_config.to_dict(), "train": settings, "v": 1}
    )
    out = root / "train" / key
    if is_complete(out):
        return out
    sets, stats = load_features(features_dir)
    total = max(planned_steps(len(sets["train"]), cfg), 1)

    def report(record: dict) -> None:
        if on_epoch is not None:
            on_epoch(record, min(record["step"] / total, 1.0))

    result = train(sets["train"], sets["val"], model_config, stats, cfg, root / CHECKPOINT_STAGE / key, on_epoch=report)
    last = result.history[-1] if result.history else {}
    val_losses = [h["val_loss"] for h in result.history if h.get("val_loss") is not None]
    final = {
        "epoch": last.get("epoch"),
        "step": last.get("step"),
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "best_val_loss": min(val_losses) if val_losses else None,
        "n_params": result.model.num_params(),
        "checkpoint": "model.pt",
    }
    with StageWriter(root, "train", key) as w:
        save_checkpoint(
            w.path / "model.pt",
            result.model,
            extra={"preset": preset, "stats": _plain_stats(stats, model_config.n_features), "history": result.history, "final": final},
        )
        w.write_json("history", result.history)
        w.manifest.update(
            preset=preset,
            model_config=model_config.to_dict(),
            train_config=asdict(cfg),
            features_dir=str(features_dir),
            device=str(resolve_device(cfg.device)),
            final=final,
        )
    return out
