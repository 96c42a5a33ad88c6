"""Pre-training benchmark: the streamed trainer against the in-memory one, memory as the corpus
grows 10x, and data parallel against one process.

``trajfm bench pretrain --out benchmarks/results/pretrain.json [--scale S]`` writes the JSON and a
markdown table beside it:

- ``stream_vs_memory_speed``: points/s of ``trajfm.train.pretrain.pretrain_stream`` over the shards of
  a corpus divided by points/s of ``trajfm.train.train`` on the same windows in memory (same
  model, batch and steps; one torch thread each, timed after a warm-up run). Bar: >= 0.9.
- ``rss_growth_10x``: peak resident memory of a streamed training process (its own
  ``VmHWM``, from start to end: imports, shards opened, the steps) on a generated replica of
  the real corpus of ``6M x scale`` points, and again at 10x that; the ratio. Bar: <= 1.1. Memory
  is bounded by the shard size (one shard per source in memory): the 1x corpus must fill its
  shards (``--max-windows``) for the ratio to measure growth rather than shards filling up. The
  replica copies real sources (``../shared/data/corpus``), each copy shifted in time and
  position, written and sharded chunk by chunk (the generator's memory is bounded too).
- ``ddp_matches_single``: 2 gloo processes under torchrun (rendezvous on 127.0.0.1) vs 1 process
  drawing the same global batches (``data_ranks=2``): every nominal epoch's train loss within
  1e-3.

``--scale 1`` is the issue's size (60M points at 10x: hours and tens of GB of disk); small
scales run in minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FULL_POINTS = 6_000_000  # the real corpus is ~6.6M points; the replica at scale 1, and 10x that
REPLICA_SOURCES = ("hurdat2_storms", "riga_gtfsrt_transit", "movebank_white_storks", "trajan_drifters_buoys")
MODEL = {"n_layer": 2, "n_head": 4, "d_model": 64, "block_size": 64, "dropout": 0.0}
WINDOW = 64


def _shared_corpus() -> Path:
    here = Path(__file__).resolve().parents[1]
    for d in (here.parent / "shared" / "data" / "corpus", here / ".." / "shared" / "data" / "corpus"):
        if d.is_dir():
            return d
    raise SystemExit("trajfm bench pretrain needs ../shared/data/corpus (the real corpus the replica copies)")


def write_replica(out: Path, points: int, chunk_rows: int = 200_000) -> list[tuple[str, str]]:
    """``points`` points per the real sources' mix: each source's real points copied until its share
    is reached, copy ``k`` shifted by ``k`` days and ``k x 0.01`` degrees east; one Parquet per source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = _shared_corpus()
    out.mkdir(parents=True, exist_ok=True)
    frames = {
        n: pd.read_parquet(corpus / f"{n}.parquet", columns=["traj_id", "t", "lon", "lat"]) for n in REPLICA_SOURCES
    }
    share = points // len(frames)
    paths = []
    for name, df in frames.items():
        path = out / f"{name}.parquet"
        writer, written, k = None, 0, 0
        while written < share:
            n = min(len(df), share - written)
            copy = df.iloc[:n].copy()
            copy["traj_id"] = copy["traj_id"].astype(str) + f"#{k}"
            copy["t"] = copy["t"] + pd.Timedelta(days=k)
            copy["lon"] = ((copy["lon"] + 0.01 * k + 180.0) % 360.0) - 180.0
            copy = copy.sort_values(["traj_id", "t"], kind="stable")
            for start in range(0, len(copy), chunk_rows):
                table = pa.Table.from_pandas(copy.iloc[start : start + chunk_rows], preserve_index=False)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
            written += n
            k += 1
        writer.close()
        paths.append((name, str(path)))
    return paths


def _shard(sources, out: Path, max_windows: int = 4096) -> Path:
    from trajfm.features.shards import ShardParams, write_shards
    from trajfm.features.windows import WindowParams

    write_shards(
        sources,
        out,
        ShardParams(WindowParams(window=WINDOW, stride=WINDOW, split_by="source"), max_windows=max_windows),
    )
    return out


