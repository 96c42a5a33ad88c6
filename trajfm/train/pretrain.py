"""Pre-training from streamed shards: the ``pretrain`` stage.

The loop is ``trajfm.train.loop``'s (same step, optimizer, schedule, clipping, bf16 autocast,
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

``python -m trajfm.train.pretrain --shards-dir DIR ...`` runs the stage (under ``torchrun`` data
parallel); ``run_pretraining`` is the same from Python.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from trajfm.model.config import GPTConfig
from trajfm.model.gpt import TrajGPT
from trajfm.stream import ShardStream, make_loader
from trajfm.train.checkpoint import initial_weights, plain_stats, starting_weights
from trajfm.train.config import STAGE_IGNORES, TrainConfig, autocast, config_identity, resolve_device
from trajfm.train.distributed import Group, global_rank, process_group, sum_over_ranks
from trajfm.train.loop import Batch, TrainResult, run_loop, start_run, stop_on, target_count
from trajfm.train.stage import (
    CHECKPOINT_STAGE,
    STAGE_KEY_VERSION,
    final_summary,
    progress_printers,
    stage_model_config,
    write_model_stage,
)

STAGE = "pretrain"


def planned_stream_steps(n_train_windows: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per nominal epoch, total steps) of a streamed run."""
    per_epoch = max(math.ceil(n_train_windows / cfg.batch_size), 1)
    total = cfg.epochs * per_epoch
    return per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps)


