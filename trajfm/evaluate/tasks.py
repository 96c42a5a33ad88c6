"""The evaluation suite: one function per task, a registry, and one call that runs them all.

Every task has the call shape ``task(model, ws, *, seed=0, **params) -> dict[str, float]``:
``model`` a ``TrajGPT`` (or ``None``: baselines only), ``ws`` the held-out ``WindowSet``
(raw features, lon/lat degrees, int64 UTC ns, mask). Keys are flat
``"<task>.<metric>.<predictor>"``, the predictor ``model`` or a baseline name, computed on
exactly the same windows / points; counts and settings have no predictor
(``forecast.n_windows``). Values are plain floats (JSON-able). A model that cannot do a task
(e.g. an "infill"-only model has no trained next-point head; a "next"-only model cannot infill)
gets no key for it: missing means "not applicable", never a placeholder number.

==============  ====================================================  ===============================
task            metrics                                               baselines
==============  ====================================================  ===============================
forecast        ade_m@h, fde_m@h (steps), fde_m@<m>min, mae/rmse_m@5  constant_velocity, linear_extr., kalman
recovery        random_mae_m, random_rmse_m, block_mae_m, block_...  linear_interp
travel_time     path_mae_s, path_mape, od_mae_s, od_mape             historical_speed
next_location   acc@1, acc@5, mrr (H3 cells)                          markov_h3
generation      jsd_<statistic> (step, speed, turn, duration, Rg)     constant_velocity, resampled_steps
similarity      mean_rank, hit@1, hit@5, hit@10 (odd/even protocol)   resampled_path
==============  ====================================================  ===============================

Tasks whose baselines learn from data take a ``train_ws`` parameter, the training windows
(``TRAINED_BASELINES``; ``run_tasks(..., train_ws=...)`` passes it to each of them).
``travel_time`` (``historical_speed``) and ``next_location`` (``markov_h3``) without one split
``ws`` itself in time (``baselines.split_for_fitting``): windows that end before the median
start time fit the baselines, and every predictor, the model included, is scored on the windows
that start after it, so nothing is both fitted and scored and all predictors see the same
windows. ``generation`` (``resampled_steps``) without one draws from the context points of the
scored windows (never from the continuations it is judged on).

Each task module's docstring defines its protocol (which windows, which points, units, bins);
``parse_key`` splits a key back into (task, metric, predictor); ``mean_std`` aggregates runs
(e.g. three training seeds) key by key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from trajfm.evaluate.forecast import forecast_task
from trajfm.evaluate.generation import generation_task
from trajfm.evaluate.next_location import next_location_task
from trajfm.evaluate.recovery import recovery_task
from trajfm.evaluate.similarity import similarity_task
from trajfm.evaluate.travel_time import travel_time_task
from trajfm.features.windows import WindowSet

TASKS: dict[str, Callable] = {
    "forecast": forecast_task,
    "recovery": recovery_task,
    "travel_time": travel_time_task,
    "next_location": next_location_task,
    "generation": generation_task,
    "similarity": similarity_task,
}
TRAINED_BASELINES = tuple(n for n, f in TASKS.items() if "train_ws" in inspect.signature(f).parameters)


def parse_key(key: str) -> tuple[str, str, str | None]:
    """``"forecast.fde_m@10.model"`` -> ``("forecast", "fde_m@10", "model")``; a count or
    setting (``"forecast.n_windows"``) has predictor ``None``."""
    parts = key.split(".")
    if len(parts) not in (2, 3) or parts[0] not in TASKS:
        raise ValueError(f"not a metric key of the evaluation tasks: {key!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def run_task(name: str, model, ws: WindowSet, *, seed: int = 0, **params) -> dict[str, float]:
    """Run one task (``TASKS[name]``) on the held-out windows ``ws``; ``params`` go to the task."""
    if name not in TASKS:
        raise ValueError(f"unknown evaluation task {name!r}; known: {', '.join(TASKS)}")
    if len(ws) == 0:
        raise ValueError(f"task {name!r}: the window set is empty")
    try:
        return TASKS[name](model, ws, seed=seed, **params)
    except TypeError as err:  # an unknown parameter: say which task and which parameters it takes
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"task {name!r}: {err}") from None
        raise


def run_tasks(
    model,
    ws: WindowSet,
    tasks: list[str] | None = None,
    *,
    seed: int = 0,
    params: dict[str, dict] | None = None,
    train_ws: WindowSet | None = None,
) -> dict[str, float]:
    """All ``tasks`` (default: every task in ``TASKS``), metrics merged into one flat dict.

    ``params`` maps a task name to its keyword parameters (e.g. ``{"forecast": {"context_len": 8}}``);
    ``train_ws`` goes to every task of ``TRAINED_BASELINES`` whose params do not set one.
    """
    tasks = list(TASKS) if tasks is None else list(tasks)
    params = params or {}
    unknown = sorted(set(tasks).union(params) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown evaluation tasks {unknown}; known: {', '.join(TASKS)}")
    from trajfm.progress import track

    out: dict[str, float] = {}
    for name in track(tasks, desc="evaluate", unit="task"):
        p = dict(params.get(name, {}))
        if train_ws is not None and name in TRAINED_BASELINES:
            p.setdefault("train_ws", train_ws)
        out.update(run_task(name, model, ws, seed=seed, **p))
    return out


def mean_std(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, std) per key over runs (e.g. models trained with 3 seeds, each scored by
    ``run_tasks``); population std (ddof 0); only keys every run has."""
    if not runs:
        raise ValueError("no runs to aggregate")
    keys = [k for k in runs[0] if all(k in r for r in runs[1:])]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    std = {k: float(np.std([r[k] for r in runs])) for k in keys}
    return mean, std
