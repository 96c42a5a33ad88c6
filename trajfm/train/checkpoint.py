"""Checkpoints: where a run starts from (``init_checkpoint`` weights, or ``last.pt`` to resume)
and what it writes (``last.pt``, ``best.pt``, ``average.pt``).

``checkpoint_dir/last.pt`` holds everything needed to resume (model, optimizer, scheduler, step,
RNG states of every rank, history, the weight average, the streamed loaders' states) and is
rewritten atomically (``trajfm.model.checkpoint.save_checkpoint``). A run resumes from it when it
was written by a run of the same kind for the same identity (model config, ``config_identity``,
statistics, data); otherwise it starts afresh. Only rank 0 writes; every rank calls the savers
(they gather every rank's state). The savers take the trainer's ``Run`` (``trajfm.train.loop``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from trajfm.model.checkpoint import load_checkpoint, save_checkpoint
from trajfm.model.config import GPTConfig
from trajfm.train.config import TrainConfig
from trajfm.train.distributed import Group, gather_object

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
AVERAGE = "average.pt"  # the weight average at the end, when there is no validation data to pick a best epoch


def plain_stats(stats: dict, n_features: int) -> dict:
    """``{"mean": [F], "std": [F]}`` as plain floats (JSON and ``weights_only`` friendly)."""
    mean = [float(v) for v in np.asarray(stats["mean"], dtype=np.float64).ravel()]
    std = [float(v) for v in np.asarray(stats["std"], dtype=np.float64).ravel()]
    if len(mean) != n_features or len(std) != n_features:
        raise ValueError(f"stats need {n_features} means and stds, got {len(mean)} and {len(std)}")
    return {"mean": mean, "std": std}


def initial_weights(path: str | os.PathLike) -> tuple[GPTConfig, dict, dict]:
    """(model config, state_dict, normalization stats) of a checkpoint to fine-tune from, loaded
    with ``weights_only=True``; the stats are the checkpoint's own (its model was trained on them)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = GPTConfig.from_dict(ckpt["config"])
    stats = ckpt.get("extra", {}).get("stats")
    if stats is None:  # older checkpoints: the normalization buffers hold them
        stats = {"mean": ckpt["model"]["feat_mean"].tolist(), "std": ckpt["model"]["feat_std"].tolist()}
    return config, ckpt["model"], plain_stats(stats, config.n_features)


def starting_weights(cfg: TrainConfig, model_config: GPTConfig, stats: dict) -> tuple[dict | None, dict]:
    """(state_dict to start from or None, normalization stats): ``cfg.init_checkpoint``'s (its
    config must equal ``model_config``), else fresh weights and ``stats``."""
    init_state = None
    if cfg.init_checkpoint:
        init_config, init_state, stats = initial_weights(cfg.init_checkpoint)
        if init_config.to_dict() != model_config.to_dict():
            raise ValueError(
                f"init_checkpoint {cfg.init_checkpoint} was written for another model config: {init_config}"
            )
    return init_state, plain_stats(stats, model_config.n_features)


# --- RNG states ------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def gather_rng(device: torch.device, group: Group) -> dict:
    """RNG state to checkpoint: this process's, or, in a group, every rank's (list by rank)."""
    state = rng_state(device)
    if not group.parallel:
        return state
    return {"ranks": gather_object(state, group)}


def restore_rng(state: dict, device: torch.device, group: Group) -> None:
    if "ranks" in state:  # written by a group
        ranks = state["ranks"]
        if len(ranks) == group.world:
            set_rng_state(ranks[group.rank], device)
        else:  # other world size: the run continues, not bit for bit
            log.warning(
                "checkpoint written by %d processes, resuming with %d: RNG streams restart", len(ranks), group.world
            )
            torch.manual_seed(torch.initial_seed() + group.rank)
    elif group.parallel and not group.main:  # a single process wrote it: rank 0 takes its stream
        torch.manual_seed(torch.initial_seed() + 7919 * group.rank)
    else:
        set_rng_state(state, device)


# --- resume ----------------------------------------------------------------------------------


