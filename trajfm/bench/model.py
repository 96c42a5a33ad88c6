"""Model benchmark: training speed against ``transformers`` GPT-2, KV-cache generation, memory, and
forecast quality of every preset on held-out real data.

``trajfm bench model --out benchmarks/results/model.json`` (or ``main(out)``, or
``python -m trajfm.bench.model --out FILE [--budget quick|default|long|full] [--root DIR]
[--train-stride N] [--seeds 0,1,2] [--ema DECAY] [--select loss|fde] [--parts speed,generation,quality] [--presets NAME|FILE.json,...] [--datasets ais,geolife]
[--fresh]``) writes the JSON results and a markdown table beside it (same stem, ``.md``). The
budget, parts and presets can also come from ``$TRAJFM_BENCH_BUDGET``, ``$TRAJFM_BENCH_PARTS``
and ``$TRAJFM_BENCH_PRESETS`` (``trajfm bench model`` takes only ``--out``). The JSON is
rewritten after each part, so a long run leaves what it has. Unless ``--fresh``, a run MERGES
into the file it writes: parts it does not run are kept, and its presets are added to (or
replace) those measured before on the same windows with the same budget (anything else is
refused); ``runs`` lists every run that contributed. ``tutorial`` always comes with a preset
list, the baselines with every dataset.

**Speed** (one process, ``threads`` torch threads, interleaved so both contenders see the same
machine load; medians of ``speed_reps`` timed steps after ``speed_warmup`` untimed ones):

- ``train_speed_ratio_vs_hf``: one training step (``loss``, ``backward``, AdamW ``step``) of
  ``TrajGPT`` against the same model written with ``transformers.GPT2Model``: the same input
  projection, GPT-2 trunk (same d_model, layers, heads, learned positions, GELU-tanh, dropout,
  SDPA attention), head and masked next-point MSE, on the same batch (``B`` windows of
  ``block_size`` points, a quarter of them shorter, padded at the end, as real windows are).
  Ratio = trajfm points/s over transformers points/s (> 1: trajfm is faster). Wall time and
  thread CPU time both reported (CPU time is less sensitive to other jobs on the machine).
- ``kv_cache_speedup``: ``trajfm.model.generate.Rollout`` of ``GEN_STEPS`` = 64 steps from a
  32-point context, ``use_cache=True`` against ``False`` (recomputing the whole prefix each step),
  with ``block_size`` 128 so the cache holds the whole rollout.
- Memory: bytes the autograd graph saves during one training step (the activations a backward
  needs, measured with ``saved_tensors_hooks``, shared storages counted once), parameter +
  gradient + AdamW state bytes, the KV cache size, and the peak resident memory of the process.

**Quality**: the real pipeline stages as library calls into a data root (default
``$TMPDIR/trajfm-bench-model``; stages are cached there, so a rerun reuses them):
``ingest`` of the embedded AIS files -> ``preprocess(scheduler="sync")`` -> ``make_features``
(32-point windows, chronological 70/15/15 split) -> ``run_training`` per preset -> forecasts on
the **test split** (the latest 15% of the time span), ``CONTEXT_LEN`` = 20 points of context,
``HORIZONS`` up to 10 steps ahead, ADE (mean error over steps 1..k) and FDE (error at step k) in
metres (great-circle), for every preset of ``trajfm.model.config.list_presets()``, constant
velocity (``trajfm.evaluate.forecast.constant_velocity``) and ``linear_extrapolation`` (below),
all on exactly the same windows; the same errors on the validation split (``val_results``,
``best_preset_by_val``) are the ones to choose variants on. The same for the shared GeoLife files
(``../shared/data/geolife``) when they and the ``geolife`` reader exist; otherwise a note says
why not. The training budget (``Budget``: optimizer steps of ``batch_size`` windows per preset
and dataset, AdamW lr 1e-3 with warmup then cosine, best validation epoch kept) is modest so the
default run fits about 20 minutes on 2 shared CPU cores; ``long`` trains 4x longer (3.6
AIS epochs), ``full`` ~10x. ``--seeds 0,1,2`` trains each preset once per seed and reports the
mean errors (each seed's under ``seed_results``, the spread in the table); ``--ema 0.999`` trains
every preset with a weight average (``TrainConfig.ema_decay``), validated and forecast with it;
``--select fde`` keeps each preset's epoch with the lowest validation FDE at the longest horizon
(``TrainConfig.select_by``) instead of the lowest validation loss. Results with other seeds,
average or selection never merge.

Each test window's error at the longest horizon is kept per predictor (``window_errors``; with
seeds, the mean over seeds window by window), so the targets come with **intervals**: a paired
bootstrap over the test windows (``paired_improvement``: ``BOOTSTRAP_RESAMPLES`` seeded draws,
95% percentile interval of 1 - best/reference, and the share of draws reaching each target).
They say how much a figure depends on which windows the test split holds; the seed spread says
how much it depends on training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HORIZONS = (1, 5, 10)
CONTEXT_LEN = 20  # points of context before the forecast
GEN_STEPS = 64  # rollout length of the KV-cache benchmark
GEN_CONTEXT = 32
SPEED_PRESET = "trajgpt2-small"  # the largest one-point-per-token GPT-2 preset: the HF comparison
from trajfm.evaluate.baselines import LINEAR_FIT_POINTS  # noqa: E402 (fixes the linear extrapolation fits)

BOOTSTRAP_RESAMPLES = 2000  # paired bootstrap over test windows for the targets' intervals
TARGET_VS_CONSTANT_VELOCITY = 0.25  # the targets: best preset's FDE at the longest horizon
TARGET_VS_TUTORIAL = 0.20
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "trajfm-bench-model"
ENV_BUDGET = "TRAJFM_BENCH_BUDGET"


@dataclass(frozen=True)
class Budget:
    """How much work each part does."""

    name: str
    ais_steps: int  # optimizer steps per preset on AIS
    geolife_steps: int  # optimizer steps per preset on GeoLife
    batch_size: int = 64  # windows per training step
    speed_batch: int = 64  # windows per timed training step
    speed_reps: int = 9  # timed steps per contender
    speed_warmup: int = 2
    gen_batch: int = 32  # rollouts at once in the KV-cache benchmark
    gen_reps: int = 3
    max_test_windows: int | None = None  # cap on forecast windows per dataset (None: all)
    threads: int = 1  # torch threads (1: steady on a shared machine)
    train_stride: int | None = None  # points between training window starts (None: 32, disjoint)
    seeds: tuple[int, ...] = (0,)  # training seeds per preset; errors are the mean over them
    ema_decay: float = 0.0  # > 0: every preset keeps and is judged by its weight average (TrainConfig.ema_decay)
    select_by: str = (
        "loss"  # the epoch kept: lowest validation loss, or "fde" (validation FDE, this benchmark's protocol)
    )


BUDGETS = {
    "quick": Budget(
        "quick",
        ais_steps=20,
        geolife_steps=10,
        speed_batch=16,
        speed_reps=3,
        speed_warmup=1,
        gen_batch=4,
        gen_reps=1,
        max_test_windows=128,
    ),
    "default": Budget("default", ais_steps=250, geolife_steps=125),
    "long": Budget("long", ais_steps=1000, geolife_steps=500),
    "full": Budget("full", ais_steps=3000, geolife_steps=1000, speed_reps=15, gen_reps=5),
}


# --- baselines ---------------------------------------------------------------------------------


from trajfm.evaluate.baselines import linear_extrapolation  # noqa: E402,F401 (lives with the other baselines; importable here)

# --- speed: trajfm against transformers' GPT-2 ---------------------------------------------------


class HFTrajGPT2(nn.Module):
    """TrajGPT's computation with ``transformers.GPT2Model`` as the trunk: normalize -> Linear(F, D)
    -> GPT-2 (learned positions, blocks, ln_f) -> Linear(D, T) -> masked MSE on the next point."""

    def __init__(self, config, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        import transformers

        c = config
        hf_config = transformers.GPT2Config(
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.d_model,
            n_positions=c.block_size,
            vocab_size=1,
            bos_token_id=None,
            eos_token_id=None,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            resid_pdrop=c.dropout,
            embd_pdrop=c.dropout,
            attn_pdrop=c.dropout,
        )
        hf_config._attn_implementation = "sdpa"
        self.n_targets = c.n_targets
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.in_proj = nn.Linear(c.n_features, c.d_model, bias=c.bias)
        self.gpt2 = transformers.GPT2Model(hf_config)
        self.head = nn.Linear(c.d_model, c.n_targets, bias=c.bias)

    def loss(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask[..., None], (x_raw - self.mean) / self.std, 0.0)  # (B, L, F)
        h = self.gpt2(inputs_embeds=self.in_proj(x), attention_mask=mask.long()).last_hidden_state
        pred, target = self.head(h)[:, :-1], x[:, 1:, : self.n_targets]  # (B, L-1, T)
        valid = (mask[:, :-1] & mask[:, 1:])[..., None]
        return torch.where(valid, (pred - target).square(), 0.0).sum() / (valid.sum() * self.n_targets).clamp_min(1)


def speed_batch(config, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, F) raw-like features and a (B, L) mask: a quarter of the rows end early (padding)."""
    g = torch.Generator().manual_seed(seed)
    B, L, F = batch, config.block_size, config.n_features
    x = torch.randn(B, L, F, generator=g)
    x[..., :2] *= 300.0  # dx, dy metres
    x[..., 2] = 4.1 + 0.1 * x[..., 2]  # log1p(60 s)
    n = torch.full((B,), L)
    short = torch.arange(B) % 4 == 3
    n[short] = torch.randint(12, L, (int(short.sum()),), generator=g)
    mask = torch.arange(L)[None, :] < n[:, None]
    return x, mask


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, mask: torch.Tensor) -> None:
    loss = model.loss(x, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one loss (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or wrapper tensors
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(x, mask)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return int(sum(seen.values()))


def _state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    return int(2 * params + state)  # weights + gradients + AdamW moments


def measure_train_speed(budget: Budget, preset: str = SPEED_PRESET) -> dict:
    from trajfm.model import TrajGPT, load_preset

    config = load_preset(preset)
    x, mask = speed_batch(config, budget.speed_batch)
    points = int(mask.sum())
    mean = torch.zeros(config.n_features)
    std = torch.ones(config.n_features)
    mean[2], std[:2] = 4.1, 300.0
    torch.manual_seed(0)
    ours = TrajGPT(config)
    ours.set_normalization(mean.tolist(), std.tolist())
    contenders = {"trajfm": ours}
    try:
        torch.manual_seed(0)
        contenders["transformers"] = HFTrajGPT2(config, mean, std)
    except ImportError as exc:
        note = f"transformers is not installed ({exc}): no comparison"
    else:
        import transformers

        note = f"transformers {transformers.__version__}, GPT2Model with attn_implementation='sdpa'"
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in contenders.items()}
    for m in contenders.values():
        m.train()
    wall = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    names = list(contenders)
    for rep in range(budget.speed_warmup + budget.speed_reps):
        for k in names if rep % 2 == 0 else names[::-1]:  # alternate who goes first
            t0, c0 = time.perf_counter(), time.thread_time()
            _train_step(contenders[k], opts[k], x, mask)
            t1, c1 = time.perf_counter(), time.thread_time()
            if rep >= budget.speed_warmup:
                wall[k].append(t1 - t0)
                cpu[k].append(c1 - c0)
    out = {
        "preset": preset,
        "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "d_model", "block_size", "dropout")},
        "batch_windows": budget.speed_batch,
        "points_per_step": points,
        "timed_steps": budget.speed_reps,
        "warmup_steps": budget.speed_warmup,
        "note": note,
    }
    for k, m in contenders.items():
        med_wall, med_cpu = statistics.median(wall[k]), statistics.median(cpu[k])
        out[k] = {
            "params": sum(p.numel() for p in m.parameters()),
            "step_ms_median": round(1000 * med_wall, 2),
            "step_ms_min": round(1000 * min(wall[k]), 2),
            "cpu_ms_median": round(1000 * med_cpu, 2),
            "points_per_s": round(points / med_wall, 1),
            "points_per_cpu_s": round(points / med_cpu, 1),
            "saved_activation_mb": round(saved_activation_bytes(m, x, mask) / 2**20, 2),
            "weights_grads_adam_mb": round(_state_bytes(m, opts[k]) / 2**20, 2),
        }
    if "transformers" in out:
        out["train_speed_ratio_vs_hf"] = round(out["trajfm"]["points_per_s"] / out["transformers"]["points_per_s"], 3)
        out["train_speed_ratio_vs_hf_cpu_time"] = round(
            out["trajfm"]["points_per_cpu_s"] / out["transformers"]["points_per_cpu_s"], 3
        )
    return out


def measure_generation(budget: Budget, preset: str = SPEED_PRESET) -> dict:
    """Rollout of ``GEN_STEPS`` steps with and without the KV cache, same model and inputs."""
    from trajfm.model import Rollout, TrajGPT, load_preset

    config = load_preset(preset, block_size=128, dropout=0.0)
    torch.manual_seed(0)
    model = TrajGPT(config).eval()
    x, _ = speed_batch(config, budget.gen_batch, seed=1)
    context, future = x[:, :GEN_CONTEXT], x[:, GEN_CONTEXT : GEN_CONTEXT + GEN_STEPS]
    n_real = torch.full((budget.gen_batch,), GEN_CONTEXT)

    def roll(use_cache: bool) -> tuple[float, torch.Tensor, int]:
        t0 = time.perf_counter()
        r = Rollout(model, context, n_real, use_cache=use_cache)
        preds = []
        for s in range(GEN_STEPS):
            preds.append(r.predict())  # (B, Q, T) raw
            if s + 1 < GEN_STEPS:
                r.extend(future[:, s : s + 1])
        seconds = time.perf_counter() - t0
        cache_bytes = 0 if r.cache is None else int(2 * r.cache.k.numel() * r.cache.k.element_size())
        return seconds, torch.stack(preds, 1), cache_bytes

    times = {True: [], False: []}
    outputs, cache_bytes = {}, 0
    for rep in range(budget.gen_reps):
        for use_cache in (True, False) if rep % 2 == 0 else (False, True):
            seconds, preds, nbytes = roll(use_cache)
            times[use_cache].append(seconds)
            outputs[use_cache] = preds
            cache_bytes = max(cache_bytes, nbytes)
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    return {
        "preset": preset,
        "block_size": config.block_size,
        "batch": budget.gen_batch,
        "context_points": GEN_CONTEXT,
        "steps": GEN_STEPS,
        "reps": budget.gen_reps,
        "with_cache_s": round(cached, 4),
        "without_cache_s": round(uncached, 4),
        "with_cache_steps_per_s": round(GEN_STEPS / cached, 1),
        "kv_cache_speedup": round(uncached / cached, 2),
        "max_abs_diff_cache_vs_recompute": float((outputs[True] - outputs[False]).abs().max()),
        "kv_cache_mb": round(cache_bytes / 2**20, 3),
    }


# --- quality: the real pipeline, every preset, baselines -----------------------------------------


def shared_geolife_dir() -> Path:
    """``../shared/data/geolife`` next to the project checkout (where the tests look too)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "geolife"


def prepare_features(sources: list, root: Path, train_stride: int | None = None) -> tuple[Path, dict]:
    """ingest -> preprocess (sync) -> features; returns the features directory and stage info.
    ``train_stride`` overlaps the training windows (validation and test windows stay the same)."""
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess
    from trajfm.features.windows import WindowParams, make_features
    from trajfm.store import read_manifest

    t0 = time.perf_counter()
    ingest_dir = ingest(sources, root=root)
    processed = preprocess(ingest_dir, root=root, scheduler="sync")
    features = make_features(processed, root=root, params=WindowParams(train_stride=train_stride))
    m = read_manifest(features)
    pre = read_manifest(processed)
    info = {
        "points_ingested": read_manifest(ingest_dir).get("rows_kept"),
        "points_resampled": pre.get("rows_out"),
        "trajectories": pre.get("n_trajectories"),
        "windows": m["windows"],
        "window_params": m["params"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return features, info


def forecast_errors(lon: np.ndarray, lat: np.ndarray, true_lon: np.ndarray, true_lat: np.ndarray) -> dict:
    """ADE/FDE in metres at each of ``HORIZONS`` from (N, H) forecasts and truth."""
    return errors_and_final(lon, lat, true_lon, true_lat)[0]


def errors_and_final(
    lon: np.ndarray, lat: np.ndarray, true_lon: np.ndarray, true_lat: np.ndarray
) -> tuple[dict, np.ndarray]:
    """``forecast_errors`` and each window's error in metres at the last step (the target
    metric, window by window), from one distance computation."""
    from trajfm.geo import haversine_m

    err = haversine_m(lon, lat, true_lon, true_lat)  # (N, H) metres
    out = {}
    for k in HORIZONS:
        if k <= err.shape[1]:
            out[f"ade_{k}_m"] = round(float(err[:, :k].mean()), 2)
            out[f"fde_{k}_m"] = round(float(err[:, k - 1].mean()), 2)
    return out, err[:, -1]


def paired_improvement(
    errors: np.ndarray,
    reference: np.ndarray,
    targets: tuple[float, ...] = (),
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """How much better ``errors`` is than ``reference`` on the same windows, 1 - mean(errors) /
    mean(reference), with a paired percentile bootstrap over windows: ``resamples`` draws of the
    windows with replacement (the same draw for both, seeded), the ``level`` interval of the
    ratio, and for each target the share of draws where the improvement reaches it. The interval
    says how much the figure depends on which windows the test split happens to hold; it does not
    cover training seeds (their spread is reported apart)."""
    a, b = np.asarray(errors, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired errors need two 1-D arrays of the same length >= 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or b.sum() <= 0:
        raise ValueError("paired errors must be finite and the reference's must not all be zero")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(a))  # bounded memory on large test splits
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(a), size=(min(chunk, resamples - start), len(a)))
        ratios[start : start + len(idx)] = 1 - a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-12)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {
        "improvement": round(float(1 - a.mean() / b.mean()), 4),
        "ci_low": round(float(lo), 4),
        "ci_high": round(float(hi), 4),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "windows": len(a),
        "share_reaching": {str(t): round(float((ratios >= t).mean()), 4) for t in targets},
    }


def mean_errors(per_seed: list[dict]) -> dict:
    """The errors of several training seeds averaged key by key (one seed: its own errors)."""
    return {k: round(statistics.fmean(e[k] for e in per_seed), 2) for k in per_seed[0]}


def seed_std(per_seed: list[dict], key: str) -> float:
    """Sample standard deviation of one error over training seeds."""
    return round(statistics.stdev(e[key] for e in per_seed), 2)


def _split_windows(features: Path, split: str, budget: Budget):
    """The ``forecastable`` windows of one split (capped by the budget) and their true future."""
    from trajfm.evaluate.forecast import forecastable
    from trajfm.features.windows import WindowSet

    ws = WindowSet.load(features / f"{split}.npz")
    horizon = max(HORIZONS)
    sel = forecastable(ws, CONTEXT_LEN, horizon)
    if budget.max_test_windows is not None:
        sel = sel[: budget.max_test_windows]
    ws = ws.subset(sel)
    truth = slice(CONTEXT_LEN, CONTEXT_LEN + horizon)
    return ws, ws.lon[:, truth], ws.lat[:, truth]


def preset_label(preset: str) -> str:
    """The name a preset's results go under: the preset name, or a ``.json`` path's stem."""
    return Path(preset).stem if preset.endswith(".json") else preset


def is_variant(preset: str) -> bool:
    """A preset FILE outside the bundle: an experiment. Its errors are reported apart from the
    bundled presets' and never compete for ``best_preset`` (variants are chosen on validation)."""
    return preset.endswith(".json") and Path(preset).is_file()


