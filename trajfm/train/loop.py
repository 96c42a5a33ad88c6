"""The training loop, shared by the in-memory trainer (``trajfm.train.memory``) and the streamed
pre-trainer (``trajfm.train.pretrain``): ``run_loop`` is a loop of a few lines over small step
functions (``train_step``, ``report_step``, ``end_epoch``, ``save_last``, ``finish``) on a ``Run``,
the state of one training run. The trainers differ only in how they make a batch and how they
measure the validation loss.

SIGTERM: the loop finishes its step, writes ``last.pt`` and raises ``TrainingInterrupted`` (the
previous handler is restored afterwards). At the end of each epoch (nominal epochs for the
streamed trainer) the model (with ``ema_decay``: the weight average) is validated, ``best.pt``
keeps the best one and ``last.pt`` is rewritten; ``last.pt`` also every ``checkpoint_every``
steps. Metrics go to MLflow only when the caller has an active run (``mlflow.active_run()``);
MLflow is never imported here, and no run is started.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from trajfm.model.checkpoint import load_checkpoint
from trajfm.model.config import GPTConfig
from trajfm.model.gpt import TrajGPT
from trajfm.train.averaging import WeightAverage
from trajfm.train.checkpoint import BEST, LAST, resume_or_start, save_average, save_best, save_last
from trajfm.train.config import TrainConfig, autocast, autocast_dtype, optimizer_and_schedule
from trajfm.train.distributed import Group, barrier, data_parallel, no_sync, sum_over_ranks

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: TrajGPT  # the weights saved at `checkpoint`, in eval mode
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, step, train_loss, val_loss, points_per_s, lr
    checkpoint: Path | None = None  # best.pt when validation data was given, else last.pt (average.pt with ema_decay)
    last_checkpoint: Path | None = None  # full training state (for resuming)
    start_step: int = 0  # the step this call started from: > 0 when it resumed from last.pt


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped training after ``step``; the state is in ``checkpoint``: train again to resume."""

    def __init__(self, step: int, total_steps: int, checkpoint: Path, signum: int = signal.SIGTERM):
        self.step, self.total_steps, self.checkpoint, self.signum = step, total_steps, checkpoint, signum
        super().__init__(
            f"{signal.Signals(signum).name} received: training stopped after step {step}/{total_steps}; "
            f"its state is saved in {checkpoint} and the same call resumes from there"
        )