def try_resume(
    path: Path,
    identity: dict,
    model,
    optimizer,
    scheduler,
    device: torch.device,
    group: Group,
    kind: str = "train_state",
    loaders=(),
) -> dict | None:
    """Load training state from ``path`` into model/optimizer/scheduler/RNG if it matches ``identity``
    and was written by a run of ``kind`` (``train_state``; ``stream_state`` for the streamed
    pre-training, whose ``loaders`` get their states back: by data rank, in order)."""
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except Exception as exc:  # unreadable: start over rather than fail forever
        log.warning("cannot read %s (%s): starting a fresh run", path, exc)
        return None
    extra = ckpt.get("extra", {})
    if extra.get("kind") != kind or extra.get("identity") != identity:
        log.warning("%s was written for another config or data: starting a fresh run", path)
        return None
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    for i, ld in enumerate(loaders):
        ld.load_state_dict(extra["loaders"][group.rank * len(loaders) + i])
    restore_rng(extra["rng"], device, group)
    return {
        "step": int(extra["step"]),
        "history": list(extra["history"]),
        "best_val": extra["best_val"],
        "acc": dict(extra["acc"]),
        "ema": extra.get("ema"),
    }


def resume_or_start(run) -> dict | None:
    """Continue ``run`` from its ``last.pt`` when that matches (returns what ``try_resume`` read),
    else start afresh: other ranks take their own dropout streams (rank 0 keeps the seed's), and
    a stale ``best.pt`` of another run goes."""
    resumed = try_resume(
        run.last_path,
        run.identity,
        run.model,
        run.optimizer,
        run.scheduler,
        run.device,
        run.group,
        kind=run.kind,
        loaders=run.loaders,
    )
    if resumed is not None:
        run.step, run.history, run.best_val, run.acc = (
            resumed["step"],
            resumed["history"],
            resumed["best_val"],
            resumed["acc"],
        )
        run.start_step, run.resumed = run.step, True
        if run.group.main:
            log.info("resuming from %s at step %d/%d", run.last_path, run.step, run.total_steps)
    else:
        if run.group.parallel and not run.group.main:  # dropout masks differ between ranks
            torch.manual_seed(run.cfg.seed * 1_000_003 + 7919 * run.group.rank)
        if run.group.main and run.best_path.exists():
            run.best_path.unlink()  # stale: belongs to another run
    return resumed


# --- writing -----------------------------------------------------------------------------------


def save_last(run) -> None:
    """Rewrite ``last.pt``. Collective: every rank calls it (RNG and loader states are gathered)."""
    rng = gather_rng(run.device, run.group)
    loaders = None
    if run.loaders:
        loaders = [
            s for per_rank in gather_object([ld.state_dict() for ld in run.loaders], run.group) for s in per_rank
        ]
    if not run.group.main:
        return
    extra = {
        "kind": run.kind,
        "identity": run.identity,
        "step": run.step,
        "total_steps": run.total_steps,
        "history": run.history,
        "best_val": run.best_val,
        "acc": run.acc,
        "scheduler": run.scheduler.state_dict(),
        "rng": rng,
        **({"loaders": loaders} if loaders is not None else {}),
        "world_size": run.group.world,
        "ema": run.ema.state() if run.ema is not None else None,
    }
    save_checkpoint(run.last_path, run.model, run.optimizer, extra)


def save_best(run, epoch: int, scores: dict) -> None:
    """Write ``best.pt``: the model's weights now, with the epoch's validation ``scores`` (rank 0)."""
    if run.group.main:
        save_checkpoint(
            run.best_path,
            run.model,
            None,
            {"kind": "best", "epoch": epoch, "step": run.step, **scores, "stats": run.stats},
        )


def save_average(run) -> Path:
    """Write ``average.pt`` (rank 0): the model, holding the weight average, at the end."""
    path = run.checkpoint_dir / AVERAGE
    if run.group.main:
        save_checkpoint(path, run.model, None, {"kind": "average", "step": run.step, "stats": run.stats})
    return path
