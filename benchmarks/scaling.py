"""Scaling table: validation loss of the streamed pre-trainer for several model sizes x corpus
fractions, at the same compute (optimizer steps x batch), on the shards of a real pre-training run.

    python -m benchmarks.scaling --out benchmarks/results/scaling.json --shards <data root>/shards/<key>
        [--steps 300] [--batch-size 32] [--fractions 0.01,1.0] [--sizes tiny,small,base-small]
    (or: trajfm bench scaling --out ... --shards ...)

A corpus fraction ``f`` keeps the first ``ceil(f * windows)`` windows of every train shard (every
source and sampling view keeps the same share, so the mixing stays the corpus's); the streamed
loader cycles over what is kept, so a small fraction is seen many times in the same number of
steps. Every run is scored on the same validation subset (the first ``--val-windows`` windows of
every validation shard, scored by the trainer at every nominal epoch end and at the last step;
the table shows the best) with the normalization statistics of the whole corpus. Sizes are the
``base-small`` preset (6 layers, d=256) and two narrower/shallower variants of it, so only the
width and depth change. Writes JSON and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {
    "tiny": {"n_layer": 2, "n_head": 4, "d_model": 64},
    "small": {"n_layer": 4, "n_head": 4, "d_model": 128},
    "base-small": {},
}


def subset_shards(shards_dir: Path, out: Path, fraction: float, val_windows: int) -> dict:
    """A shards directory under ``out`` with ``fraction`` of every train shard's windows and the
    first ``val_windows`` of every validation shard; returns its manifest."""
    manifest = json.loads((shards_dir / "shards.json").read_text())
    kept = []
    for sh in manifest["shards"]:
        if sh["split"] == "test":
            continue
        n = math.ceil(fraction * sh["windows"]) if sh["split"] == "train" else min(val_windows, sh["windows"])
        with np.load(shards_dir / sh["path"]) as z:
            arrays = {k: z[k][:n] for k in z.files}
        path = out / sh["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        kept.append({**sh, "windows": n, "points": int(arrays["mask"].sum())})
    sub = {**manifest, "shards": kept}
    for split in ("train", "val", "test"):
        sub["windows"][split] = sum(sh["windows"] for sh in kept if sh["split"] == split)
    (out / "shards.json").write_text(json.dumps(sub))
    shutil.copy(shards_dir / "stats.json", out / "stats.json")
    return sub


def window_losses(model, shards_dir: Path) -> dict[str, np.ndarray]:
    """Per source, the loss of each validation window on its own (the pooled loss weights windows
    by their pairs and is dominated by a few heavy-tailed sources: the table shows both)."""
    import torch

    manifest = json.loads((shards_dir / "shards.json").read_text())
    out: dict[str, list[float]] = {}
    model.eval()
    L = model.config.block_size
    with torch.no_grad():
        for sh in manifest["shards"]:
            if sh["split"] != "val":
                continue
            with np.load(shards_dir / sh["path"]) as z:
                x = torch.from_numpy(np.ascontiguousarray(z["x"][:, :L], dtype=np.float32))
                mask = torch.from_numpy(np.ascontiguousarray(z["mask"][:, :L]))
            for i in range(len(x)):
                if int((mask[i, :-1] & mask[i, 1:]).sum()):
                    out.setdefault(sh["source"], []).append(float(model.loss(x[i : i + 1], mask[i : i + 1])))
    return {k: np.asarray(v) for k, v in out.items()}


def run_one(shards_dir: Path, size: str, steps: int, batch_size: int, lr: float, seed: int, work: Path) -> dict:
    from trajfm.model.config import load_preset
    from trajfm.train import TrainConfig
    from trajfm.train.pretrain import pretrain_stream

    manifest = json.loads((shards_dir / "shards.json").read_text())
    per_epoch = max(math.ceil(manifest["windows"]["train"] / batch_size), 1)
    cfg = TrainConfig(
        epochs=max(math.ceil(steps / per_epoch), 1),
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(100, steps // 10),
        seed=seed,
        device="cpu",
        progress=False,
        log_every=0,
        checkpoint_every=10**9,
    )
    model_config = load_preset("base-small", **SIZES[size])
    t0 = time.perf_counter()
    result = pretrain_stream(shards_dir, model_config, cfg, work / f"ckpt-{size}")
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in result.model.parameters())
    losses = window_losses(result.model, shards_dir)
    every = np.concatenate(list(losses.values()))
    return {
        "size": size,
        "n_params": n_params,
        "train_windows": manifest["windows"]["train"],
        "steps": steps,
        "windows_seen": steps * batch_size,
        "passes_over_data": steps * batch_size / manifest["windows"]["train"],
        # the trainer's own validation (every nominal epoch and at the last step); the kept weights are the best
        "val_loss": min(h["val_loss"] for h in result.history),
        "val_loss_last": result.history[-1]["val_loss"],
        "val_window_loss_median": float(np.median(every)),
        "val_source_mean_loss": {k: float(v.mean()) for k, v in sorted(losses.items())},
        "train_loss_last": result.history[-1].get("train_loss") if result.history else None,
        "seconds": seconds,
    }


def table(rows: list[dict], fractions: list[float], sizes: list[str]) -> str:
    by = {(r["size"], r["fraction"]): r for r in rows}
    head = "| size | parameters | " + " | ".join(f"{f:g} of the corpus" for f in fractions) + " |"
    lines = [
        "Validation loss, pooled (the trainer's) / median over windows; passes over the kept train windows.",
        "",
        head,
        "|---|---|" + "---|" * len(fractions),
    ]
    for s in sizes:
        cells = [
            f"{by[(s, f)]['val_loss']:.3f} / {by[(s, f)]['val_window_loss_median']:.4f} "
            f"({by[(s, f)]['passes_over_data']:.2g} passes)"
            for f in fractions
        ]
        lines.append(f"| {s} | {by[(s, fractions[0])]['n_params']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(out: Path | None = None, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, type=Path, help="a shards stage directory (trajfm pretrain)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", default="0.01,1.0")
    parser.add_argument("--sizes", default="tiny,small,base-small")
    parser.add_argument("--val-windows", type=int, default=128)
    args = parser.parse_args(argv)
    args.out = Path(out or "benchmarks/results/scaling.json")
    fractions = [float(f) for f in args.fractions.split(",")]
    sizes = args.sizes.split(",")
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        parser.error(f"unknown sizes {unknown}; known: {', '.join(SIZES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="trajfm-scaling-") as tmp:
        for f in fractions:
            sub = Path(tmp) / f"f{f:g}"
            subset_shards(args.shards, sub, f, args.val_windows)
            for s in sizes:
                row = {"fraction": f, **run_one(sub, s, args.steps, args.batch_size, args.lr, args.seed, sub)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "command": f"python -m benchmarks.scaling --out {args.out} " + " ".join(argv or []),
        "shards": str(args.shards),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "val_windows_per_shard": args.val_windows,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(table(rows, fractions, sizes))
    print(table(rows, fractions, sizes))
    return 0


if __name__ == "__main__":
    from benchmarks import run_as_script

    raise SystemExit(run_as_script(main, "python -m benchmarks.scaling"))
