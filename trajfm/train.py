"""Training loop: AdamW, linear warmup + cosine decay, gradient clipping and accumulation, bf16
autocast on CUDA, optional ``torch.compile``, atomic resumable checkpoints, data parallel under
``torchrun``.

Deterministic: the same windows, statistics and configs give the same losses. Model init uses
``torch.manual_seed(seed)``; the batch order of epoch ``e`` is a permutation drawn from its own
generator seeded from ``(seed, e)``, so a run resumed at any step sees exactly the batches and
dropout masks (global RNG state is checkpointed) an uninterrupted run would.

``batch_size`` is the number of windows per optimizer step, whatever the number of processes and
``grad_accum_steps``: a step takes the next ``batch_size`` windows of the epoch's order (the
global batch), gives process ``r`` of ``W`` the r-th of W contiguous slices of it, and cuts that
slice into ``grad_accum_steps`` micro-batches. Each micro-batch's loss is weighted by its share
of the global batch's scored targets (``target_count``) before ``backward``; under torchrun the
model's loss runs inside ``torch.nn.parallel.DistributedDataParallel``, which averages the
gradients over the W processes (bucketed, overlapped with ``backward``; the weighted loss is
scaled by W to turn that average into the global batch's gradient; ``no_sync`` while
accumulating), so one process, W processes and any accumulation compute the same gradient up to
float rounding (tests/test_train_ddp.py). Accumulation and processes are then
memory and speed knobs; they never change what is learned.

``checkpoint_dir/last.pt`` holds everything needed to resume (model, optimizer, scheduler, step,
RNG states, history) and is rewritten atomically every ``checkpoint_every`` steps, at the end of
each epoch, and when the process receives SIGTERM (the loop finishes its step, writes the
checkpoint and raises ``TrainingInterrupted``; the previous handler is restored afterwards).
When it exists and was written for the same model config, train config (ignoring the settings
in ``_RESUME_IGNORES``, which change nothing in the numbers), statistics and data, ``train``
resumes from it; a run that had finished returns at once. With validation data, ``best.pt``
keeps the weights of the epoch with the lowest validation loss, or with ``select_by="fde"`` the
lowest forecast error on the validation windows (FDE in metres at ``select_horizon`` steps from
``select_context`` points; each epoch's ``val_fde_m`` is in the history).

``ema_decay`` > 0 keeps an exponential moving average of the weights beside the training weights
(``WeightAverage``; in ``last.pt`` too, so a resumed run continues it bit-for-bit): validation,
``best.pt`` and the returned model use the average (without validation data, the final average
is written to ``average.pt``); the optimizer keeps updating the training weights.

Distributed: when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``train``
joins the process group (gloo on CPU, nccl on CUDA, one GPU per ``LOCAL_RANK``), or uses one the
caller already set up. Every process holds all windows and computes the same batch order; only
rank 0 writes checkpoints, shows progress and logs metrics. ``checkpoint_dir`` must be on a
file system every process sees. ``python -m trajfm.train`` runs the ``train`` stage from the
command line, e.g. ``torchrun --nproc_per_node 2 -m trajfm.train --features-dir DIR``.

Metrics go to MLflow only when the caller has an active run (``mlflow.active_run()``); MLflow is
never imported here, and no run is started.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import threading
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
from trajfm.progress import progress_enabled
from trajfm.store import file_sha256

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
AVERAGE = "average.pt"  # the weight average at the end, when there is no validation data to pick a best epoch
# Settings that change nothing in the numbers: a checkpoint written under other values resumes.
_RESUME_IGNORES = ("device", "checkpoint_every", "log_every", "progress")
# Settings added after the first release, with the defaults that reproduce it: left out of
# resume identities and stage keys at these values, so older checkpoints and stages still match.
_ADDED_DEFAULTS = {
    "grad_accum_steps": 1,
    "amp": "auto",
    "compile": False,
    "init_checkpoint": None,
    "ema_decay": 0.0,
    "select_by": "loss",
    "select_context": 20,
    "select_horizon": 10,
}
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
    checkpoint_every: int = 500  # steps between last.pt rewrites (also written every epoch end and on SIGTERM)
    max_steps: int | None = None  # cap on total steps (the schedule is laid out over the cap)
    grad_accum_steps: int = 1  # micro-batches per step (per process); same gradient, less memory
    amp: str = "auto"  # "auto": bf16 autocast on CUDA (when supported), off elsewhere; "bf16"; "off"
    compile: bool = False  # torch.compile the loss (forward + head); numbers may differ in the last bits
    log_every: int = 50  # steps between step metrics sent to an active MLflow run; 0: epoch metrics only
    progress: bool | None = None  # progress bar: None shows it on a terminal only (tqdm's rule)
    init_checkpoint: str | None = None  # fine-tune: start from these weights (and their normalization)
    ema_decay: float = (
        0.0  # > 0: validate, keep and return an exponential moving average of the weights (``WeightAverage``)
    )
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


def _autocast(device: torch.device, dtype: torch.dtype | None):
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


def _config_identity(cfg: TrainConfig, ignore: tuple[str, ...] = _RESUME_IGNORES) -> dict:
    """The settings that decide the numbers: all but ``ignore``, and added ones left at their
    default. ``init_checkpoint`` counts by its content (sha256), not its path."""
    out = {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ignore and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])
    }
    if out.get("init_checkpoint"):
        out["init_checkpoint"] = "sha256:" + file_sha256(out["init_checkpoint"])
    return out


def initial_weights(path: str | os.PathLike) -> tuple[GPTConfig, dict, dict]:
    """(model config, state_dict, normalization stats) of a checkpoint to fine-tune from, loaded
    with ``weights_only=True``; the stats are the checkpoint's own (its model was trained on them)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = GPTConfig.from_dict(ckpt["config"])
    stats = ckpt.get("extra", {}).get("stats")
    if stats is None:  # older checkpoints: the normalization buffers hold them
        stats = {"mean": ckpt["model"]["feat_mean"].tolist(), "std": ckpt["model"]["feat_std"].tolist()}
    return config, ckpt["model"], _plain_stats(stats, config.n_features)