def train_cfg(steps: int, batch: int):
    from trajfm.train import TrainConfig

    return TrainConfig(
        epochs=10_000, max_steps=steps, batch_size=batch, warmup_steps=2, seed=0, device="cpu", checkpoint_every=0
    )


def speed(shards: Path, steps: int, batch: int, work: Path) -> dict:
    """Points per second of both trainers on the same windows (training only: best of 2 runs)."""
    import torch

    from trajfm.features.shards import load_split
    from trajfm.model import GPTConfig
    from trajfm.train import train
    from trajfm.train.pretrain import pretrain_stream

    torch.set_num_threads(1)
    tr = load_split(shards, "train")
    stats = json.loads((shards / "stats.json").read_text())
    cfg = train_cfg(steps, batch)
    results = {"stream": [], "memory": []}
    for rep in range(2):
        t0 = time.perf_counter()
        res = pretrain_stream(shards, GPTConfig(**MODEL), cfg, work / f"stream{rep}")
        results["stream"].append(_points(res.history, time.perf_counter() - t0))
        t0 = time.perf_counter()
        res = train(tr, None, GPTConfig(**MODEL), stats, cfg, work / f"memory{rep}")
        results["memory"].append(_points(res.history, time.perf_counter() - t0))
    stream = max(r["points_per_s"] for r in results["stream"])
    memory = max(r["points_per_s"] for r in results["memory"])
    return {
        "stream_points_per_s": stream,
        "memory_points_per_s": memory,
        "stream_vs_memory_speed": stream / memory,
        "steps": steps,
        "batch_size": batch,
        "train_windows": len(tr),
    }


def _points(history: list[dict], seconds: float) -> dict:
    """Training throughput from the history (points/s measured inside the loop, epoch-weighted)."""
    return {"points_per_s": float(np.mean([h["points_per_s"] for h in history])), "wall_s": seconds}


