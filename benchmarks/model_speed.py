"""The model benchmark's speed and memory parts (``--parts speed,generation``), run by
``benchmarks.model``, one process, ``threads`` torch threads, interleaved so both contenders see
the same machine load; medians of ``speed_reps`` timed steps after ``speed_warmup`` untimed ones:

- ``train_speed_ratio_vs_hf``: one training step (``loss``, ``backward``, AdamW ``step``) of
  ``TrajGPT`` against the same model written with ``transformers.GPT2Model`` (``HFTrajGPT2``).
- ``kv_cache_speedup``: ``trajfm.model.generate.Rollout`` of ``GEN_STEPS`` steps from a
  ``GEN_CONTEXT``-point context, ``use_cache=True`` against ``False``.
- Memory: bytes the autograd graph saves during one training step, parameter + gradient + AdamW
  state bytes, the KV cache size.

The whole description is the docstring of ``benchmarks.model``.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

from benchmarks.model_budget import Budget

GEN_STEPS = 64  # rollout length of the KV-cache benchmark
GEN_CONTEXT = 32
SPEED_PRESET = "trajgpt2-small"  # the largest one-point-per-token GPT-2 preset: the HF comparison


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