@contextlib.contextmanager
def stop_on(signals: tuple[int, ...] = (signal.SIGTERM,)):
    """While active, the signals set ``flag["signum"]`` instead of killing the process; the
    previous handlers come back afterwards. Only the main thread can install handlers (a Prefect
    task may run in a worker thread): elsewhere the flag is never set."""
    flag: dict = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag["signum"] = signum

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def mlflow_run():
    """The ``mlflow`` module when the caller has an active run, else None (never imports it)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        return mlflow if mlflow.active_run() is not None else None
    except Exception:  # a half-initialised or mocked module
        return None


def log_metrics(mlflow, metrics: dict, step: int) -> None:
    if mlflow is None:
        return
    try:
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}, step=step
        )
    except Exception as exc:  # tracking trouble must never stop training
        log.warning("could not log metrics to MLflow: %s", exc)


# --- one optimizer step ----------------------------------------------------------------------


def target_count(mask: torch.Tensor, patch_in: int = 1, patch_out: int = 1, first_token: int = 0) -> int:
    """Targets the next-point loss scores in a (B, L) batch: (token, predicted point) pairs where
    the token (its last point) and the predicted point are real, as ``TrajGPT.loss`` counts them.

    With one point per token that is the number of real consecutive pairs. ``TrajGPT.loss`` is a
    mean over these (times the number of target values for the MSE head; tokens before
    ``first_token`` (``GPTConfig.first_scored_token``) are not scored), so a micro-batch's
    loss times its count over the global batch's count adds up to the global batch's loss.
    """
    P, Q = patch_in, patch_out
    m = mask.to(torch.bool)
    extra = (-m.shape[1]) % P
    if extra:
        m = torch.cat([m, m.new_zeros(m.shape[0], extra)], dim=1)
    L = m.shape[1]
    token = m[:, P - 1 :: P]  # (B, Lt) real tokens
    total = 0
    for q in range(Q):  # output q of token i is point (i+1)P + q
        idx = torch.arange(1, token.shape[1] + 1) * P + q
        inside = (idx < L) & (torch.arange(token.shape[1]) >= first_token)  # tokens before first_token are not scored
        total += int((token[:, inside] & m[:, idx[inside]]).sum())
    return total


def accumulate(loss_fn, micro, weights, x, mask, lonlat, device, amp_dtype, group: Group) -> float:
    """Forward and backward each micro-batch of this rank's slice of the global batch; returns
    this rank's share of the global batch's loss.

    Each micro-batch's loss is weighted by its share ``weights[i]`` of the global batch's scored
    targets, so the shares add up to the global batch's mean (one micro-batch on one process:
    weight 1, the plain step). Under DDP the gradients are averaged over the ``W`` ranks, so the
    weighted loss is scaled by ``W`` to make that average the global batch's gradient; they are
    synchronised at the last micro-batch only (``no_sync`` before: accumulate locally)."""
    total = torch.zeros((), device=device)
    scale = group.world if group.parallel else 1
    for i, (mi, w) in enumerate(zip(micro, weights)):
        xb, mb = x[mi].to(device, non_blocking=True), mask[mi].to(device, non_blocking=True)
        lb = lonlat[mi].to(device, non_blocking=True) if lonlat is not None else None
        sync = i == len(micro) - 1 or not group.parallel
        with contextlib.nullcontext() if sync else no_sync(loss_fn):
            with autocast(device, amp_dtype):
                loss = loss_fn(xb, mb, lb)
            loss = loss if (w == 1.0 and scale == 1) else loss * (w * scale)
            loss.backward()
        total = total + loss.detach().float() / scale
    return float(total)


# --- a run ---------------------------------------------------------------------------------------


def new_acc() -> dict:
    """Running sums over the current epoch."""
    return {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}


@dataclass
class Batch:
    """One optimizer step's input on this rank: windows, and the micro-batches cut from them."""

    x: torch.Tensor
    mask: torch.Tensor
    lonlat: torch.Tensor | None
    micro: list[torch.Tensor]  # indices into x, one tensor per micro-batch
    weights: list[float]  # each micro-batch's share of the global batch's scored targets
    points: int = 0  # real points of the global batch (when ``local_points``: of this rank's part)
    local_points: bool = False  # True: ``points`` are summed over ranks