def _peak_rss_child(shards: Path, steps: int, batch: int, work: Path) -> int:
    """Peak RSS (bytes) of a fresh process that runs the streamed trainer on ``shards``: its
    ``VmHWM`` (the high-water mark of its own address space; ``ru_maxrss`` would also count the
    parent's pages it was forked from, which grow with the replica the parent wrote)."""
    code = (
        "import json, resource, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from benchmarks.pretrain import MODEL, train_cfg\n"
        "from trajfm.model import GPTConfig\n"
        "from trajfm.train.pretrain import pretrain_stream\n"
        f"pretrain_stream({str(shards)!r}, GPTConfig(**MODEL), train_cfg({steps}, {batch}), {str(work)!r})\n"
        "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "print(json.dumps({'maxrss_kib': hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kib"]) * 1024


def rss_growth(scale: float, steps: int, batch: int, work: Path, max_windows: int = 4096) -> dict:
    rows = {}
    for mult in (1, 10):
        n = int(FULL_POINTS * scale * mult)
        sources = write_replica(work / f"replica{mult}", n)
        shards = _shard(sources, work / f"shards{mult}", max_windows)
        from trajfm.features.shards import load_manifest

        m = load_manifest(shards)
        rows[mult] = {
            "points": m["points_in"],
            "train_windows": m["windows"]["train"],
            "shards": len(m["shards"]),
            "peak_rss_bytes": _peak_rss_child(shards, steps, batch, work / f"ck{mult}"),
        }
    return {
        "rss_growth_10x": rows[10]["peak_rss_bytes"] / rows[1]["peak_rss_bytes"],
        "corpus": {str(k): v for k, v in rows.items()},
    }


def ddp(shards: Path, steps: int, work: Path) -> dict:
    """2 gloo processes vs 1 process with the same global batches; the largest loss difference."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import json, os, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from benchmarks.pretrain import MODEL, train_cfg\n"
        "from trajfm.model import GPTConfig\n"
        "from trajfm.train.pretrain import pretrain_stream\n"
        "data_ranks = int(sys.argv[3]) if len(sys.argv) > 3 else None\n"
        "r = pretrain_stream(\n"
        "    sys.argv[1], GPTConfig(**MODEL), train_cfg(int(sys.argv[4]), 8), sys.argv[2], data_ranks=data_ranks\n"
        ")\n"
        "if int(os.environ.get('RANK', '0')) == 0: print(json.dumps([h['train_loss'] for h in r.history]))\n"
    )
    script = work / "ddp_worker.py"
    script.write_text(code)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            str(script),
            str(shards),
            str(work / "ddp2"),
            "2",
            str(steps),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    one = subprocess.run(
        [sys.executable, str(script), str(shards), str(work / "ddp1"), "2", str(steps)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    a, b = json.loads(two.stdout.strip().splitlines()[-1]), json.loads(one.stdout.strip().splitlines()[-1])
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    return {
        "ddp_matches_single": bool(diff < 1e-3),
        "ddp_max_loss_diff": diff,
        "ddp_losses_2proc": a,
        "ddp_losses_1proc": b,
    }


def run(scale: float, steps: int, batch: int, work: Path, max_windows: int = 4096) -> dict:
    t0 = time.perf_counter()
    small = write_replica(work / "speed", int(FULL_POINTS * scale))
    shards = _shard(small, work / "speed_shards", max_windows)
    out = {
        "scale": scale,
        **speed(shards, steps, batch, work / "speed_runs"),
        **rss_growth(scale, steps, batch, work, max_windows),
        **ddp(shards, min(steps, 20), work),
    }
    out["bars"] = {
        "stream_vs_memory_speed >= 0.9": out["stream_vs_memory_speed"] >= 0.9,
        "rss_growth_10x <= 1.1": out["rss_growth_10x"] <= 1.1,
        "ddp_matches_single": out["ddp_matches_single"],
    }
    out["seconds"] = time.perf_counter() - t0
    out["model"], out["window"], out["max_windows"] = MODEL, WINDOW, max_windows
    return out


def markdown(r: dict) -> str:
    c = r["corpus"]
    lines = [
        f"# Pre-training benchmark (scale {r['scale']})",
        "",
        "| measure | value | bar |",
        "|---|---|---|",
        f"| stream_vs_memory_speed | {r['stream_vs_memory_speed']:.3f} ({r['stream_points_per_s']:.0f} vs "
        f"{r['memory_points_per_s']:.0f} points/s) | >= 0.9 |",
        f"| rss_growth_10x | {r['rss_growth_10x']:.3f} ({c['1']['peak_rss_bytes'] / 2**20:.0f} MiB at "
        f"{c['1']['points']:,} points, "
        f"{c['10']['peak_rss_bytes'] / 2**20:.0f} MiB at {c['10']['points']:,}) | <= 1.1 |",
        f"| ddp_matches_single | {r['ddp_matches_single']} (max loss difference {r['ddp_max_loss_diff']:.2e}) | true |",
        "",
        f"{r['steps']} steps of {r['batch_size']} windows of {r['window']} points, model {r['model']}, "
        "shards of at most "
        f"{r['max_windows']} windows; {r['seconds']:.0f} s in all.",
    ]
    return "\n".join(lines) + "\n"


def main(out: Path, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trajfm bench pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="replica size as a fraction of 6M points (10x: 60M at 1.0)"
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed run")
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument(
        "--max-windows",
        type=int,
        default=4096,
        help="windows per shard (the memory bound: make the 1x corpus fill its shards, e.g. 64 at --scale 0.005)",
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv or [])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.work:
        results = run(args.scale, args.steps, args.batch, Path(args.work), args.max_windows)
    else:
        with tempfile.TemporaryDirectory(prefix="trajfm-bench-pretrain-") as work:
            results = run(args.scale, args.steps, args.batch, Path(work), args.max_windows)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    from benchmarks import run_as_script

    sys.exit(run_as_script(main, "python -m benchmarks.pretrain"))
