"""Model FLOPs utilization (MFU) of a training step on one CUDA GPU, bf16 autocast.

    python -m benchmarks.mfu_gpu --out benchmarks/results/mfu_gpu.json [--preset NAME]
        [--seq 512] [--batch 64] [--steps 20] [--warmup 5] [--peak-tflops 989.5] [--compile]

Without a CUDA device it prints why and exits with status 2, writing nothing.

What is timed: ``TrajGPT.loss`` under ``torch.autocast(cuda, bf16)``, ``backward``, gradient
clipping and a fused AdamW step, on a batch of ``--batch`` windows of ``--seq`` points (all
real), as ``trajfm.train`` runs it; CUDA events around ``--steps`` steps after ``--warmup``
untimed ones (and after ``torch.compile``'s compilation, with ``--compile``).

FLOPs per token (PaLM appendix B, nanoGPT's ``estimate_mfu``): ``6 N + 12 n_layer d_model T``,
where N counts the parameters that multiply activations (all but the position table) and T is
the sequence in tokens (``seq / patch_in``); the second term is attention's QK^T and AV, forward
and backward, without halving for causality (the usual convention). MFU = achieved FLOP/s over
``--peak-tflops``: 989.5 TFLOP/s is the dense bf16 peak of an H100 SXM and of an H200 (same
compute die); use 756 for H100 PCIe, 312 for A100.

The default model is the largest preset (most parameters) at 512 points per window. trajfm's
presets are small (the largest, ``timesfm-patch-large``, has 4.8M parameters), so their MFU is
bound by kernel launches and memory traffic, not by the tensor cores: the number says how far a
small model is from the hardware, and ``--batch`` is the knob that moves it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

H100_H200_BF16_DENSE_TFLOPS = 989.5


def largest_preset() -> str:
    """The bundled preset with the most parameters."""
    from trajfm.model import TrajGPT, list_presets, load_preset

    return max(list_presets(), key=lambda p: TrajGPT(load_preset(p)).num_params())


def flops_per_token(model, seq_tokens: int) -> tuple[float, int]:
    """(training FLOPs per token, N): ``6 N + 12 n_layer d_model T``; N excludes the position table."""
    c = model.config
    n = model.num_params()
    wpe = getattr(model.transformer, "wpe", None)
    if wpe is not None:
        n -= wpe.weight.numel()
    return 6.0 * n + 12.0 * c.n_layer * c.d_model * seq_tokens, n


def measure(
    preset: str | None,
    seq: int,
    batch: int,
    steps: int,
    warmup: int,
    peak_tflops: float,
    compile: bool,
    device: str = "cuda",
) -> dict:
    """One MFU measurement; ``device="cpu"`` only checks the script (bf16 autocast on CPU, wall clock)."""
    from trajfm.model import TrajGPT, load_preset

    device = torch.device(device)
    cuda = device.type == "cuda"
    preset = preset or largest_preset()
    config = load_preset(preset, block_size=seq)  # the preset's dropout: a real training step
    torch.manual_seed(0)
    model = TrajGPT(config).to(device).train()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, seq, config.n_features, generator=g).to(device)
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    lonlat = None
    if model.needs_lonlat:
        lonlat = torch.stack([torch.full((batch, seq), -74.0), torch.full((batch, seq), 40.6)], -1).double().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    loss_fn = torch.compile(model.loss) if compile else model.loss

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(x, mask, lonlat=lonlat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_compile = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t_compile
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        end.record()
        sync()
        step_s = start.elapsed_time(end) / 1000 / steps
    else:
        step_s = (time.perf_counter() - t0) / steps
    tokens = batch * (seq // config.patching.patch_in)
    fpt, n = flops_per_token(model, seq // config.patching.patch_in)
    achieved = fpt * tokens / step_s
    return {
        "benchmark": "mfu_gpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (script check only)",
        "device_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
        "torch": torch.__version__,
        "preset": preset,
        "config": config.to_dict(),
        "precision": "bf16 autocast (weights and optimizer state float32)",
        "compile": compile,
        "batch_windows": batch,
        "seq_points": seq,
        "seq_tokens": seq // config.patching.patch_in,
        "params": model.num_params(),
        "params_in_flops": n,
        "flops_per_token": fpt,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 2),
        "step_ms": round(step_s * 1000, 3),
        "tokens_per_s": round(tokens / step_s, 1),
        "points_per_s": round(batch * seq / step_s, 1),
        "achieved_tflops": round(achieved / 1e12, 3),
        "peak_tflops": peak_tflops,
        "mfu": round(achieved / (peak_tflops * 1e12), 5),
        "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
    }


def main(argv: list[str] | None = None, out: Path | None = None) -> int:
    """``python -m benchmarks.mfu_gpu --out FILE [ARGS]``; ``trajfm bench mfu_gpu --out FILE [ARGS]``
    passes ``out`` and the other arguments as ``argv``."""
    if out is not None:
        argv = ["--out", str(out), *(argv or [])]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mfu_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--preset", default=None, help="default: the largest preset")
    parser.add_argument("--seq", type=int, default=512, help="points per window")
    parser.add_argument("--batch", type=int, default=64, help="windows per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_H200_BF16_DENSE_TFLOPS,
        help="dense bf16 peak of the GPU (H100 SXM / H200: 989.5)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": check the script only
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "mfu_gpu: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine. "
            "Nothing was measured or written.",
            file=sys.stderr,
        )
        return 2
    result = measure(
        args.preset, args.seq, args.batch, args.steps, args.warmup, args.peak_tflops, args.compile, args.device
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "preset", "step_ms", "tokens_per_s", "achieved_tflops", "mfu")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