@dataclass
class Run:
    """The state of one training run: what the step functions and the checkpoints read and update."""

    cfg: TrainConfig
    model: TrajGPT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    group: Group
    device: torch.device
    stop: dict  # ``stop_on``'s flag
    checkpoint_dir: Path
    identity: dict  # what ``last.pt`` must have been written for to resume
    stats: dict  # normalization statistics, kept in the checkpoints
    total_steps: int
    per_epoch: int  # steps per (nominal) epoch
    kind: str = "train_state"  # of ``last.pt``: "train_state" or "stream_state"
    has_val: bool = True  # validation data: the kept model is ``best.pt``
    loaders: tuple = ()  # stateful data loaders (streamed): their states are in ``last.pt``
    on_epoch: Callable[[dict], None] | None = None
    on_progress: Callable[[int, int, dict], None] | None = None
    amp_dtype: torch.dtype | None = None
    loss_fn: Callable | None = None  # ``model.loss`` (under DDP, compiled) that a step calls
    ema: WeightAverage | None = None
    step: int = 0
    history: list = field(default_factory=list)
    best_val: float | None = None
    acc: dict = field(default_factory=new_acc)
    start_step: int = 0
    resumed: bool = False
    mlflow: object = None
    bar: object = None

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / LAST

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / BEST

    def averaged(self):
        """With ``ema_decay``: the weight average in the model for the block."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()


def init_model(model_config: GPTConfig, stats: dict, init_state: dict | None, seed: int, device) -> TrajGPT:
    """A ``TrajGPT`` seeded by ``seed`` (or with ``init_state``), normalizing by ``stats``, on ``device``."""
    torch.manual_seed(seed)
    model = TrajGPT(model_config)
    model.set_normalization(stats["mean"], stats["std"])
    if init_state is not None:
        model.load_state_dict(init_state)
    return model.to(device)


def start_run(
    cfg: TrainConfig, model_config: GPTConfig, init_state: dict | None, group: Group, device, **fields
) -> Run:
    """Model, optimizer and schedule, resumed from ``last.pt`` when it matches; then the step
    module (DDP in a group, which broadcasts rank 0's state), the weight average and
    ``torch.compile``. ``fields``: the rest of ``Run``'s."""
    model = init_model(model_config, fields["stats"], init_state, cfg.seed, device)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, device, fields["total_steps"])
    run = Run(cfg, model, optimizer, scheduler, group, device, amp_dtype=autocast_dtype(cfg.amp, device), **fields)
    resumed = resume_or_start(run)
    step_module = data_parallel(model, group, device)
    if cfg.ema_decay > 0:
        run.ema = WeightAverage(model, cfg.ema_decay)  # identical on every rank
        if resumed is not None:
            run.ema.load(resumed["ema"])
    barrier(group)  # every rank has read last.pt before rank 0 may rewrite it
    run.loss_fn = torch.compile(step_module) if cfg.compile else step_module
    return run


# --- the loop -----------------------------------------------------------------------------------


def train_step(run: Run, batch: Batch) -> tuple[float, bool, int]:
    """One optimizer step; returns the global batch's loss, whether any rank was told to stop, and
    the global batch's real points."""
    run.optimizer.zero_grad(set_to_none=True)
    loss_value = accumulate(
        run.loss_fn, batch.micro, batch.weights, batch.x, batch.mask, batch.lonlat, run.device, run.amp_dtype, run.group
    )
    stopping, points = run.stop["signum"] is not None, batch.points
    if run.group.parallel and batch.local_points:
        loss_value, stopping, points = sum_over_ranks(
            [loss_value, float(stopping), float(points)], run.group, run.device
        )
    elif run.group.parallel:
        loss_value, stopping = sum_over_ranks([loss_value, float(stopping)], run.group, run.device)
    if run.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    if run.ema is not None:
        run.ema.update(run.step)
    return loss_value, bool(stopping), int(points)


def report_step(run: Run, loss_value: float, points: int, t0: float) -> None:
    """Add the step to the epoch's sums; progress bar, ``on_progress`` and step metrics."""
    run.acc["loss_sum"] += loss_value
    run.acc["batches"] += 1
    run.acc["points"] += points
    elapsed = run.acc["seconds"] + time.perf_counter() - t0
    lr = run.scheduler.get_last_lr()[0]
    run.bar.update(1)
    run.bar.set_postfix(loss=f"{loss_value:.4f}", pts_s=f"{run.acc['points'] / max(elapsed, 1e-9):.0f}")
    if run.on_progress is not None and run.group.main:
        epoch = (run.step - 1) // run.per_epoch + 1
        run.on_progress(run.step, run.total_steps, {"epoch": epoch, "loss": loss_value, "lr": lr})
    if run.cfg.log_every and run.step % run.cfg.log_every == 0:
        metrics = {
            "train/step_loss": loss_value,
            "train/lr": lr,
            "train/points_per_s": run.acc["points"] / max(elapsed, 1e-9),
        }
        log_metrics(run.mlflow, metrics, run.step)