class WeightAverage:
    """Exponential moving average of a model's trainable weights (Polyak averaging): after each
    optimizer step t (1-based), ``avg = d_t * avg + (1 - d_t) * weights`` with
    ``d_t = min(decay, (1 + t) / (10 + t))``. The warm-up term lets the average forget the
    first, poor iterates quickly, and keeps its span at about a tenth of the steps run so far
    until ``decay`` caps it (0.999: about the last 1,000 steps), so one setting suits short and
    long runs. ``swapped()`` puts the average into the model for a while (validation,
    checkpoints) and the training weights back after."""

    def __init__(self, model: TrajGPT, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.avg = [p.detach().clone() for p in self.params]

    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for a, p in zip(self.avg, self.params):
                a.lerp_(p.detach(), 1.0 - d)

    def apply(self) -> None:
        """Copy the average into the model's weights."""
        with torch.no_grad():
            for p, a in zip(self.params, self.avg):
                p.copy_(a)

    @contextlib.contextmanager
    def swapped(self):
        training = [p.detach().clone() for p in self.params]
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, training):
                    p.copy_(w)

    def state(self) -> list[torch.Tensor]:
        return [a.detach().cpu().clone() for a in self.avg]

    def load(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.avg):
            raise ValueError(f"weight average of {len(state)} tensors for {len(self.avg)} parameters")
        with torch.no_grad():
            for a, s in zip(self.avg, state):
                a.copy_(s)


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


# --- processes: one, or a torchrun group ----------------------------------------------------


@dataclass
class _Group:
    """This process's place in data-parallel training (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns: bool = False  # this ``train`` call created the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def _join_group(device: torch.device) -> tuple[_Group, torch.device]:
    """The process group from torchrun's environment (or the caller's), and this rank's device."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        group = _Group(dist.get_rank(), dist.get_world_size(), owns=False)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        group = None
    else:
        return _Group(), device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if group is None:  # env:// rendezvous: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from torchrun
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        group = _Group(dist.get_rank(), dist.get_world_size(), owns=True)
    return group, device