def streamed_val_loss(
    model: TrajGPT, shards_dir: Path, model_config: GPTConfig, batch_size: int, device, amp_dtype, group: Group
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
                lonlat = b["lonlat"].to(device) if "lonlat" in b else None
                with autocast(device, amp_dtype):
                    total += float(model.loss(b["x"].to(device), mb, lonlat=lonlat)) * n
                pairs += n
    model.train(was)
    total, pairs = sum_over_ranks([total, float(pairs)], group, device)
    return total / pairs if pairs else float("nan")


def check_data_ranks(cfg: TrainConfig, data_ranks: int, group: Group) -> None:
    if data_ranks % group.world:
        raise ValueError(f"data_ranks {data_ranks} must be a multiple of the {group.world} processes")
    if cfg.batch_size % data_ranks:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of the {data_ranks} data ranks "
            "(each reads batch_size / W windows)"
        )


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
    from trajfm.features.shards import load_manifest

    if cfg.ema_decay > 0 or cfg.select_by != "loss":
        raise ValueError(
            "the streamed trainer keeps the best validation loss: ema_decay must be 0 and select_by 'loss'"
        )
    shards_dir, checkpoint_dir = Path(shards_dir), Path(checkpoint_dir)
    with process_group(resolve_device(cfg.device)) as (group, device), stop_on() as stop:
        data_ranks = data_ranks or group.world
        check_data_ranks(cfg, data_ranks, group)
        if group.main:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        manifest = load_manifest(shards_dir)
        init_state, stats = starting_weights(cfg, model_config, json.loads((shards_dir / "stats.json").read_text()))
        per_epoch, total_steps = planned_stream_steps(manifest["windows"]["train"], cfg)
        streams = rank_streams(shards_dir, cfg, model_config, group, data_ranks, probabilities)
        loaders = [make_loader(s, cfg.batch_size // data_ranks) for s in streams]
        identity = {
            "model_config": model_config.to_dict(),
            "train_config": config_identity(cfg),
            "stats": stats,
            "shards": manifest["sha256"],
            "probabilities": {s: float(p) for s, p in zip(streams[0].sources, streams[0].p)},
            "data_ranks": data_ranks,
        }
        run = start_run(
            cfg,
            model_config,
            init_state,
            group,
            device,
            stop=stop,
            checkpoint_dir=checkpoint_dir,
            identity=identity,
            stats=stats,
            total_steps=total_steps,
            per_epoch=per_epoch,
            kind="stream_state",
            loaders=tuple(loaders),
            on_epoch=on_epoch,
            on_progress=on_progress,
        )

        def validate() -> tuple[float | None, dict]:
            val_loss = streamed_val_loss(
                run.model, shards_dir, model_config, cfg.batch_size, device, run.amp_dtype, group
            )
            return val_loss, {"val_loss": val_loss}

        iters = [iter(ld) for ld in loaders]
        return run_loop(run, stream_batches(iters, cfg, model_config, group, device), validate, show=False)


def rank_streams(
    shards_dir: Path, cfg: TrainConfig, model_config: GPTConfig, group: Group, data_ranks: int, probabilities
) -> list[ShardStream]:
    """The train streams this process reads: data ranks ``r * data_ranks / W`` onwards."""
    per_process = data_ranks // group.world
    spatial = model_config.inputs.space_encoding != "none"  # the model reads absolute (lon, lat)
    return [
        ShardStream(shards_dir, "train", v, data_ranks, cfg.seed, probabilities, model_config.block_size, spatial)
        for v in range(group.rank * per_process, (group.rank + 1) * per_process)
    ]


def stream_batches(iters: list, cfg: TrainConfig, model_config: GPTConfig, group: Group, device) -> Callable[[], Batch]:
    """The next step's batch: this rank's streams' local batches, concatenated, in micro-batches
    weighted by their share of the global batch's scored targets (counted over all ranks)."""
    P, Q, first = model_config.patching.patch_in, model_config.patching.patch_out, model_config.first_scored_token

    def next_batch() -> Batch:
        parts = [next(it) for it in iters]
        batch = {k: torch.cat([b[k] for b in parts]) for k in parts[0]}
        x, mask = batch["x"], batch["mask"]
        micro = [m for m in torch.tensor_split(torch.arange(len(x)), cfg.grad_accum_steps) if len(m)]
        local = [target_count(mask[mi], P, Q, first) for mi in micro]
        n_targets = max(sum_over_ranks([float(sum(local))], group, device)[0], 1.0)
        weights = [c / n_targets for c in local]
        return Batch(x, mask, batch.get("lonlat"), micro, weights, points=int(mask.sum()), local_points=True)

    return next_batch


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
    from trajfm.features.shards import load_manifest
    from trajfm.store import data_root, is_complete, read_manifest, stable_hash

    root = data_root(root)
    cfg = TrainConfig(**(train_overrides or {}))
    model_config = stage_model_config(preset, model_overrides, cfg)
    key = stable_hash(
        {
            "shards": read_manifest(shards_dir)["key"],
            "preset": preset,
            "model": model_config.to_dict(),
            "train": config_identity(cfg, ignore=STAGE_IGNORES),
            "probabilities": probabilities,
            "data_ranks": data_ranks or int(os.environ.get("WORLD_SIZE", "1")),
            "v": STAGE_KEY_VERSION,
        }
    )
    out = root / STAGE / key
    if is_complete(out):
        return out
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
    if global_rank() != 0:
        return out
    stats = json.loads((Path(shards_dir) / "stats.json").read_text())
    if cfg.init_checkpoint:
        _, _, stats = initial_weights(cfg.init_checkpoint)
    write_model_stage(
        root,
        STAGE,
        key,
        result,
        final_summary(result),
        cfg=cfg,
        stats=plain_stats(stats, model_config.n_features),
        preset=preset,
        model_config=model_config.to_dict(),
        train_config=asdict(cfg),
        shards_dir=str(shards_dir),
        probabilities=probabilities,
        lineage=lineage or {},
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m trajfm.train.pretrain --shards-dir DIR [--root R] [--preset P] [--model JSON]
    [--train JSON] [--probabilities JSON] [--lineage JSON]``; under ``torchrun --nproc_per_node N``
    data parallel. Prints the stage directory."""
    parser = argparse.ArgumentParser(prog="python -m trajfm.train.pretrain", description=main.__doc__)
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
        on_epoch, on_progress = progress_printers()
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
    if global_rank() == 0:
        print(out, flush=True)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