def end_epoch(run: Run, validate: Callable[[], tuple[float | None, dict]]) -> None:
    """Validate (the weight average, with ``ema_decay``), keep ``best.pt``, record the epoch,
    rewrite ``last.pt``. ``validate()`` gives (the score kept by, lower is better; the scores:
    ``val_loss`` and any other, in ``best.pt`` and, when not None, in the history)."""
    epoch = (run.step - 1) // run.per_epoch + 1
    with run.averaged():
        score, scores = validate()
        if score is not None and math.isfinite(score) and (run.best_val is None or score < run.best_val):
            run.best_val = score
            save_best(run, epoch, scores)
    record = {
        "epoch": epoch,
        "step": run.step,
        "train_loss": run.acc["loss_sum"] / max(run.acc["batches"], 1),
        "val_loss": scores["val_loss"],
        "points_per_s": run.acc["points"] / max(run.acc["seconds"], 1e-9),
        "lr": run.optimizer.param_groups[0]["lr"],
        **{k: v for k, v in scores.items() if k != "val_loss" and v is not None},
    }
    run.history.append(record)
    run.acc = new_acc()
    save_last(run)
    metrics = {"train/epoch_loss": record["train_loss"], "val/loss": record["val_loss"], "epoch": epoch}
    log_metrics(run.mlflow, {**metrics, "val/fde_m": scores.get("val_fde_m")}, run.step)
    if run.group.main:
        log.info("epoch %d step %d train %.5f val %s", epoch, run.step, record["train_loss"], record["val_loss"])
        if run.on_epoch is not None:
            run.on_epoch(dict(record))


def finish(run: Run) -> TrainResult:
    """The kept model: ``best.pt``'s weights with validation data, else the weight average
    (written to ``average.pt``) or the last weights."""
    run.bar.close()
    if not run.resumed and run.total_steps == 0:  # zero steps to run (e.g. max_steps=0)
        save_last(run)
    barrier(run.group)  # rank 0 has written best.pt and last.pt
    final = run.last_path
    if run.has_val and run.best_path.exists():
        final = run.best_path
        run.model.load_state_dict(load_checkpoint(run.best_path, run.device)["model"])
    elif run.ema is not None:  # no epoch to pick: the average at the end
        run.ema.apply()
        final = save_average(run)
        barrier(run.group)
    return TrainResult(
        model=run.model.eval(),
        history=run.history,
        checkpoint=final,
        last_checkpoint=run.last_path,
        start_step=run.start_step,
    )


def run_loop(
    run: Run, next_batch: Callable[[], Batch], validate: Callable[[], tuple[float | None, dict]], show: bool
) -> TrainResult:
    """Train ``run`` to its last step: steps, epoch ends, checkpoints; ``show`` a progress bar."""
    run.mlflow = mlflow_run() if run.group.main else None
    run.model.train()
    run.bar = tqdm(total=run.total_steps, initial=run.step, desc="train", unit="step", disable=not show, leave=False)
    t0 = time.perf_counter()
    while run.step < run.total_steps:
        loss_value, stopping, points = train_step(run, next_batch())
        report_step(run, loss_value, points, t0)
        if run.step % run.per_epoch == 0 or run.step == run.total_steps:
            run.acc["seconds"] += time.perf_counter() - t0
            end_epoch(run, validate)
            t0 = time.perf_counter()
        elif (run.cfg.checkpoint_every > 0 and run.step % run.cfg.checkpoint_every == 0) or stopping:
            run.acc["seconds"] += time.perf_counter() - t0
            save_last(run)
            t0 = time.perf_counter()
        if stopping and run.step < run.total_steps:
            run.bar.close()
            barrier(run.group)
            raise TrainingInterrupted(run.step, run.total_steps, run.last_path, run.stop["signum"] or signal.SIGTERM)
    return finish(run)