def evaluate_dataset(
    name: str, sources: list, root: Path, steps: int, budget: Budget, log, presets: list[str] | None = None
) -> dict:
    """``presets`` (default: all of ``list_presets()``; names or ``.json`` paths) each trained
    ``steps`` steps on one dataset, and the baselines, forecast on its test split; the validation
    split's errors come with them (``val_results``: the split to choose variants on). Each preset
    trains once per seed of ``budget.seeds``; its errors are the mean over seeds, and with more
    than one seed ``seed_results`` keeps each seed's (per split, in seed order)."""
    from trajfm.evaluate.forecast import constant_velocity, evaluate_forecast, forecastable, rollout
    from trajfm.evaluate.kalman import FIT_MAX_WINDOWS, fit_kalman, kalman_forecast
    from trajfm.features.windows import WindowSet
    from trajfm.model import list_presets, load_model
    from trajfm.store import read_manifest
    from trajfm.train import TrainConfig, planned_steps, run_training

    features, info = prepare_features(sources, root, budget.train_stride)
    log(f"{name}: features {info['windows']} in {info['seconds']} s")
    horizon = max(HORIZONS)
    splits = {split: _split_windows(features, split, budget) for split in ("test", "val")}
    n_train = info["windows"]["train"]
    steps_per_epoch = math.ceil(n_train / budget.batch_size)
    train_overrides = {
        "epochs": math.ceil(steps / steps_per_epoch),
        "max_steps": steps,
        "batch_size": budget.batch_size,
        "warmup_steps": min(100, max(steps // 10, 1)),
        "device": "cpu",
        "progress": False,
        **({"ema_decay": budget.ema_decay} if budget.ema_decay else {}),
        **(
            {"select_by": "fde", "select_context": CONTEXT_LEN, "select_horizon": horizon}
            if budget.select_by == "fde"
            else {}
        ),
    }  # + "seed", one of budget.seeds
    results: dict = {"test": {}, "val": {}}
    per_window: dict = {}  # test windows' errors at the longest horizon, per predictor (seeds: the mean)
    steps: dict = {"test": {}, "val": {}}  # mean error (m) at each step 1..horizon, per predictor
    probabilistic: dict = {}  # test split: coverage and CRPS per step of each predictor's own error model
    train_ws = WindowSet.load(features / "train.npz")
    t0 = time.perf_counter()
    kalman_params = fit_kalman(train_ws, CONTEXT_LEN, horizon)  # tuned for its own forecasts: the point reference
    kalman_fit_s = time.perf_counter() - t0
    kalman_mle = fit_kalman(train_ws, CONTEXT_LEN, horizon, objective="likelihood")  # the textbook fit: its covariance
    kalman_forecast_s = {}
    cv_radius = {"train": _cv_radius(train_ws, horizon), "val": _cv_radius(splits["val"][0], horizon)}
    for split, (ws, true_lon, true_lat) in splits.items():
        t0 = time.perf_counter()
        k_lon, k_lat, _ = kalman_forecast(ws, CONTEXT_LEN, horizon, kalman_params)
        kalman_forecast_s[split] = round(time.perf_counter() - t0, 3)
        l_lon, l_lat, _, l_cov = kalman_forecast(ws, CONTEXT_LEN, horizon, kalman_mle, with_cov=True)
        c_lon, c_lat, _ = constant_velocity(ws, CONTEXT_LEN, horizon)
        for label, (lon, lat) in (
            ("constant_velocity", (c_lon, c_lat)),
            ("linear_extrapolation", linear_extrapolation(ws, CONTEXT_LEN, horizon)[:2]),
            ("kalman", (k_lon, k_lat)),
            ("kalman_mle", (l_lon, l_lat)),
        ):
            results[split][label], final = errors_and_final(lon, lat, true_lon, true_lat)
            steps[split][label] = step_errors(lon, lat, true_lon, true_lat)
            if split == "test":
                per_window[label] = final
        if split == "test":
            probabilistic["constant_velocity"] = _radial(c_lon, c_lat, true_lon, true_lat, cv_radius["train"])
            probabilistic["constant_velocity (val fit)"] = _radial(c_lon, c_lat, true_lon, true_lat, cv_radius["val"])
            probabilistic["kalman_mle"] = _scores(l_lon, l_lat, true_lon, true_lat, l_cov)
    training, by_seed = {}, {"test": {}, "val": {}}
    for preset in presets or list_presets():
        label = preset_label(preset)
        runs = []
        for seed in budget.seeds:
            t0 = time.perf_counter()
            epochs_run = []
            train_dir = run_training(
                features,
                root=root,
                preset=preset,
                train_overrides={**train_overrides, "seed": seed},
                on_epoch=lambda record, fraction: epochs_run.append(record["epoch"]),
                forecast_evaluator=evaluate_forecast,  # for select_by "fde"
            )
            train_s = time.perf_counter() - t0
            model = load_model(train_dir / "model.pt")
            t1 = time.perf_counter()
            errors, windows, positions = {}, None, {}
            for split, (ws, true_lon, true_lat) in splits.items():
                lon, lat, _ = rollout(model, ws, CONTEXT_LEN, horizon)
                errors[split], final = errors_and_final(lon, lat, true_lon, true_lat)
                positions[split] = (lon, lat)
                if split == "test":
                    windows = final
            forecast_s = time.perf_counter() - t1
            blended = _blended(positions, splits)  # the never-worse rule, fitted on val (trajfm.model.blend)
            runs.append(
                {
                    "seed": seed,
                    "train_dir": train_dir,
                    "train_s": train_s,
                    "cached": not epochs_run,
                    "forecast_s": forecast_s,
                    "errors": errors,
                    "windows": windows,
                    "steps": {split: step_errors(*positions[split], *splits[split][1:]) for split in splits},
                    "blended": blended,
                }
            )
            log(
                f"{name}: {label} seed {seed} test {errors['test']} val fde@{horizon} "
                f"{errors['val'].get(f'fde_{horizon}_m')} ({train_s:.0f} s training)"
            )
        per_window[label] = np.mean([r["windows"] for r in runs], axis=0)
        per_window[f"{label}+blend"] = np.mean([r["blended"]["windows"] for r in runs], axis=0)
        for split in results:
            results[split][label] = mean_errors([r["errors"][split] for r in runs])
            results[split][f"{label}+blend"] = mean_errors([r["blended"]["errors"][split] for r in runs])
            steps[split][label] = _mean_lists([r["steps"][split] for r in runs])
            steps[split][f"{label}+blend"] = _mean_lists([r["blended"]["steps"][split] for r in runs])
            if len(runs) > 1:
                by_seed[split][label] = [r["errors"][split] for r in runs]
                by_seed[split][f"{label}+blend"] = [r["blended"]["errors"][split] for r in runs]
        probabilistic[f"{label}+blend"] = {
            "coverage": {
                lv: _mean_lists([r["blended"]["scores"]["coverage"][lv] for r in runs])
                for lv in runs[0]["blended"]["scores"]["coverage"]
            },
            "crps_m": _mean_lists([r["blended"]["scores"]["crps_m"] for r in runs]),
        }
        blend_rules = {f"seed {r['seed']}": r["blended"]["rule"] for r in runs}
        manifest = read_manifest(runs[0]["train_dir"])
        final = manifest["final"]
        training[label] = {
            "steps": final["step"],
            "epochs": final["epoch"],
            "best_val_loss": final["best_val_loss"],
            "params": final["n_params"],
            "train_s": round(sum(r["train_s"] for r in runs), 1),
            "forecast_s": round(sum(r["forecast_s"] for r in runs), 1),
            "train_dir": str(runs[0]["train_dir"]),
            "cached": all(r["cached"] for r in runs),  # finished stages of an earlier run
            "config": manifest.get("model_config"),
            "blend": blend_rules,
            **({"train_dirs": [str(r["train_dir"]) for r in runs]} if len(runs) > 1 else {}),
        }
    return summarize(
        {
            "data": {
                **info,
                "test_windows_evaluated": len(splits["test"][0]),
                "val_windows_evaluated": len(splits["val"][0]),
                "context_len": CONTEXT_LEN,
                "horizons": list(HORIZONS),
            },
            "baselines": {
                "constant_velocity": "repeat the last displacement and time gap (trajfm.evaluate.forecast.constant_velocity)",
                "linear_extrapolation": f"least-squares velocity over the last {LINEAR_FIT_POINTS} fixes, last time gap repeated",
                "kalman": "constant-velocity Kalman filter (Stone Soup models, trajfm.evaluate.kalman), noise tuned on the "
                "train split for the lowest error of its own forecasts",
                "kalman_mle": "the same filter with its noise fitted on the train split by maximum likelihood",
            },
            "kalman": {
                **kalman_params.to_dict(),
                "objective": "forecast",
                "likelihood_fit": kalman_mle.to_dict(),
                "fit_s": round(kalman_fit_s, 2),
                "forecast_s": kalman_forecast_s,
                "fit_windows": int(min(len(forecastable(train_ws, CONTEXT_LEN, horizon)), FIT_MAX_WINDOWS)),
            },
            "step_errors": {
                "metric": "mean error (m) at each step 1..horizon",
                **{k: {p: [round(v, 2) for v in e] for p, e in d.items()} for k, d in steps.items()},
            },
            "probabilistic": {
                "split": "test",
                "levels": [50, 80, 90],
                "error_models": {
                    "constant_velocity": "radial error quantiles per step fitted on the train split (trajfm.model.blend.fit_radius)",
                    "constant_velocity (val fit)": "the same fitted on the val split, as the model's",
                    "kalman_mle": "the likelihood-fitted filter's own predicted Gaussian covariance (state + fix noise); the "
                    "forecast-tuned filter's covariance is no error model (its noise is chosen for its mean)",
                    "<preset>+blend": "radial error quantiles per step of the blended forecast fitted on the val split (the registered model's)",
                },
                "predictors": probabilistic,
            },
            "training": {
                "train_overrides": {
                    **{k: v for k, v in train_overrides.items() if k != "progress"},
                    "seeds": list(budget.seeds),
                },
                "planned_steps": planned_steps(n_train, TrainConfig(**train_overrides)),
                "per_preset": training,
            },
            "results": results["test"],
            "val_results": results["val"],
            **({"seed_results": by_seed} if len(budget.seeds) > 1 else {}),
            "window_errors": {
                "metric": f"fde_{horizon}_m",
                "split": "test",
                "errors": {k: [round(float(e), 1) for e in v] for k, v in per_window.items()},
            },
            "variants": {
                preset_label(p): {
                    "file": str(Path(p).resolve()),
                    "comment": json.loads(Path(p).read_text()).get("_comment", ""),
                }
                for p in presets or []
                if is_variant(p)
            },
        }
    )


BASELINES = ("constant_velocity", "linear_extrapolation", "kalman", "kalman_mle")


def step_errors(lon, lat, true_lon, true_lat) -> list[float]:
    """Mean great-circle error (m) at each forecast step of (N, H) forecasts."""
    from trajfm.geo import haversine_m

    return haversine_m(lon, lat, true_lon, true_lat).mean(axis=0).tolist()


def _mean_lists(lists: list[list[float]]) -> list[float]:
    return np.mean(np.asarray(lists, np.float64), axis=0).round(4).tolist()


def _scores(lon, lat, true_lon, true_lat, cov) -> dict:
    from trajfm.evaluate.scores import error_vectors_m, probabilistic_scores

    return probabilistic_scores(error_vectors_m(lon, lat, true_lon, true_lat), cov)


def _cv_radius(ws, horizon: int):
    """Constant velocity's own error model: per-step radial error quantiles fitted on ``ws``."""
    from trajfm.evaluate.forecast import constant_velocity, forecastable
    from trajfm.geo import haversine_m
    from trajfm.model.blend import fit_radius

    sel = forecastable(ws, CONTEXT_LEN, horizon)
    lon, lat, _ = constant_velocity(ws, CONTEXT_LEN, horizon)
    truth = slice(CONTEXT_LEN, CONTEXT_LEN + horizon)
    return fit_radius(haversine_m(lon, lat, ws.lon[sel, truth], ws.lat[sel, truth]))


def _radial(lon, lat, true_lon, true_lat, table) -> dict:
    from trajfm.evaluate.scores import error_vectors_m, radial_scores

    return radial_scores(error_vectors_m(lon, lat, true_lon, true_lat), table)


def _blended(positions: dict, splits: dict) -> dict:
    """A preset's forecasts under the never-worse rule (``trajfm.model.blend``, as
    ``trajfm.evaluate.calibrate.calibrate_model`` fits it): per-step weights against constant
    velocity and the error scale, both fitted on the val split, applied to both splits."""
    from trajfm.evaluate.forecast import constant_velocity
    from trajfm.geo import haversine_m
    from trajfm.model.blend import fit_blend, fit_radius, mix

    horizon = max(HORIZONS)
    out: dict = {"errors": {}, "steps": {}}
    rule = None
    for split in ("val", "test"):  # val first: the rule is chosen there
        ws, true_lon, true_lat = splits[split]
        m_lon, m_lat = positions[split]
        c_lon, c_lat, _ = constant_velocity(ws, CONTEXT_LEN, horizon)
        last_lon, last_lat = ws.lon[:, CONTEXT_LEN - 1], ws.lat[:, CONTEXT_LEN - 1]
        if rule is None:
            w = fit_blend(last_lon, last_lat, m_lon, m_lat, c_lon, c_lat, true_lon, true_lat)
            b_lon, b_lat = mix(np.asarray(w), last_lon, last_lat, m_lon, m_lat, c_lon, c_lat)
            rule = {
                "weights": list(w),
                "radius_m": [
                    [round(v, 2) for v in row] for row in fit_radius(haversine_m(b_lon, b_lat, true_lon, true_lat))
                ],
            }
        b_lon, b_lat = mix(np.asarray(rule["weights"]), last_lon, last_lat, m_lon, m_lat, c_lon, c_lat)
        out["errors"][split], final = errors_and_final(b_lon, b_lat, true_lon, true_lat)
        out["steps"][split] = step_errors(b_lon, b_lat, true_lon, true_lat)
        if split == "test":
            out["windows"] = final
            out["scores"] = _radial(b_lon, b_lat, true_lon, true_lat, rule["radius_m"])
    out["rule"] = rule
    return out


class BenchError(ValueError):
    """A request the benchmark refuses (unknown part, results that cannot be merged)."""


def summarize(q: dict) -> dict:
    """Adds ``best_preset`` (lowest test FDE at the longest horizon, the issue's target), the
    preset a reader would pick without seeing the test split (``best_preset_by_val``, when every
    preset has validation errors) and ``targets`` to one dataset's quality section."""
    key = f"fde_{max(HORIZONS)}_m"
    presets = [p for p in q["results"] if p not in BASELINES and p not in q.get("variants", {})]
    out = {k: v for k, v in q.items() if k not in ("best_preset", "best_preset_by_val", "targets")}
    if not presets:
        return out
    res = q["results"]
    best = min(presets, key=lambda p: res[p][key])
    val = q.get("val_results", {})
    cv, tut = res["constant_velocity"][key], res.get("tutorial", {}).get(key)
    out["best_preset"] = best
    out["best_preset_by_val"] = min(presets, key=lambda p: val[p][key]) if all(p in val for p in presets) else None
    out["targets"] = {
        "metric": key,
        "best_vs_constant_velocity": round(1 - res[best][key] / cv, 4) if cv else None,
        "best_vs_constant_velocity_target": TARGET_VS_CONSTANT_VELOCITY,
        "best_vs_tutorial": round(1 - res[best][key] / tut, 4) if tut else None,
        "best_vs_tutorial_target": TARGET_VS_TUTORIAL,
    }
    windows = (q.get("window_errors") or {}).get("errors", {})
    if windows.get("constant_velocity") and windows.get(best):
        intervals = {
            "best_vs_constant_velocity": paired_improvement(
                windows[best], windows["constant_velocity"], (TARGET_VS_CONSTANT_VELOCITY,)
            )
        }
        if windows.get("tutorial"):
            intervals["best_vs_tutorial"] = paired_improvement(
                windows[best], windows["tutorial"], (TARGET_VS_TUTORIAL,)
            )
        out["targets"]["bootstrap"] = intervals
    return out


def _unset_dropped(value):
    """A setting added later with default None (``train_stride``) equals its absence."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def merge_quality(old: dict | None, new: dict) -> dict:
    """One dataset's quality section with ``new``'s presets added to (or replacing) ``old``'s.

    Only results measured the same way merge: the same windows and the same training budget;
    otherwise a ``BenchError`` says what differs."""
    if not old or "results" not in old or "results" not in new:
        return new
    unset = {"seeds": [0], "ema_decay": 0.0, "select_by": "loss"}  # results from before these options
    for what, a, b in (
        ("windows", old["data"], new["data"]),
        (
            "training budget",
            {**unset, **old["training"]["train_overrides"]},
            {**unset, **new["training"]["train_overrides"]},
        ),
    ):
        keys = set(b) - {"seconds", "val_windows_evaluated"}
        diff = sorted(k for k in keys if k in a and _unset_dropped(a[k]) != _unset_dropped(b[k]))
        if diff:
            raise BenchError(
                f"cannot merge: the {what} differ ({', '.join(diff)}) from the existing results; "
                "use --fresh (trained models are cached under the data root) or another --out"
            )

    def merged(a: dict, b: dict) -> dict:
        both = {**a, **b}
        return {k: both[k] for k in [*BASELINES, *sorted(k for k in both if k not in BASELINES)] if k in both}

    per_preset = dict(old["training"]["per_preset"])
    for label, entry in new["training"]["per_preset"].items():
        before = per_preset.get(label, {})
        same_model = before.get("train_dir") == entry.get("train_dir") or (
            label in old["results"]
            and old["results"][label] == new["results"].get(label)
            and old.get("val_results", {}).get(label) == new["val_results"].get(label)
        )  # deterministic: the same model
        if entry.get("cached") and same_model and "train_s" in before:
            entry = {**entry, "train_s": before["train_s"]}  # the time of the run that trained it, not of the cache hit
        per_preset[label] = entry
    training = {**old["training"], "per_preset": per_preset}
    variants = {k: v for k, v in old.get("variants", {}).items() if k not in new["results"]}  # a rerun decides
    variants.update(new.get("variants", {}))
    seeds = {
        split: {k: v for k, v in old.get("seed_results", {}).get(split, {}).items() if k not in new["results"]}
        for split in ("test", "val")
    }  # a rerun decides, with its own seeds
    for split in seeds:
        seeds[split].update(new.get("seed_results", {}).get(split, {}))
    windows = {k: v for k, v in (old.get("window_errors") or {}).get("errors", {}).items() if k not in new["results"]}
    windows.update((new.get("window_errors") or {}).get("errors", {}))  # a rerun decides; older files have none
    window_errors = {**(new.get("window_errors") or old.get("window_errors") or {}), "errors": windows}
    extra = {}  # per-step errors and probabilistic scores: a rerun's predictors replace, others stay
    if "step_errors" in new:
        extra["step_errors"] = {
            k: ({**(old.get("step_errors") or {}).get(k, {}), **v} if isinstance(v, dict) else v)
            for k, v in new["step_errors"].items()
        }
    if "probabilistic" in new:
        extra["probabilistic"] = {
            **new["probabilistic"],
            "predictors": {
                **(old.get("probabilistic") or {}).get("predictors", {}),
                **new["probabilistic"]["predictors"],
            },
        }
    for key in ("baselines", "kalman"):
        if key in new:
            extra[key] = new[key]
    return summarize(
        {
            **old,
            **extra,
            **({"window_errors": window_errors} if windows else {}),
            "data": {**old["data"], **new["data"]},
            "training": training,
            "variants": variants,
            "results": merged(old["results"], new["results"]),
            "val_results": merged(old.get("val_results", {}), new["val_results"]),
            **({"seed_results": seeds} if any(seeds.values()) else {}),
        }
    )


# --- the whole run -----------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


PARTS = ("speed", "generation", "quality")
DATASETS = ("ais", "geolife")
ENV_PRESETS = "TRAJFM_BENCH_PRESETS"
ENV_PARTS = "TRAJFM_BENCH_PARTS"


def _quality(name: str, budget: Budget, root: Path, log, presets: list[str] | None) -> dict:
    from trajfm.data.catalog import embedded_files
    from trajfm.data.readers import READERS

    if name == "ais":
        return evaluate_dataset("ais", [str(p) for p in embedded_files()], root, budget.ais_steps, budget, log, presets)
    geolife = shared_geolife_dir()
    if "geolife" not in READERS:
        return {"skipped": "no 'geolife' reader in trajfm.data.readers.READERS"}
    if not geolife.is_dir():
        return {"skipped": f"{geolife} not found (the shared GeoLife files are not on this machine)"}
    return evaluate_dataset("geolife", [str(geolife)], root, budget.geolife_steps, budget, log, presets)


def _previous(out: Path, budget: Budget) -> dict | None:
    """The results already in ``out`` to merge into (None if there are none)."""
    if not out.is_file():
        return None
    previous = json.loads(out.read_text())
    if previous.get("benchmark") != "model":
        raise BenchError(f"{out} is not a model benchmark result; use --fresh or another --out")
    if previous["budget"]["name"] != budget.name:
        raise BenchError(
            f"{out} holds budget {previous['budget']['name']!r} results, not {budget.name!r}: "
            "use the same budget, --fresh, or another --out"
        )
    return previous


def run(
    out: Path,
    budget: Budget | str = "default",
    root: str | Path | None = None,
    parts: tuple[str, ...] = PARTS,
    presets: list[str] | None = None,
    datasets: tuple[str, ...] = DATASETS,
    fresh: bool = False,
) -> dict:
    """Run the benchmark parts, writing ``out`` (JSON) and ``out.with_suffix('.md')`` after each.

    ``presets`` (names or ``.json`` paths; default all bundled presets) limits the quality part;
    ``tutorial`` always comes with them (the targets are relative to it). Unless ``fresh``, the
    results already in ``out`` are kept: parts not run stay, and a quality run adds its presets
    to the ones measured before on the same windows with the same budget (``merge_quality``).
    """
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    unknown = sorted(set(parts) - set(PARTS)) + sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise BenchError(f"unknown parts/datasets {unknown}; parts: {PARTS}, datasets: {DATASETS}")
    if presets is not None:
        from trajfm.model.config import load_preset

        for p in presets:
            try:
                load_preset(p)  # an unknown name fails now, not after an hour of training
            except ValueError as exc:
                raise BenchError(str(exc)) from exc
        presets = ["tutorial", *[p for p in presets if p != "tutorial"]]
    root = Path(root) if root else DEFAULT_ROOT
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = None if fresh else _previous(out, budget)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(budget.threads)
    started = time.perf_counter()
    this_run = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parts": list(parts),
        "datasets": list(datasets),
        "presets": presets or "all",
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    result: dict = previous or {
        "benchmark": "model",
        "created": this_run["created"],
        "budget": asdict(budget),
        "data_root": str(root),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": budget.threads,
            "load_average_before": this_run["load_average_before"],
        },
    }
    result.setdefault("runs", []).append(this_run)

    def log(msg: str) -> None:
        print(f"[bench model {time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    def save() -> None:
        this_run["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        this_run["peak_rss_mb"] = _peak_rss_mb()
        this_run["elapsed_s"] = round(time.perf_counter() - started, 1)
        if previous is None:  # the first run's machine line
            result["machine"]["load_average_after"] = this_run["load_average_after"]
            result["machine"]["peak_rss_mb"] = this_run["peak_rss_mb"]
            result["elapsed_s"] = this_run["elapsed_s"]
        out.write_text(dumps(result))
        out.with_suffix(".md").write_text(markdown(result))

    try:
        if "speed" in parts:
            result["speed"] = measure_train_speed(budget)
            result["train_speed_ratio_vs_hf"] = result["speed"].get("train_speed_ratio_vs_hf")
            log(f"training speed: {result['speed']}")
            save()
        if "generation" in parts:
            result["generation"] = measure_generation(budget)
            result["kv_cache_speedup"] = result["generation"]["kv_cache_speedup"]
            log(f"generation: {result['generation']}")
            save()
        if "quality" in parts:
            quality = result.setdefault("quality", {})
            for name in datasets:
                quality[name] = merge_quality(quality.get(name), _quality(name, budget, root, log, presets))
                save()
    finally:
        torch.set_num_threads(threads_before)
    save()
    log(f"done: {out}")
    return result


# a JSON array of numbers as ``json.dumps(indent=2)`` writes it: newlines only occur between
# tokens (never inside a JSON string), so this cannot match text within a string
_NUMBER_LIST = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def dumps(result: dict) -> str:
    """``result`` as indented JSON with each list of numbers on one line (the per-window errors
    are thousands of numbers: one line per predictor, not one per number)."""
    return (
        _NUMBER_LIST.sub(
            lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", json.dumps(result, indent=2)
        )
        + "\n"
    )


# --- the report --------------------------------------------------------------------------------


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# trajfm model benchmark",
        "",
        f"`trajfm bench model`, budget `{r['budget']['name']}`, {r['created']}; {m['cpu_count']} cores "
        f"({m['processor']}), torch {m['torch']} on {m['torch_threads']} thread(s); load average "
        f"{m['load_average_before']} before, {m.get('load_average_after')} after (a machine shared with other jobs: "
        f"absolute rates are lower bounds, ratios are measured interleaved). Peak RSS {m.get('peak_rss_mb')} MB; "
        f"{r.get('elapsed_s')} s in all.",
        "",
    ]
    later = r.get("runs", [])[1:]
    if later:
        lines += [
            "Later runs merged into these results: "
            + "; ".join(
                f"{x['created']} ({', '.join(x['parts'])}; presets {x['presets'] if isinstance(x['presets'], str) else ', '.join(x['presets'])}; "
                f"load average {x['load_average_before']} before; {x.get('elapsed_s')} s)"
                for x in later
            )
            + ".",
            "",
        ]
    s = r.get("speed")
    if s:
        c = s["config"]
        lines += [
            f"## Training step: trajfm vs transformers GPT-2 ({s['preset']}: {c['n_layer']} layers, {c['n_head']} heads, "
            f"d={c['d_model']}, {c['block_size']} points, dropout {c['dropout']}; {s['batch_windows']} windows = "
            f"{s['points_per_step']} real points per step; median of {s['timed_steps']} steps)",
            "",
            "| model | params | step (ms, median) | points/s | points/CPU-s | saved activations (MB) | weights+grads+AdamW (MB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k in ("trajfm", "transformers"):
            if k in s:
                v = s[k]
                lines.append(
                    f"| {k} | {v['params']:,} | {v['step_ms_median']:.1f} | {v['points_per_s']:,.0f} | "
                    f"{v['points_per_cpu_s']:,.0f} | {v['saved_activation_mb']:.1f} | {v['weights_grads_adam_mb']:.2f} |"
                )
        lines += [
            "",
            f"**train_speed_ratio_vs_hf = {_fmt(s.get('train_speed_ratio_vs_hf'), 3)}** (wall; "
            f"{_fmt(s.get('train_speed_ratio_vs_hf_cpu_time'), 3)} on thread CPU time; target >= 1.0). {s['note']}.",
            "",
        ]
    g = r.get("generation")
    if g:
        lines += [
            f"## Generation: {g['steps']}-step rollout, KV cache vs recompute ({g['preset']}, block_size {g['block_size']}, "
            f"{g['batch']} trajectories, {g['context_points']}-point context, median of {g['reps']})",
            "",
            "| | seconds | steps/s |",
            "|---|---:|---:|",
            f"| with KV cache | {g['with_cache_s']:.3f} | {g['with_cache_steps_per_s']:.1f} |",
            f"| without (recompute the prefix) | {g['without_cache_s']:.3f} | {g['steps'] / g['without_cache_s']:.1f} |",
            "",
            f"**kv_cache_speedup = {g['kv_cache_speedup']:.1f}x** (target >= 5); cache {g['kv_cache_mb']} MB; largest "
            f"difference between the two paths' predictions {g['max_abs_diff_cache_vs_recompute']:.2e} (raw units).",
            "",
        ]
    for name, q in r.get("quality", {}).items():
        if "skipped" in q:
            lines += [f"## Forecast quality: {name}", "", f"Skipped: {q['skipped']}", ""]
            continue
        d, t = q["data"], q["training"]
        keys = [f"{a}_{k}_m" for k in HORIZONS for a in ("ade", "fde")]
        tg_key = f"fde_{max(HORIZONS)}_m"
        lines += [
            f"## Forecast quality: {name}, test split (latest 15% of the time span)",
            "",
            f"{d['test_windows_evaluated']:,} test windows, {d['context_len']} points of context; windows train/val/test "
            f"{d['windows']['train']:,}/{d['windows']['val']:,}/{d['windows']['test']:,}"
            f"{_stride_note(d.get('window_params') or {})}; each preset trained "
            f"{t['train_overrides']['max_steps']} steps of {t['train_overrides']['batch_size']} windows "
            f"({_kept_note(t['train_overrides'])}{_ema_note(t['train_overrides'].get('ema_decay'))}){_seeds_note(t['train_overrides'].get('seeds') or [0])}. Errors in metres (great circle); ADE@k = mean over steps 1..k, FDE@k = at step k; "
            f"val = the same on {d.get('val_windows_evaluated', '-')} validation windows (the split to choose on).",
            "",
        ]
        header = [
            "| predictor | "
            + " | ".join(k.replace("_m", "").replace("_", "@", 1).upper().replace("@", " @") for k in keys)
            + f" | val {tg_key.replace('_m', '').replace('_', ' @', 1).upper()} | train s |",
            "|---|" + "---:|" * (len(keys) + 2),
        ]
        lines += header
        val, variants = q.get("val_results", {}), q.get("variants", {})
        by_seed = q.get("seed_results", {})

        def cell(pred: str, split: str, errs: dict, k: str) -> str:
            runs = by_seed.get(split, {}).get(pred)
            spread = f" ± {_fmt(seed_std(runs, k))}" if runs and k == tg_key else ""
            return _fmt(errs.get(k)) + spread

        def row(pred: str, errs: dict) -> str:
            tr = t["per_preset"].get(pred, {})
            label = f"**{pred}**" if pred == q.get("best_preset") else pred
            return (
                f"| {label} | "
                + " | ".join(cell(pred, "test", errs, k) for k in keys)
                + f" | {cell(pred, 'val', val.get(pred, {}), tg_key)} | {_fmt(tr.get('train_s'))} |"
            )

        lines += [row(pred, errs) for pred, errs in q["results"].items() if pred not in variants]
        reused = [p for p, tr in t["per_preset"].items() if tr.get("cached") and (tr.get("train_s") or 0) < 1.0]
        if reused:
            lines += [
                "",
                f"Reused from the data root's cache (trained by an earlier run on the same windows with the "
                f"same config and budget; train s is the lookup): {', '.join(f'`{p}`' for p in reused)}.",
            ]
        tg = q.get("targets")
        if tg:
            lines += [
                "",
                f"Best preset **{q['best_preset']}** on {tg['metric']}: "
                f"{_fmt(100 * tg['best_vs_constant_velocity'] if tg['best_vs_constant_velocity'] is not None else None)}% better than "
                f"constant velocity (target 25%), "
                f"{_fmt(100 * tg['best_vs_tutorial'] if tg['best_vs_tutorial'] is not None else None)}% better than `tutorial` "
                f"(target 20%). Chosen on the validation split instead: {q.get('best_preset_by_val') or '-'}.",
            ]
            if tg.get("bootstrap"):
                lines += ["", _bootstrap_note(tg["bootstrap"])]
        lines += _steps_and_scores_md(q)
        if variants:
            lines += [
                "",
                f"Variants tried ({name}; preset files outside the bundle, compared on the validation split, "
                "not candidates for the best preset):",
                "",
                *header,
            ]
            lines += [row(pred, q["results"][pred]) for pred in variants if pred in q["results"]]
            lines += [""] + [f"- `{pred}`: {v['comment']}" for pred, v in variants.items() if pred in q["results"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _steps_and_scores_md(q: dict) -> list[str]:
    """Markdown: the test error at every step 1..H, the never-worse check of each blended row,
    the Kalman filter's fitted noise and time, and the probabilistic scores."""
    st, variants = (q.get("step_errors") or {}).get("test"), q.get("variants", {})
    if not st:
        return []
    order = [p for p in BASELINES if p in st] + [
        p for p in st if p not in BASELINES and p.split("+")[0] not in variants
    ]
    H = len(st[order[0]])
    lines = [
        "",
        "Error (m) at each step ahead, test split (`<preset>+blend`: the preset with its per-step blend with "
        "constant velocity and error scale, both fitted on the val split, as the registered model forecasts; "
        "its val errors are on the split the rule was fitted on):",
        "",
        "| predictor | " + " | ".join(f"@{h}" for h in range(1, H + 1)) + " |",
        "|---|" + "---:|" * H,
    ]
    lines += [f"| {p} | " + " | ".join(_fmt(v) for v in st[p]) + " |" for p in order]
    cv = np.asarray(st.get("constant_velocity") or [np.nan] * H)
    worse = {p: [h + 1 for h, (a, b) in enumerate(zip(st[p], cv)) if a > b] for p in order if p.endswith("+blend")}
    if worse:
        lines += [
            "",
            "Steps where a blended preset is worse than constant velocity on test: "
            + "; ".join(f"`{p}` {', '.join(map(str, w)) if w else 'none'}" for p, w in worse.items())
            + ".",
        ]
    kf = q.get("kalman")
    if kf:
        lines += [
            "",
            f"Kalman filter: q = {kf['q_m2_s3']:.3g} m²/s³ (white-noise acceleration per axis), r = {kf['r_m2']:.3g} m² "
            f"(fix noise per axis), fitted ({'for its own forecast error' if kf.get('objective') == 'forecast' else 'by maximum likelihood'}) on {kf['fit_windows']:,} training windows in "
            f"{kf['fit_s']} s; forecasting the test split took {kf['forecast_s'].get('test')} s."
            + (
                f" `kalman_mle`: q = {kf['likelihood_fit']['q_m2_s3']:.3g} m²/s³, r = {kf['likelihood_fit']['r_m2']:.3g} m², "
                "by maximum likelihood (its covariance is the filter's error model below)."
                if kf.get("likelihood_fit")
                else ""
            ),
        ]
    pr = (q.get("probabilistic") or {}).get("predictors")
    if pr:
        lines += [
            "",
            "Probabilistic forecasts, test split: coverage of the 50/80/90% regions (share of windows whose true "
            "fix lies inside; mean over steps 1..H, and the 80% region at steps 1 and H) and CRPS in metres (mean over "
            "east/north and windows; lower is better), each predictor with its own error model "
            "(`probabilistic.error_models` in the JSON):",
            "",
            f"| predictor | cov 50% | cov 80% | cov 90% | cov 80% @1 | cov 80% @{H} | CRPS m (mean) | CRPS @1 | CRPS @{H} |",
            "|---|" + "---:|" * 8,
        ]
        for p in [p for p in BASELINES if p in pr] + [p for p in pr if p not in BASELINES]:
            c, crps = pr[p]["coverage"], pr[p]["crps_m"]
            lines.append(
                f"| {p} | "
                + " | ".join(f"{100 * np.mean(c[lv]):.1f}%" for lv in ("50", "80", "90"))
                + f" | {100 * c['80'][0]:.1f}% | {100 * c['80'][-1]:.1f}% | {_fmt(float(np.mean(crps)))} | "
                f"{_fmt(crps[0])} | {_fmt(crps[-1])} |"
            )
    return lines


def _bootstrap_note(b: dict) -> str:
    """The targets' intervals in one sentence (``paired_improvement`` per reference)."""
    names = {"best_vs_constant_velocity": "constant velocity", "best_vs_tutorial": "`tutorial`"}
    parts = []
    for key, v in b.items():
        target, share = next(iter(v["share_reaching"].items()), (None, None))
        parts.append(
            f"vs {names.get(key, key)} {100 * v['ci_low']:.1f} to {100 * v['ci_high']:.1f}%"
            + (f" (target {100 * float(target):.0f}% reached in {100 * share:.1f}% of draws)" if target else "")
        )
    first = next(iter(b.values()))
    return (
        f"{100 * first['level']:.0f}% intervals of the improvement over the {first['windows']:,} test windows "
        f"(paired bootstrap, {first['resamples']:,} draws, seed {first['seed']}; the spread over which windows were "
        f"drawn, not over training seeds): " + "; ".join(parts) + "."
    )


def _kept_note(overrides: dict) -> str:
    if overrides.get("select_by") == "fde":
        return f"epoch with the best validation FDE @{overrides.get('select_horizon')} kept"
    return "best validation epoch kept"


def _ema_note(decay: float | None) -> str:
    return f"; weights averaged, ema_decay {decay}" if decay else ""


def _seeds_note(seeds: list[int]) -> str:
    if len(seeds) < 2:
        return ""
    return (
        f"; errors are the mean over {len(seeds)} training seeds ({', '.join(map(str, seeds))}), "
        f"± the standard deviation over them; train s is the sum"
    )


def _stride_note(params: dict) -> str:
    stride = params.get("train_stride")
    return f" (training windows start every {stride} points, overlapping)" if stride else ""


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def main(out: Path, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trajfm.bench.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (a .md table is written beside it)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=os.environ.get(ENV_BUDGET, "default"))
    parser.add_argument("--root", default=None, help=f"data root for the pipeline stages (default {DEFAULT_ROOT})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the budget's)")
    parser.add_argument(
        "--train-stride",
        type=int,
        default=None,
        help="points between training window starts (default 32: disjoint; e.g. 8 overlaps them)",
    )
    parser.add_argument(
        "--parts",
        default=os.environ.get(ENV_PARTS, ",".join(PARTS)),
        help=f"comma-separated subset of {','.join(PARTS)} (or ${ENV_PARTS})",
    )
    parser.add_argument(
        "--presets",
        default=os.environ.get(ENV_PRESETS),
        help=f"comma-separated presets (names or .json paths) for the quality part; tutorial "
        f"always comes with them (or ${ENV_PRESETS}; default: all bundled presets)",
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset of ais,geolife")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds per preset (default 0); errors are their mean, "
        "with the standard deviation in the report",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="train every preset with a weight average (TrainConfig.ema_decay, e.g. 0.999) and judge it by that",
    )
    parser.add_argument(
        "--select",
        choices=("loss", "fde"),
        default="loss",
        help="the epoch each preset keeps: lowest validation loss, or lowest validation FDE at the "
        "longest horizon (TrainConfig.select_by)",
    )
    parser.add_argument("--fresh", action="store_true", help="start a new results file instead of merging into --out")
    args = parser.parse_args(argv or [])
    budget = BUDGETS[args.budget]
    try:
        seeds = tuple(int(s) for s in _csv(args.seeds)) or budget.seeds
    except ValueError:
        parser.exit(2, f"{parser.prog}: error: --seeds takes comma-separated integers, not {args.seeds!r}\n")
    if len(set(seeds)) != len(seeds):
        parser.exit(2, f"{parser.prog}: error: --seeds repeats a seed: {args.seeds!r}\n")
    if not 0.0 <= args.ema < 1.0:
        parser.exit(2, f"{parser.prog}: error: --ema takes a decay in [0, 1), not {args.ema}\n")
    if args.threads or args.train_stride or seeds != budget.seeds or args.ema or args.select != budget.select_by:
        budget = Budget(
            **{
                **asdict(budget),
                "threads": args.threads or budget.threads,
                "train_stride": args.train_stride or budget.train_stride,
                "seeds": seeds,
                "ema_decay": args.ema,
                "select_by": args.select,
            }
        )
    try:
        run(
            args.out or out,
            budget,
            args.root,
            tuple(_csv(args.parts)),
            _csv(args.presets) or None,
            tuple(_csv(args.datasets)),
            args.fresh,
        )
    except BenchError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    import sys

    cli = argparse.ArgumentParser(add_help=False)
    cli.add_argument("--out", type=Path, required=True)
    known, _ = cli.parse_known_args()
    sys.exit(main(known.out, sys.argv[1:]))
