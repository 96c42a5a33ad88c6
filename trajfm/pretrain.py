"""Pre-training from streamed shards: the ``pretrain`` stage's training loop.

The loop is ``trajfm.train``'s step (same optimizer, schedule, clipping, bf16 autocast,
``torch.compile``, ``DistributedDataParallel`` under torchrun, SIGTERM checkpointing) fed by a
``StatefulDataLoader`` over ``trajfm.stream.ShardStream`` instead of windows in memory:

- ``batch_size`` is still the global batch: each of the ``W`` ranks reads ``batch_size / W``
  windows per step from its own shards, cut into ``grad_accum_steps`` micro-batches, each loss
  weighted by its share of the global batch's scored targets (their count is summed over ranks
  first), so the step is the gradient of the global batch's mean loss.
- A pre-training run counts steps: ``max_steps``, or ``epochs`` nominal epochs of
  ceil(train windows / batch_size) steps. At the end of each nominal epoch the validation loss
  is streamed over the val shards, ``best.pt`` keeps the best weights, and ``last.pt`` is
  written; ``last.pt`` also every ``checkpoint_every`` steps and on SIGTERM.
- ``last.pt`` holds the loader's state (every rank's) next to the model, optimizer, scheduler
  and RNG states, so a run killed at any point (even SIGKILL) and started again with the same
  arguments continues from its last checkpoint and ends with bit-identical weights
  (tests/test_pretrain_resume_kill.py).

``python -m trajfm.pretrain --shards-dir DIR ...`` runs the stage (under ``torchrun`` data
parallel); ``run_pretraining`` is the same from Python.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from trajfm.model.checkpoint import load_checkpoint, save_checkpoint
from trajfm.model.config import GPTConfig
from trajfm.model.gpt import TrajGPT
from trajfm.stream import ShardStream, make_loader
from trajfm.train import (
    BEST,
    LAST,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    _accumulate,
    _autocast,
    _barrier,
    _config_identity,
    _data_parallel,
    _gather_rng,
    _Group,
    _join_group,
    _log_metrics,
    _mlflow_run,
    _param_groups,
    _plain_stats,
    _stop_on,
    _sum_over_ranks,
    _try_resume,
    autocast_dtype,
    initial_weights,
    lr_factor,
    resolve_device,
    target_count,
)

log = logging.getLogger(__name__)

STAGE = "pretrain"


def planned_stream_steps(n_train_windows: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per nominal epoch, total steps) of a streamed run."""
    per_epoch = max(math.ceil(n_train_windows / cfg.batch_size), 1)
    total = cfg.epochs * per_epoch
    return per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps)


def pretrain_stream(
    shards_dir: str | Path,
    model_config: GPTConfig,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    probabilities: dict[str, float] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
    data_ranks: int | None = None,
) -> TrainResult:
    """Train a ``TrajGPT`` on the train shards of ``shards_dir`` (statistics: its ``stats.json``,
    or ``cfg.init_checkpoint``'s), mixing sources with ``probabilities`` (default: by windows).

    ``data_ranks`` (default: the number of processes W) fixes the data order: the global batch
    is the concatenation of ``data_ranks`` streams' local batches, process ``r`` reading streams
    ``r * data_ranks / W ...``. A 1-process run with ``data_ranks=2`` therefore sees exactly the
    batches of a 2-process run (tests/test_pretrain_ddp.py compares them), and a run can resume
    on another number of processes without changing its data."""
    if cfg.ema_decay > 0 or cfg.select_by != "loss":
        raise ValueError(
            "the streamed trainer keeps the best validation loss: ema_decay must be 0 and select_by 'loss'"
        )
    checkpoint_dir = Path(checkpoint_dir)
    group, device = _join_group(resolve_device(cfg.device))
    try:
        with _stop_on() as stop:
            return _pretrain(
                Path(shards_dir),
                model_config,
                cfg,
                checkpoint_dir,
                probabilities,
                on_epoch,
                on_progress,
                group,
                device,
                stop,
                data_ranks or group.world,
            )
    finally:
        if group.owns:
            import torch.distributed as dist

            dist.destroy_process_group()


