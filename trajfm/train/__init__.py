"""Training: AdamW, linear warmup + cosine decay, gradient clipping and accumulation, bf16
autocast on CUDA, optional ``torch.compile``, weight averaging, atomic resumable checkpoints,
data parallel under ``torchrun``. Read in nanoGPT's order:

- ``config``: ``TrainConfig``, what of it decides the numbers, device and autocast, the schedule
  and the optimizer;
- ``averaging``: the exponential moving average of the weights;
- ``distributed``: one process or a torchrun group, ``DistributedDataParallel``;
- ``checkpoint``: start weights, resume from ``last.pt``, ``best.pt`` / ``average.pt``;
- ``evaluation``: validation loss and forecast error (the epoch kept);
- ``loop``: one training loop over small step functions, shared by both trainers;
- ``memory``: ``train``, the trainer on windows in memory;
- ``stage``: the ``train`` stage (``run_training``) and ``python -m trajfm.train``;
- ``pretrain``: the streamed pre-trainer and the ``pretrain`` stage (``python -m trajfm.train.pretrain``).

This package never imports ``trajfm.evaluate`` (a layer above it) or MLflow (metrics go to an
active MLflow run only, ``trajfm.train.loop``).
"""

from trajfm.train.averaging import WeightAverage
from trajfm.train.checkpoint import AVERAGE, BEST, LAST, initial_weights
from trajfm.train.config import (
    AMP_MODES,
    SELECT_BY,
    TrainConfig,
    autocast_dtype,
    config_identity,
    lr_factor,
    planned_steps,
    resolve_device,
)
from trajfm.train.evaluation import ForecastEvaluator, evaluate_loss
from trajfm.train.loop import TrainingInterrupted, TrainResult, target_count
from trajfm.train.memory import train
from trajfm.train.stage import (
    CHECKPOINT_STAGE,
    CONFIG_ERROR_EXIT,
    EPOCH_PREFIX,
    PROGRESS_PREFIX,
    STAGE_KEY_VERSION,
    main,
    run_training,
)

__all__ = [
    "AMP_MODES",
    "AVERAGE",
    "BEST",
    "CHECKPOINT_STAGE",
    "CONFIG_ERROR_EXIT",
    "EPOCH_PREFIX",
    "LAST",
    "PROGRESS_PREFIX",
    "SELECT_BY",
    "STAGE_KEY_VERSION",
    "ForecastEvaluator",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "WeightAverage",
    "autocast_dtype",
    "config_identity",
    "evaluate_loss",
    "initial_weights",
    "lr_factor",
    "main",
    "planned_steps",
    "resolve_device",
    "run_training",
    "target_count",
    "train",
]
