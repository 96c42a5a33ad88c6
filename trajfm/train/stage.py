"""The ``train`` stage: ``run_training`` (a features stage in, a train stage out: ``model.pt``,
``history.json``, a manifest) and its command line, ``python -m trajfm.train``, which is what
``torchrun`` launches for data-parallel training, e.g.
``torchrun --nproc_per_node 2 -m trajfm.train --features-dir DIR``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from trajfm.defaults import DEFAULT_PRESET
from trajfm.model.checkpoint import save_checkpoint
from trajfm.model.config import GPTConfig
from trajfm.store import file_sha256
from trajfm.train.checkpoint import initial_weights, plain_stats
from trajfm.train.config import STAGE_IGNORES, TrainConfig, config_identity, planned_steps, resolve_device
from trajfm.train.distributed import global_rank
from trajfm.train.evaluation import ForecastEvaluator
from trajfm.train.loop import TrainResult
from trajfm.train.memory import train

CHECKPOINT_STAGE = "checkpoints"  # <root>/checkpoints/<train key>/: last.pt, best.pt (survive retries)
# Version of the train and pretrain stage keys: bumped when what a key covers changes (2: every
# setting of ``config_identity``, the defaults of settings added after the first release included).
STAGE_KEY_VERSION = 2
CONFIG_ERROR_EXIT = 2  # exit status for a refused configuration or input (as argparse's usage errors)
PROGRESS_PREFIX = "TRAJFM_PROGRESS"  # stdout protocol of `python -m trajfm.train --report-progress`
EPOCH_PREFIX = "TRAJFM_EPOCH"


def stage_model_config(preset: str, model_overrides: dict | None, cfg: TrainConfig) -> GPTConfig:
    """The model config a stage trains: ``init_checkpoint``'s when fine-tuning, else ``preset``'s;
    ``model_overrides`` on top."""
    from trajfm.model.config import load_preset

    if cfg.init_checkpoint:
        base, _, _ = initial_weights(cfg.init_checkpoint)
        return GPTConfig.from_dict({**base.to_dict(), **(model_overrides or {})})
    return load_preset(preset, **(model_overrides or {}))


def final_summary(result: TrainResult, with_fde: bool = False) -> dict:
    """The manifest's ``final``: last epoch's losses, best validation loss (and FDE), parameters."""
    last = result.history[-1] if result.history else {}
    val_losses = [h["val_loss"] for h in result.history if h.get("val_loss") is not None]
    return {
        "epoch": last.get("epoch"),
        "step": last.get("step"),
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "best_val_loss": min(val_losses) if val_losses else None,
        **({"best_val_fde_m": min(h["val_fde_m"] for h in result.history)} if with_fde and val_losses else {}),
        "n_params": result.model.num_params(),
        "checkpoint": "model.pt",
    }


def write_model_stage(root, stage: str, key: str, result: TrainResult, final: dict, **manifest) -> None:
    """Write a trained model's stage: ``model.pt`` (with its preset, statistics, history and
    ``final``), ``history.json``, and the manifest (``manifest``: preset, model_config,
    train_config, stats, inputs; then device, world size, resume step, fine-tuning source, final)."""
    from trajfm.store import StageWriter

    cfg: TrainConfig = manifest.pop("cfg")
    stats = manifest.pop("stats")
    with StageWriter(root, stage, key) as w:
        save_checkpoint(
            w.path / "model.pt",
            result.model,
            extra={"preset": manifest["preset"], "stats": stats, "history": result.history, "final": final},
        )
        w.write_json("history", result.history)
        w.manifest.update(
            **manifest,
            device=str(resolve_device(cfg.device)),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            resumed_from_step=result.start_step,
            init_checkpoint_sha256=file_sha256(cfg.init_checkpoint) if cfg.init_checkpoint else None,
            final=final,
        )


def run_training(
    features_dir: str | Path,
    root=None,
    preset: str = DEFAULT_PRESET,
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    on_epoch: Callable[[dict, float], None] | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
    forecast_evaluator: ForecastEvaluator | None = None,
) -> Path:
    """Stage ``train``: train ``preset`` on a features stage; returns the stage directory.

    The directory holds ``model.pt`` (a ``save_checkpoint`` file: the best-validation weights
    with their normalization), ``history.json`` and a manifest with ``preset``, the configs and
    ``final`` (last epoch's losses, best validation loss, parameter count). Its key hashes the
    features and every setting that can change the numbers (not ``device``, ``log_every``,
    ``progress``), so identical requests return the finished directory at once. Checkpoints for
    resuming live under ``<root>/checkpoints/<key>/``, outside the stage's temporary directory,
    so a crashed, retried or SIGTERM-stopped run continues where it stopped.
    ``on_epoch(record, fraction_done)`` is called after every epoch, ``on_progress(step, total,
    metrics)`` after every step. Under torchrun every process trains and rank 0 alone writes the
    stage (the others return its path at once). ``forecast_evaluator``: for ``select_by="fde"``
    (``trajfm.train.memory.train``).

    Fine-tuning: ``train_overrides={"init_checkpoint": path}`` starts from a checkpoint (e.g. the
    registered champion's ``model.pt``); the model config is the checkpoint's (``model_overrides``
    applied on top, ``preset`` is then only a label) and so are the normalization statistics,
    whatever the new features' statistics are. The checkpoint's content hash is part of the key.
    """
    from trajfm.features.windows import load_features
    from trajfm.store import data_root, is_complete

    root = data_root(root)
    cfg = TrainConfig(**(train_overrides or {}))
    model_config = stage_model_config(preset, model_overrides, cfg)
    key = stage_key(features_dir, preset, model_config, cfg)
    out = root / "train" / key
    if is_complete(out):
        return out
    sets, stats = load_features(features_dir)
    total = max(planned_steps(len(sets["train"]), cfg), 1)

    def report(record: dict) -> None:
        if on_epoch is not None:
            on_epoch(record, min(record["step"] / total, 1.0))

    if cfg.init_checkpoint:
        _, _, stats = initial_weights(cfg.init_checkpoint)
    result = train(
        sets["train"],
        sets["val"],
        model_config,
        stats,
        cfg,
        root / CHECKPOINT_STAGE / key,
        on_epoch=report,
        on_progress=on_progress,
        forecast_evaluator=forecast_evaluator,
    )
    if global_rank() != 0:
        return out
    write_model_stage(
        root,
        "train",
        key,
        result,
        final_summary(result, with_fde=cfg.select_by == "fde"),
        cfg=cfg,
        stats=plain_stats(stats, model_config.n_features),
        preset=preset,
        model_config=model_config.to_dict(),
        train_config=asdict(cfg),
        features_dir=str(features_dir),
    )
    return out


def stage_key(features_dir: str | Path, preset: str, model_config: GPTConfig, cfg: TrainConfig) -> str:
    """The train stage's key: the features, the preset, the model and every setting that changes
    the numbers (not ``STAGE_IGNORES``), and the key scheme's version."""
    from trajfm.store import read_manifest, stable_hash

    return stable_hash(
        {
            "features": read_manifest(features_dir)["key"],
            "preset": preset,
            "model": model_config.to_dict(),
            "train": config_identity(cfg, ignore=STAGE_IGNORES),
            "v": STAGE_KEY_VERSION,
        }
    )


def resolve_evaluator(spec: str | None) -> ForecastEvaluator | None:
    """``MODULE:NAME`` (e.g. ``trajfm.evaluate.forecast:evaluate_forecast``) -> that function."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--forecast-evaluator needs MODULE:NAME, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def progress_printers(updates: int = 50):
    """Callbacks that print about ``updates`` progress lines per run, plus one line per epoch."""

    def on_progress(step: int, total: int, metrics: dict) -> None:
        if step == total or step % max(total // updates, 1) == 0:
            print(PROGRESS_PREFIX, json.dumps({"step": step, "total": total, **metrics}), flush=True)

    def on_epoch(record: dict, fraction: float) -> None:
        print(EPOCH_PREFIX, json.dumps({**record, "fraction": fraction}, default=str), flush=True)

    return on_epoch, on_progress


def main(argv: list[str] | None = None) -> int:
    """``python -m trajfm.train --features-dir DIR [--root R] [--preset P] [--model JSON] [--train JSON]
    [--forecast-evaluator MODULE:NAME]``; under ``torchrun --nproc_per_node N`` it trains
    data-parallel. Prints the stage directory."""
    parser = argparse.ArgumentParser(prog="python -m trajfm.train", description=main.__doc__)
    parser.add_argument("--features-dir", required=True, help="a features stage directory")
    parser.add_argument("--root", default=None, help="data root (default: $TRAJFM_HOME or ./.trajfm)")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--model", default="{}", help="GPTConfig overrides as JSON, e.g. '{\"dropout\": 0}'")
    parser.add_argument("--train", default="{}", help="TrainConfig overrides as JSON, e.g. '{\"epochs\": 2}'")
    parser.add_argument(
        "--forecast-evaluator",
        default=None,
        help="MODULE:NAME of the forecast evaluator select_by 'fde' needs (trajfm.evaluate.forecast:evaluate_forecast)",
    )
    parser.add_argument(
        "--report-progress",
        action="store_true",
        help=f"print '{PROGRESS_PREFIX} <json>' and '{EPOCH_PREFIX} <json>' lines on stdout "
        "(for a supervising process)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_epoch = on_progress = None
    if args.report_progress:
        on_epoch, on_progress = progress_printers()
    try:
        out = run_training(
            args.features_dir,
            args.root,
            args.preset,
            json.loads(args.model),
            json.loads(args.train),
            on_epoch=on_epoch,
            on_progress=on_progress,
            forecast_evaluator=resolve_evaluator(args.forecast_evaluator),
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:  # configuration or input: a retry repeats it
        print(f"trajfm.train: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return CONFIG_ERROR_EXIT
    if global_rank() == 0:
        print(out, flush=True)
    return 0