def _streamed_val_loss(
    model: TrajGPT, shards_dir: Path, model_config: GPTConfig, batch_size: int, device, amp_dtype, group: _Group
) -> float | None:
    """Mean validation loss over every val window (each rank its shards), weighted by real pairs."""
    stream = ShardStream(
        shards_dir,
        "val",
        group.rank,
        group.world,
        block_size=model_config.block_size,
        lonlat=model_config.inputs.space_encoding != "none",
    )
    if stream.n_windows == 0:
        return None
    was = model.training
    model.eval()
    total, pairs = 0.0, 0
    with torch.no_grad():
        for b in make_loader(stream, batch_size):
            mb = b["mask"].to(device)
            n = int((mb[:, :-1] & mb[:, 1:]).sum())
            if n:
                with _autocast(device, amp_dtype):
                    total += (
                        float(
                            model.loss(b["x"].to(device), mb, lonlat=b["lonlat"].to(device) if "lonlat" in b else None)
                        )
                        * n
                    )
                pairs += n
    model.train(was)
    total, pairs = _sum_over_ranks([total, float(pairs)], group, device)
    return total / pairs if pairs else float("nan")


def _pretrain(
    shards_dir,
    model_config,
    cfg,
    checkpoint_dir,
    probabilities,
    on_epoch,
    on_progress,
    group: _Group,
    device,
    stop,
    data_ranks: int,
) -> TrainResult:
    from trajfm.features.shards import load_manifest

    if data_ranks % group.world:
        raise ValueError(f"data_ranks {data_ranks} must be a multiple of the {group.world} processes")
    if cfg.batch_size % data_ranks:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of the {data_ranks} data ranks (each reads batch_size / W windows)"
        )
    if group.main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(shards_dir)
    stats = json.loads((shards_dir / "stats.json").read_text())
    init_state = None
    if cfg.init_checkpoint:
        init_config, init_state, stats = initial_weights(cfg.init_checkpoint)
        if init_config.to_dict() != model_config.to_dict():
            raise ValueError(
                f"init_checkpoint {cfg.init_checkpoint} was written for another model config: {init_config}"
            )
    stats = _plain_stats(stats, model_config.n_features)
    amp_dtype = autocast_dtype(cfg.amp, device)
    per_epoch, total_steps = planned_stream_steps(manifest["windows"]["train"], cfg)
    P, Q, first = model_config.patching.patch_in, model_config.patching.patch_out, model_config.first_scored_token
    spatial = model_config.inputs.space_encoding != "none"
    per_process = data_ranks // group.world
    streams = [
        ShardStream(shards_dir, "train", v, data_ranks, cfg.seed, probabilities, model_config.block_size, spatial)
        for v in range(group.rank * per_process, (group.rank + 1) * per_process)
    ]
    loaders = [make_loader(s, cfg.batch_size // data_ranks) for s in streams]

    torch.manual_seed(cfg.seed)
    model = TrajGPT(model_config)
    model.set_normalization(stats["mean"], stats["std"])
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    identity = {
        "model_config": model_config.to_dict(),
        "train_config": _config_identity(cfg),
        "stats": stats,
        "shards": manifest["sha256"],
        "probabilities": {s: float(p) for s, p in zip(streams[0].sources, streams[0].p)},
        "data_ranks": data_ranks,
    }
    step, history, best_val = 0, [], None
    acc = {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}
    last_path, best_path = checkpoint_dir / LAST, checkpoint_dir / BEST
    resumed = _try_resume(
        last_path, identity, model, optimizer, scheduler, device, group, kind="stream_state", loaders=loaders
    )
    if resumed is not None:
        step, history, best_val, acc = resumed["step"], resumed["history"], resumed["best_val"], resumed["acc"]
        if group.main:
            log.info("resuming from %s at step %d/%d", last_path, step, total_steps)
    else:
        if group.parallel and not group.main:
            torch.manual_seed(cfg.seed * 1_000_003 + 7919 * group.rank)
        if group.main and best_path.exists():
            best_path.unlink()
    start_step = step
    step_module = _data_parallel(model, group, device)
    loss_fn = torch.compile(step_module) if cfg.compile else step_module
    _barrier(group)

    def save_last() -> None:
        rng = _gather_rng(device, group)
        states = [s for per_rank in _gather_object([ld.state_dict() for ld in loaders], group) for s in per_rank]
        if not group.main:
            return
        save_checkpoint(
            last_path,
            model,
            optimizer,
            {
                "kind": "stream_state",
                "identity": identity,
                "step": step,
                "total_steps": total_steps,
                "history": history,
                "best_val": best_val,
                "acc": acc,
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "loaders": states,
                "world_size": group.world,
            },
        )

    mlflow = _mlflow_run() if group.main else None
    model.train()
    iters = [iter(ld) for ld in loaders]
    t0 = time.perf_counter()
    while step < total_steps:
        parts = [next(it) for it in iters]
        batch = {k: torch.cat([b[k] for b in parts]) for k in parts[0]}
        x, mask = batch["x"], batch["mask"]
        lonlat = batch.get("lonlat")
        micro = [m for m in torch.tensor_split(torch.arange(len(x)), cfg.grad_accum_steps) if len(m)]
        local = [target_count(mask[mi], P, Q, first) for mi in micro]
        n_targets = max(_sum_over_ranks([float(sum(local))], group, device)[0], 1.0)
        weights = [c / n_targets for c in local]
        optimizer.zero_grad(set_to_none=True)
        loss_value = _accumulate(loss_fn, micro, weights, x, mask, lonlat, device, amp_dtype, group)
        points = float(mask.sum())
        if group.parallel:
            loss_value, stopping, points = _sum_over_ranks(
                [loss_value, float(stop["signum"] is not None), points], group, device
            )
        else:
            stopping = stop["signum"] is not None
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        acc["loss_sum"] += loss_value
        acc["batches"] += 1
        acc["points"] += int(points)
        elapsed = acc["seconds"] + time.perf_counter() - t0
        if on_progress is not None and group.main:
            on_progress(
                step,
                total_steps,
                {"epoch": (step - 1) // per_epoch + 1, "loss": loss_value, "lr": scheduler.get_last_lr()[0]},
            )
        if cfg.log_every and step % cfg.log_every == 0:
            _log_metrics(
                mlflow, {"train/step_loss": loss_value, "train/points_per_s": acc["points"] / max(elapsed, 1e-9)}, step
            )
        if step % per_epoch == 0 or step == total_steps:
            acc["seconds"] += time.perf_counter() - t0
            val_loss = _streamed_val_loss(model, shards_dir, model_config, cfg.batch_size, device, amp_dtype, group)
            if val_loss is not None and math.isfinite(val_loss) and (best_val is None or val_loss < best_val):
                best_val = val_loss
                if group.main:
                    save_checkpoint(
                        best_path, model, None, {"kind": "best", "step": step, "val_loss": val_loss, "stats": stats}
                    )
            record = {
                "epoch": (step - 1) // per_epoch + 1,
                "step": step,
                "train_loss": acc["loss_sum"] / max(acc["batches"], 1),
                "val_loss": val_loss,
                "points_per_s": acc["points"] / max(acc["seconds"], 1e-9),
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(record)
            acc = {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}
            save_last()
            _log_metrics(mlflow, {"train/epoch_loss": record["train_loss"], "val/loss": val_loss}, step)
            if group.main and on_epoch is not None:
                on_epoch(dict(record))
            t0 = time.perf_counter()
        elif (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or stopping:
            acc["seconds"] += time.perf_counter() - t0
            save_last()
            t0 = time.perf_counter()
        if stopping and step < total_steps:
            _barrier(group)
            raise TrainingInterrupted(step, total_steps, last_path, stop["signum"] or signal.SIGTERM)
    if resumed is None and total_steps == 0:
        save_last()
    _barrier(group)
    final_path = best_path if best_path.exists() else last_path
    if final_path == best_path:
        model.load_state_dict(load_checkpoint(best_path, device)["model"])
    return TrainResult(
        model=model.eval(), history=history, checkpoint=final_path, last_checkpoint=last_path, start_step=start_step
    )


def _gather_object(obj, group: _Group) -> list:
    if not group.parallel:
        return [obj]
    import torch.distributed as dist

    out = [None] * group.world
    dist.all_gather_object(out, obj)
    return out


# --- the ``pretrain`` stage ----------------------------------------------------------------


def run_pretraining(
    shards_dir: str | Path,
    root=None,
    preset: str = "base-small",
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    probabilities: dict[str, float] | None = None,
    lineage: dict | None = None,
    on_epoch: Callable[[dict, float], None] | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
    data_ranks: int | None = None,
) -> Path:
    """Stage ``pretrain``: ``pretrain_stream`` on a shards stage; returns the stage directory
    (``model.pt`` in the train stage's format, ``history.json``, a manifest with the configs, the
    mixing probabilities, ``lineage`` (e.g. the corpus sha256) and ``final``). Its key hashes the
    shards, configs and probabilities; checkpoints for resuming live in
    ``<root>/checkpoints/pretrain-<key>/``. Under torchrun rank 0 alone writes the stage."""
    from trajfm.model.config import load_preset
    from trajfm.store import StageWriter, data_root, is_complete, read_manifest, stable_hash
    from trajfm.train import CHECKPOINT_STAGE, _global_rank, file_sha256

    root = data_root(root)
    cfg = TrainConfig(**(train_overrides or {}))
    if cfg.init_checkpoint:
        base, _, _ = initial_weights(cfg.init_checkpoint)
        model_config = GPTConfig.from_dict({**base.to_dict(), **(model_overrides or {})})
    else:
        model_config = load_preset(preset, **(model_overrides or {}))
    key = stable_hash(
        {
            "shards": read_manifest(shards_dir)["key"],
            "preset": preset,
            "model": model_config.to_dict(),
            "train": _config_identity(cfg, ignore=("device", "log_every", "progress")),
            "probabilities": probabilities,
            "data_ranks": data_ranks or int(os.environ.get("WORLD_SIZE", "1")),
            "v": 1,
        }
    )
    out = root / STAGE / key
    if is_complete(out):
        return out
    from trajfm.features.shards import load_manifest

    _, total = planned_stream_steps(load_manifest(shards_dir)["windows"]["train"], cfg)

    def report(record: dict) -> None:
        if on_epoch is not None:
            on_epoch(record, min(record["step"] / max(total, 1), 1.0))

    result = pretrain_stream(
        shards_dir,
        model_config,
        cfg,
        root / CHECKPOINT_STAGE / f"pretrain-{key}",
        probabilities,
        on_epoch=report,
        on_progress=on_progress,
        data_ranks=data_ranks,
    )
    if _global_rank() != 0:
        return out
    stats = json.loads((Path(shards_dir) / "stats.json").read_text())
    if cfg.init_checkpoint:
        _, _, stats = initial_weights(cfg.init_checkpoint)
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
    with StageWriter(root, STAGE, key) as w:
        save_checkpoint(
            w.path / "model.pt",
            result.model,
            extra={
                "preset": preset,
                "stats": _plain_stats(stats, model_config.n_features),
                "history": result.history,
                "final": final,
            },
        )
        w.write_json("history", result.history)
        w.manifest.update(
            preset=preset,
            model_config=model_config.to_dict(),
            train_config=asdict(cfg),
            shards_dir=str(shards_dir),
            probabilities=probabilities,
            lineage=lineage or {},
            device=str(resolve_device(cfg.device)),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            resumed_from_step=result.start_step,
            init_checkpoint_sha256=file_sha256(cfg.init_checkpoint) if cfg.init_checkpoint else None,
            final=final,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m trajfm.pretrain --shards-dir DIR [--root R] [--preset P] [--model JSON] [--train JSON]
    [--probabilities JSON] [--lineage JSON]``; under ``torchrun --nproc_per_node N`` data parallel.
    Prints the stage directory."""
    import argparse

    from trajfm.train import _global_rank, _progress_printers

    parser = argparse.ArgumentParser(prog="python -m trajfm.pretrain", description=main.__doc__)
    parser.add_argument("--shards-dir", required=True)
    parser.add_argument("--root", default=None)
    parser.add_argument("--preset", default="base-small")
    parser.add_argument("--model", default="{}")
    parser.add_argument("--train", default="{}")
    parser.add_argument(
        "--probabilities", default="null", help="mixing probability per source as JSON (default: by windows)"
    )
    parser.add_argument("--lineage", default="{}")
    parser.add_argument(
        "--data-ranks", type=int, default=None, help="streams the global batch is drawn from (default: processes)"
    )
    parser.add_argument("--report-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_epoch = on_progress = None
    if args.report_progress:
        on_epoch, on_progress = _progress_printers()
    out = run_pretraining(
        args.shards_dir,
        args.root,
        args.preset,
        json.loads(args.model),
        json.loads(args.train),
        json.loads(args.probabilities),
        json.loads(args.lineage),
        on_epoch=on_epoch,
        on_progress=on_progress,
        data_ranks=args.data_ranks,
    )
    if _global_rank() == 0:
        print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- the corpus side: what the ``pretrain`` flow asks of the library --------------------------


def source_preprocess_params(source) -> dict:
    """Preprocess parameters of a corpus source (``trajfm.data.corpus.CorpusSource``) as the
    ``preprocess`` task takes them (JSON: kind -> fields): ``source.preprocess_params()``, every
    kind resampled at the source's own native interval (``NATIVE_RESAMPLING``: never finer than
    native, so no source is upsampled) with the source's ``clean`` overrides on top."""
    from trajfm.data.clean import params_to_json

    return params_to_json(source.preprocess_params(native=True))


def corpus_mixing(corpus, shards_dir: str | Path) -> dict[str, float]:
    """The corpus' mixing probability of each source (``mixing_probabilities``: temperature
    sampling over weights and sizes), sizes being the train windows of each source's shards
    (0 for a source that made none)."""
    from trajfm.data.corpus import mixing_probabilities
    from trajfm.features.shards import load_manifest

    sources = load_manifest(shards_dir)["sources"]
    counts = {s.name: int(sources.get(s.name, {}).get("windows", {}).get("train", 0)) for s in corpus.sources}
    return mixing_probabilities(corpus, counts)