def _global_rank() -> int:
    """Rank of this process (0 without torchrun), whether or not the group is still up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _barrier(group: _Group) -> None:
    if group.parallel:
        import torch.distributed as dist

        dist.barrier()


def _sum_over_ranks(values: list[float], group: _Group, device: torch.device) -> list[float]:
    """Element-wise sum of small float64 vectors over all processes."""
    if not group.parallel:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _LossModule(torch.nn.Module):
    """``model.loss`` as a module's ``forward``: what ``DistributedDataParallel`` wraps (it
    synchronises the gradients of whatever its ``forward`` computes). Holds no state of its own,
    so the checkpoints keep the plain model's keys."""

    def __init__(self, model: TrajGPT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lonlat: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.loss(x, mask, lonlat=lonlat)


def _data_parallel(model: TrajGPT, group: _Group, device: torch.device) -> torch.nn.Module:
    """The module a step calls: ``model.loss`` wrapped in ``DistributedDataParallel`` in a group
    (its constructor broadcasts rank 0's parameters and buffers; ``backward`` averages the
    gradients over ranks, bucketed and overlapped with the backward pass), the bare loss alone.

    ``find_unused_parameters``: a model may leave parameters unused (a cell head, infill tokens
    with objective "next"); DDP then marks them ready instead of waiting forever for them."""
    module = _LossModule(model)
    if not group.parallel:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _gather_rng(device: torch.device, group: _Group) -> dict:
    """RNG state to checkpoint: this process's, or, in a group, every rank's (list by rank)."""
    state = _rng_state(device)
    if not group.parallel:
        return state
    import torch.distributed as dist

    states = [None] * group.world
    dist.all_gather_object(states, state)
    return {"ranks": states}


def _restore_rng(state: dict, device: torch.device, group: _Group) -> None:
    if "ranks" in state:  # written by a group
        ranks = state["ranks"]
        if len(ranks) == group.world:
            _set_rng_state(ranks[group.rank], device)
        else:  # other world size: the run continues, not bit for bit
            log.warning(
                "checkpoint written by %d processes, resuming with %d: RNG streams restart", len(ranks), group.world
            )
            torch.manual_seed(torch.initial_seed() + group.rank)
    elif group.parallel and not group.main:  # a single process wrote it: rank 0 takes its stream
        torch.manual_seed(torch.initial_seed() + 7919 * group.rank)
    else:
        _set_rng_state(state, device)


# --- signals, metrics --------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_on(signals: tuple[int, ...] = (signal.SIGTERM,)):
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


def _mlflow_run():
    """The ``mlflow`` module when the caller has an active run, else None (never imports it)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        return mlflow if mlflow.active_run() is not None else None
    except Exception:  # a half-initialised or mocked module
        return None


def _log_metrics(mlflow, metrics: dict, step: int) -> None:
    if mlflow is None:
        return
    try:
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}, step=step
        )
    except Exception as exc:  # tracking trouble must never stop training
        log.warning("could not log metrics to MLflow: %s", exc)


# --- evaluation --------------------------------------------------------------------------------


def _loss_sums(model, x, mask, batch_size, device, lonlat=None, amp_dtype=None) -> tuple[float, int]:
    """(sum over batches of loss x real pairs, real pairs) of ``model.loss`` over a dataset."""
    total, pairs = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, mb = x[i : i + batch_size].to(device), mask[i : i + batch_size].to(device)
        lb = None if lonlat is None else lonlat[i : i + batch_size].to(device)
        n = int((mb[:, :-1] & mb[:, 1:]).sum())
        if n:
            with _autocast(device, amp_dtype):
                total += float(model.loss(xb, mb, lonlat=lb)) * n
            pairs += n
    return total, pairs


@torch.no_grad()
def evaluate_loss(
    model: TrajGPT,
    x: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    device: torch.device,
    lonlat: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean next-point loss (``model.loss``: MSE in normalized units, or mixture NLL) over a
    dataset, each batch weighted by its real consecutive pairs. ``lonlat`` (N, L, 2) degrees
    only for models that encode absolute position; ``amp_dtype`` an autocast dtype (or None)."""
    was_training = model.training
    model.eval()
    total, pairs = _loss_sums(model, x, mask, batch_size, device, lonlat, amp_dtype)
    model.train(was_training)
    return total / pairs if pairs else float("nan")


@torch.no_grad()
def _validation_loss(model, vx, vmask, vlonlat, batch_size, device, amp_dtype, group: _Group) -> float:
    """``evaluate_loss``; in a group each process scores a contiguous slice and the sums add up."""
    if not group.parallel:
        return evaluate_loss(model, vx, vmask, batch_size, device, vlonlat, amp_dtype)
    part = torch.tensor_split(torch.arange(len(vx)), group.world)[group.rank]
    lo, hi = (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
    was_training = model.training
    model.eval()
    total, pairs = _loss_sums(
        model, vx[lo:hi], vmask[lo:hi], batch_size, device, None if vlonlat is None else vlonlat[lo:hi], amp_dtype
    )
    model.train(was_training)
    total, pairs = _sum_over_ranks([total, float(pairs)], group, device)
    return total / pairs if pairs else float("nan")


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # independent of global RNG
    return torch.randperm(n, generator=g)


def _accumulate(loss_fn, micro, weights, x, mask, lonlat, device, amp_dtype, group: _Group) -> float:
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
        with contextlib.nullcontext() if sync else _no_sync(loss_fn):
            with _autocast(device, amp_dtype):
                loss = loss_fn(xb, mb, lb)
            loss = loss if (w == 1.0 and scale == 1) else loss * (w * scale)
            loss.backward()
        total = total + loss.detach().float() / scale
    return float(total)


def _no_sync(module):
    """DDP's ``no_sync`` (also through a ``torch.compile`` wrapper)."""
    inner = getattr(module, "_orig_mod", module)
    return inner.no_sync()


# --- the loop ----------------------------------------------------------------------------------


def train(
    train: WindowSet,
    val: WindowSet | None,
    model_config: GPTConfig,
    stats: dict,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[dict], None] | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    """Train a ``TrajGPT`` on ``train`` windows (raw features); returns the model and history.

    ``stats`` is ``{"mean": [F], "std": [F]}`` of the train split (raw units). ``on_epoch`` gets
    each history record as it is made (for logging; rank 0 only under torchrun);
    ``on_progress(step, total_steps, metrics)`` is called after every optimizer step (rank 0 only;
    ``metrics``: epoch, loss, lr), e.g. to drive a progress bar elsewhere. With
    ``cfg.init_checkpoint`` the model starts from that checkpoint's weights and normalization (its
    config must equal ``model_config``; ``stats`` is then ignored). Windows longer
    than ``block_size`` keep their first ``block_size`` points. Raises ``TrainingInterrupted``
    after SIGTERM, once the state is checkpointed.
    """
    checkpoint_dir = Path(checkpoint_dir)
    group, device = _join_group(resolve_device(cfg.device))
    try:
        with _stop_on() as stop:
            return _train(
                train, val, model_config, stats, cfg, checkpoint_dir, on_epoch, on_progress, group, device, stop
            )
    finally:
        if group.owns:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    train, val, model_config, stats, cfg, checkpoint_dir, on_epoch, on_progress, group: _Group, device, stop
) -> TrainResult:
    if group.main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    amp_dtype = autocast_dtype(cfg.amp, device)
    init_state = None
    if cfg.init_checkpoint:
        init_config, init_state, stats = initial_weights(cfg.init_checkpoint)
        if init_config.to_dict() != model_config.to_dict():
            raise ValueError(
                f"init_checkpoint {cfg.init_checkpoint} was written for another model config: {init_config}"
            )
    stats = _plain_stats(stats, model_config.n_features)
    x, mask = _tensors(train, model_config.block_size, model_config.n_features)
    if len(x) == 0:
        raise ValueError("no training windows")
    if val is not None and len(val) > 0:
        vx, vmask = _tensors(val, model_config.block_size, model_config.n_features)
    else:
        vx = vmask = None
    val_fde = _forecast_selection(val, model_config, cfg) if vx is not None else None
    spatial = model_config.inputs.space_encoding != "none"  # the model reads absolute (lon, lat)
    lonlat = _lonlat(train, model_config.block_size) if spatial else None
    vlonlat = _lonlat(val, model_config.block_size) if spatial and vx is not None else None
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total_steps = planned_steps(len(x), cfg)
    P, Q, first = model_config.patching.patch_in, model_config.patching.patch_out, model_config.first_scored_token

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
        "train_data": _fingerprint(x, mask),
        "val_data": _fingerprint(vx, vmask) if vx is not None else None,
    }

    # Training state; replaced by last.pt's when resuming.
    step, history, best_val, start_step = 0, [], None, 0
    acc = {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}  # running over the current epoch
    last_path, best_path = checkpoint_dir / LAST, checkpoint_dir / BEST
    resumed = _try_resume(last_path, identity, model, optimizer, scheduler, device, group)
    if resumed is not None:
        step, history, best_val, acc = resumed["step"], resumed["history"], resumed["best_val"], resumed["acc"]
        start_step = step
        if group.main:
            log.info("resuming from %s at step %d/%d", last_path, step, total_steps)
    else:
        if group.parallel and not group.main:  # dropout masks differ between ranks (rank 0 keeps the seed's stream)
            torch.manual_seed(cfg.seed * 1_000_003 + 7919 * group.rank)
        if group.main and best_path.exists():
            best_path.unlink()  # stale: belongs to another run
    step_module = _data_parallel(model, group, device)  # in a group: DDP, which broadcasts rank 0's state
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None  # identical on every rank
    if ema is not None and resumed is not None:
        ema.load(resumed["ema"])
    averaged = ema.swapped if ema is not None else contextlib.nullcontext
    _barrier(group)  # every rank has read last.pt before rank 0 may rewrite it
    loss_fn = torch.compile(step_module) if cfg.compile else step_module

    def save_last() -> None:
        rng = _gather_rng(device, group)  # collective: every rank calls save_last
        if not group.main:
            return
        extra = {
            "kind": "train_state",
            "identity": identity,
            "step": step,
            "total_steps": total_steps,
            "history": history,
            "best_val": best_val,
            "acc": acc,
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "world_size": group.world,
            "ema": ema.state() if ema is not None else None,
        }
        save_checkpoint(last_path, model, optimizer, extra)

    mlflow = _mlflow_run() if group.main else None
    model.train()
    show = (
        (progress_enabled() if cfg.progress is None else cfg.progress) if group.main else False
    )  # trajfm.progress's rule
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not show, leave=False)
    order, order_epoch = None, -1
    t0 = time.perf_counter()
    while step < total_steps:
        epoch, i = divmod(step, steps_per_epoch)
        if order_epoch != epoch:
            order, order_epoch = _epoch_order(cfg.seed, epoch, len(x)), epoch
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]  # the global batch
        micro = [
            m
            for m in torch.tensor_split(torch.tensor_split(idx, group.world)[group.rank], cfg.grad_accum_steps)
            if len(m)
        ]
        n_targets = max(target_count(mask[idx], P, Q, first), 1)
        weights = [target_count(mask[mi], P, Q, first) / n_targets for mi in micro]
        if not micro:  # a last batch shorter than the group: this rank joins DDP's all-reduce with zeros
            micro, weights = [idx[:1]], [0.0]
        if len(micro) == 1 and not group.parallel:
            weights = [1.0]  # one process, one micro-batch: the plain step
        optimizer.zero_grad(set_to_none=True)
        loss_value = _accumulate(loss_fn, micro, weights, x, mask, lonlat, device, amp_dtype, group)
        if group.parallel:
            loss_value, stopping = _sum_over_ranks([loss_value, float(stop["signum"] is not None)], group, device)
        else:
            stopping = stop["signum"] is not None
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        if ema is not None:
            ema.update(step)

        acc["loss_sum"] += loss_value
        acc["batches"] += 1
        acc["points"] += int(mask[idx].sum())
        elapsed = acc["seconds"] + time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", pts_s=f"{acc['points'] / max(elapsed, 1e-9):.0f}")
        if on_progress is not None and group.main:
            on_progress(step, total_steps, {"epoch": epoch + 1, "loss": loss_value, "lr": scheduler.get_last_lr()[0]})
        if cfg.log_every and step % cfg.log_every == 0:
            _log_metrics(
                mlflow,
                {
                    "train/step_loss": loss_value,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/points_per_s": acc["points"] / max(elapsed, 1e-9),
                },
                step,
            )

        epoch_done = step % steps_per_epoch == 0 or step == total_steps
        if epoch_done:
            acc["seconds"] += time.perf_counter() - t0
            with averaged():  # with ema_decay, the average is what is validated and kept
                val_loss = (
                    _validation_loss(model, vx, vmask, vlonlat, cfg.batch_size, device, amp_dtype, group)
                    if vx is not None
                    else None
                )
                fde = val_fde(model) if val_fde is not None else None  # every rank: the same weights, the same number
                score = fde if val_fde is not None else val_loss
                if score is not None and math.isfinite(score) and (best_val is None or score < best_val):
                    best_val = score
                    if group.main:
                        save_checkpoint(
                            best_path,
                            model,
                            None,
                            {
                                "kind": "best",
                                "epoch": epoch + 1,
                                "step": step,
                                "val_loss": val_loss,
                                "val_fde_m": fde,
                                "stats": stats,
                            },
                        )
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": acc["loss_sum"] / max(acc["batches"], 1),
                "val_loss": val_loss,
                "points_per_s": acc["points"] / max(acc["seconds"], 1e-9),
                "lr": optimizer.param_groups[0]["lr"],
                **({"val_fde_m": fde} if val_fde is not None else {}),
            }
            history.append(record)
            acc = {"loss_sum": 0.0, "batches": 0, "points": 0, "seconds": 0.0}
            save_last()
            _log_metrics(
                mlflow,
                {"train/epoch_loss": record["train_loss"], "val/loss": val_loss, "val/fde_m": fde, "epoch": epoch + 1},
                step,
            )
            if group.main:
                log.info("epoch %d step %d train %.5f val %s", record["epoch"], step, record["train_loss"], val_loss)
                if on_epoch is not None:
                    on_epoch(dict(record))
            t0 = time.perf_counter()
        elif (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or stopping:
            acc["seconds"] += time.perf_counter() - t0
            save_last()
            t0 = time.perf_counter()
        if stopping and step < total_steps:
            bar.close()
            _barrier(group)
            raise TrainingInterrupted(step, total_steps, last_path, stop["signum"] or signal.SIGTERM)
    bar.close()
    if resumed is None and total_steps == 0:  # zero steps to run (e.g. max_steps=0)
        save_last()
    _barrier(group)  # rank 0 has written best.pt and last.pt

    use_best = vx is not None and best_path.exists()
    final_path = best_path if use_best else last_path
    if use_best:
        model.load_state_dict(load_checkpoint(best_path, device)["model"])
    elif ema is not None:  # no epoch to pick: the average at the end
        ema.apply()
        final_path = checkpoint_dir / AVERAGE
        if group.main:
            save_checkpoint(final_path, model, None, {"kind": "average", "step": step, "stats": stats})
        _barrier(group)
    return TrainResult(
        model=model.eval(), history=history, checkpoint=final_path, last_checkpoint=last_path, start_step=start_step
    )


def _forecast_selection(val, model_config: GPTConfig, cfg: TrainConfig):
    """With ``select_by="fde"``: a function giving a model's mean great-circle error (metres) at
    step ``select_horizon`` of a forecast from the first ``select_context`` points of every
    validation window long enough (``trajfm.evaluate.forecast``: the benchmark's own protocol);
    None with ``select_by="loss"``."""
    if cfg.select_by != "fde":
        return None
    from trajfm.evaluate.forecast import evaluate_forecast, forecastable

    if model_config.infilling.objective == "infill":
        raise ValueError("select_by 'fde' needs a model that forecasts (objective 'next' or 'mixed'), not 'infill'")
    if len(forecastable(val, cfg.select_context, cfg.select_horizon)) == 0:
        raise ValueError(
            f"select_by 'fde': no validation window has select_context + select_horizon = "
            f"{cfg.select_context + cfg.select_horizon} real points"
        )

    def val_fde(model: TrajGPT) -> float:
        with torch.no_grad():
            return evaluate_forecast(model, val, cfg.select_context, cfg.select_horizon)["fde_m"]

    return val_fde


def _try_resume(
    path: Path,
    identity: dict,
    model,
    optimizer,
    scheduler,
    device: torch.device,
    group: _Group,
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
    _restore_rng(extra["rng"], device, group)
    return {
        "step": int(extra["step"]),
        "history": list(extra["history"]),
        "best_val": extra["best_val"],
        "acc": dict(extra["acc"]),
        "ema": extra.get("ema"),
    }


# --- the ``train`` stage -------------------------------------------------------------------

CHECKPOINT_STAGE = "checkpoints"  # <root>/checkpoints/<train key>/: last.pt, best.pt (survive retries)


def run_training(
    features_dir: str | Path,
    root=None,
    preset: str = "tutorial",
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    on_epoch: Callable[[dict, float], None] | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
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
    stage (the others return its path at once).

    Fine-tuning: ``train_overrides={"init_checkpoint": path}`` starts from a checkpoint (e.g. the
    registered champion's ``model.pt``); the model config is the checkpoint's (``model_overrides``
    applied on top, ``preset`` is then only a label) and so are the normalization statistics,
    whatever the new features' statistics are. The checkpoint's content hash is part of the key.
    """
    from trajfm.features.windows import load_features
    from trajfm.model.config import load_preset
    from trajfm.store import StageWriter, data_root, is_complete, read_manifest, stable_hash

    root = data_root(root)
    cfg = TrainConfig(**(train_overrides or {}))
    if cfg.init_checkpoint:
        base, _, _ = initial_weights(cfg.init_checkpoint)
        model_config = GPTConfig.from_dict({**base.to_dict(), **(model_overrides or {})})
    else:
        model_config = load_preset(preset, **(model_overrides or {}))
    settings = _config_identity(cfg, ignore=("device", "log_every", "progress"))
    key = stable_hash(
        {
            "features": read_manifest(features_dir)["key"],
            "preset": preset,
            "model": model_config.to_dict(),
            "train": settings,
            "v": 1,
        }
    )
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
    )
    if _global_rank() != 0:
        return out
    last = result.history[-1] if result.history else {}
    val_losses = [h["val_loss"] for h in result.history if h.get("val_loss") is not None]
    final = {
        "epoch": last.get("epoch"),
        "step": last.get("step"),
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "best_val_loss": min(val_losses) if val_losses else None,
        **(
            {"best_val_fde_m": min(h["val_fde_m"] for h in result.history)}
            if cfg.select_by == "fde" and val_losses
            else {}
        ),
        "n_params": result.model.num_params(),
        "checkpoint": "model.pt",
    }
    with StageWriter(root, "train", key) as w:
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
            features_dir=str(features_dir),
            device=str(resolve_device(cfg.device)),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            resumed_from_step=result.start_step,
            init_checkpoint_sha256=file_sha256(cfg.init_checkpoint) if cfg.init_checkpoint else None,
            final=final,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m trajfm.train --features-dir DIR [--root R] [--preset P] [--model JSON] [--train JSON]``;
    under ``torchrun --nproc_per_node N`` it trains data-parallel. Prints the stage directory."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m trajfm.train", description=main.__doc__)
    parser.add_argument("--features-dir", required=True, help="a features stage directory")
    parser.add_argument("--root", default=None, help="data root (default: $TRAJFM_HOME or ./.trajfm)")
    parser.add_argument("--preset", default="tutorial")
    parser.add_argument("--model", default="{}", help="GPTConfig overrides as JSON, e.g. '{\"dropout\": 0}'")
    parser.add_argument("--train", default="{}", help="TrainConfig overrides as JSON, e.g. '{\"epochs\": 2}'")
    parser.add_argument(
        "--report-progress",
        action="store_true",
        help=f"print '{PROGRESS_PREFIX} <json>' and '{EPOCH_PREFIX} <json>' lines on stdout (for a supervising process)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_epoch = on_progress = None
    if args.report_progress:
        on_epoch, on_progress = _progress_printers()
    try:
        out = run_training(
            args.features_dir,
            args.root,
            args.preset,
            json.loads(args.model),
            json.loads(args.train),
            on_epoch=on_epoch,
            on_progress=on_progress,
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:  # configuration or input: a retry repeats it
        print(f"trajfm.train: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return CONFIG_ERROR_EXIT
    if _global_rank() == 0:
        print(out, flush=True)
    return 0


CONFIG_ERROR_EXIT = 2  # exit status for a refused configuration or input (as argparse's usage errors)
PROGRESS_PREFIX = "TRAJFM_PROGRESS"  # stdout protocol of `python -m trajfm.train --report-progress`
EPOCH_PREFIX = "TRAJFM_EPOCH"


def _progress_printers(updates: int = 50):
    """Callbacks that print about ``updates`` progress lines per run, plus one line per epoch."""
    import json

    def on_progress(step: int, total: int, metrics: dict) -> None:
        if step == total or step % max(total // updates, 1) == 0:
            print(PROGRESS_PREFIX, json.dumps({"step": step, "total": total, **metrics}), flush=True)

    def on_epoch(record: dict, fraction: float) -> None:
        print(EPOCH_PREFIX, json.dumps({**record, "fraction": fraction}, default=str), flush=True)

    return on_epoch, on_progress


if __name__ == "__main__":
    sys.exit(main())
