"""Preprocessing benchmark: plain MovingPandas against trajfm on one and two Dask workers.

``trajfm bench preprocess --out benchmarks/results/preprocess.json`` (or ``main(out)``) writes the
JSON results and a markdown table beside it (same stem, ``.md``).

Input: every AIS file of ``tracktable-data`` (``trajfm.data.catalog.embedded_files()``, about
466k fixes) and, when present, every GeoLife ``.plt`` file under ``../shared/data/geolife``
(about 165k fixes), as canonical points sorted by ``traj_id, t`` (what ingest writes), stored
as an ingest-shaped stage with 65,536-row Parquet row groups.

Chain, the same for every contender, per-kind defaults (``trajfm.data.clean.KIND_DEFAULTS``):
speed, speed-outlier cleaning, split at observation gaps, resample to the kind's interval (60 s
for vessels) -- no stop split, no generalization.

Contenders, each timed on its own:

(a) **plain MovingPandas**, one process: ``TrajectoryCollection`` -> ``add_speed`` ->
    ``OutlierCleaner.clean(v_max=)`` -> ``ObservationGapSplitter.split(gap=)`` ->
    ``get_position_at`` on the time grid of every segment. At ~10-100 microseconds per fix per
    step (and ~3 ms per ``get_position_at``) the whole set would take about an hour, so it runs
    on a subset of whole trajectories (``--mpd-points``, AIS and GeoLife in proportion) and is
    reported in points per second.
(b) **trajfm, 1 Dask worker** and (c) **2 workers**: ``trajfm.data.preprocess.preprocess`` on a
    ``LocalCluster`` of 1 or 2 worker processes (1 thread each; ``preprocess.local_cluster``, the
    one the stage starts itself) through ``dask_address``. Timed:
    the whole stage, Parquet in to Parquet out (read, clean, split, resample, hash, write);
    cluster start-up and one warm-up run are outside the timed section. Run on the real set
    and on a replica (the real set repeated ``--replica`` times, each copy with its own
    ``obj_id``/``traj_id`` and times shifted by whole weeks) large enough to show scaling.

Also measured: the chain alone in memory (``clean_partition`` on the real set, one process) --
the per-core rate of the computation without Parquet I/O; peak resident memory of each process
(``ru_maxrss``); the machine and its load average before and after (the benchmark machine may
be shared; then absolute rates and scaling are lower bounds).

Rates are input fixes per second; each figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

ROW_GROUP_ROWS = 65_536


def shared_geolife_dir() -> Path:
    """``../shared/data/geolife`` next to the project checkout (where the tests look too)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geolife"


def load_real_points(geolife: Path | None = None) -> pd.DataFrame:
    """All embedded AIS fixes plus the shared GeoLife fixes (if present), canonical, sorted."""
    from trajfm.data.catalog import embedded_files
    from trajfm.data.readers import READERS, read_file
    from trajfm.data.schema import POINT_COLUMNS, to_canonical

    frames = [read_file(p).points for p in embedded_files()]
    geolife = shared_geolife_dir() if geolife is None else geolife
    for plt in sorted(geolife.glob("*/Trajectory/*.plt")) if geolife.is_dir() else []:
        frames.append(read_file(plt, format="geolife").points if "geolife" in READERS else _read_plt(plt))
    df = pd.concat([f[POINT_COLUMNS] for f in frames], ignore_index=True)
    return to_canonical(df).sort_values(["traj_id", "t"], kind="stable", ignore_index=True)


def _read_plt(path: Path) -> pd.DataFrame:
    """A GeoLife .plt file without the trajfm reader: 6 header lines, then lat, lon, 0, alt, days, date, time."""
    raw = pd.read_csv(path, skiprows=6, header=None, names=["lat", "lon", "zero", "alt", "days", "date", "time"])
    user = path.parent.parent.name
    return pd.DataFrame(
        {
            "traj_id": f"geolife:{user}:{path.stem}",
            "obj_id": f"geolife:{user}",
            "t": pd.to_datetime(raw["date"] + " " + raw["time"], utc=True),
            "lon": raw["lon"],
            "lat": raw["lat"],
            "kind": "person",
            "source": "geolife",
        }
    )


def make_replica(df: pd.DataFrame, copies: int) -> pd.DataFrame:
    """``copies`` copies of ``df``, copy ``r`` with ids prefixed ``rNN/`` and times + r weeks (sorted)."""
    parts = []
    for r in range(copies):
        prefix = f"r{r:02d}/"
        parts.append(
            df.assign(
                traj_id=prefix + df["traj_id"].astype(str),
                obj_id=prefix + df["obj_id"].astype(str),
                t=df["t"] + pd.Timedelta(weeks=r),
            )
        )
    from trajfm.data.schema import to_canonical

    return to_canonical(pd.concat(parts, ignore_index=True))  # prefixes keep the traj_id order


def write_input(root: Path, name: str, df: pd.DataFrame) -> Path:
    """An ingest-shaped stage directory holding ``df`` (what ``preprocess`` reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trajfm.store import StageWriter

    with StageWriter(root, "ingest", name) as w:
        pq.write_table(
            pa.Table.from_pandas(df, preserve_index=False), w.path / "points.parquet", row_group_size=ROW_GROUP_ROWS
        )
        w.manifest["files"]["points"] = {"rows": int(len(df)), "hash": name}
        w.manifest.update(rows_kept=int(len(df)))
    return w.final


def movingpandas_subset(df: pd.DataFrame, n_points: int) -> pd.DataFrame:
    """Whole trajectories, every k-th in traj_id order per source kind, about ``n_points`` fixes."""
    picked = []
    for _, part in df.groupby("kind", observed=True):
        share = int(round(n_points * len(part) / len(df)))
        ids = part["traj_id"].drop_duplicates()
        sizes = part.groupby("traj_id", observed=True).size().reindex(ids)
        step = max(1, int(len(part) / max(share, 1)))
        chosen, total = [], 0
        for tid, size in sizes.iloc[::step].items():
            if total >= share:
                break
            chosen.append(tid)
            total += int(size)
        picked.append(part[part["traj_id"].isin(chosen)])
    return pd.concat(picked, ignore_index=True).sort_values(["traj_id", "t"], kind="stable", ignore_index=True)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, MB (``VmHWM``: unlike ``ru_maxrss``, not inherited
    from the parent a spawned process was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------------------------
# Contenders that run in a fresh process (their peak memory is their own)


def time_movingpandas(path: str, repeats: int) -> dict:
    """Plain MovingPandas chain on the points in ``path``; per-step seconds, medians."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import movingpandas as mpd

    from trajfm.data.clean import KIND_DEFAULTS

    df = pd.read_parquet(path)
    runs, cpu = [], []
    for _ in range(repeats):
        cpu0 = _cpu_s()
        steps = dict.fromkeys(("collection", "speed", "outliers", "gaps", "resample"), 0.0)
        n_out = 0
        for kind, sub in df.groupby("kind", observed=True):
            p = KIND_DEFAULTS[str(kind)]
            frame = sub.assign(t=sub["t"].dt.tz_localize(None))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                tc = mpd.TrajectoryCollection(
                    frame, traj_id_col="traj_id", obj_id_col="obj_id", t="t", x="lon", y="lat", crs="EPSG:4326"
                )
                t1 = time.perf_counter()
                tc.add_speed(units=("m", "s"))
                t2 = time.perf_counter()
                tc = mpd.OutlierCleaner(tc).clean(v_max=p.v_max_mps, units=("m", "s"))
                t3 = time.perf_counter()
                tc = mpd.ObservationGapSplitter(tc).split(gap=pd.Timedelta(seconds=p.max_gap_s))
                t4 = time.perf_counter()
                step = pd.Timedelta(seconds=p.interval_s)
                for tr in tc:
                    grid = pd.date_range(
                        pd.Timestamp(tr.get_start_time()).ceil(step),
                        pd.Timestamp(tr.get_end_time()).floor(step),
                        freq=step,
                    )
                    for t in grid:
                        tr.get_position_at(t)
                    n_out += len(grid)
                t5 = time.perf_counter()
            for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                steps[name] += dt
        runs.append(steps)
        cpu.append(_cpu_s() - cpu0)
    total = statistics.median(sum(r.values()) for r in runs)
    return {
        "points": int(len(df)),
        "trajectories": int(df["traj_id"].nunique()),
        "resampled_points": n_out,
        "seconds": total,
        "seconds_by_step": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
        "points_per_s": len(df) / total,
        "points_per_cpu_s": len(df) / statistics.median(cpu),
        "peak_rss_mb": _peak_rss_mb(),
    }


def time_chain_in_memory(path: str, repeats: int) -> dict:
    """trajfm's vectorized chain (``clean_partition``) on the points in ``path``, in one process."""
    from trajfm.data.clean import clean_partition

    df = pd.read_parquet(path)
    clean_partition(df)  # warm-up: imports, first-call costs, first touch of the memory
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), _cpu_s()
        _, _, counts = clean_partition(df)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
    return {
        "points": int(len(df)),
        "seconds": statistics.median(times),
        "seconds_all": times,
        "points_per_s": len(df) / statistics.median(times),
        "points_per_cpu_s": len(df) / statistics.median(cpu),
        "rows_out": counts["rows_out"],
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_fresh_process(fn, *args) -> dict:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def time_stages(ingest_dir: Path, worker_counts: tuple[int, ...], repeats: int, work: Path) -> dict:
    """``preprocess`` on LocalClusters of each size in ``worker_counts`` (processes x 1 thread).

    All clusters start (and run once, untimed) before the timed runs, which then alternate between
    the clusters so that they see the same background load. CPU seconds are the workers' plus
    this process's (client and scheduler) during each run.
    """
    from contextlib import ExitStack

    from distributed import Client

    from trajfm.data.preprocess import local_cluster, preprocess
    from trajfm.store import read_manifest

    with ExitStack() as stack:
        clients = {}
        for n in worker_counts:
            cluster = stack.enter_context(local_cluster(n))
            clients[n] = stack.enter_context(Client(cluster))
            preprocess(ingest_dir, root=work / f"warmup-{ingest_dir.name}-{n}", dask_address=cluster.scheduler_address)
        runs = {n: {"seconds": [], "cpu_s": [], "manifests": []} for n in worker_counts}
        for r in range(repeats):
            for n in worker_counts:
                client = clients[n]
                before = sum(client.run(_cpu_s).values()) + _cpu_s()
                t0 = time.perf_counter()
                out = preprocess(
                    ingest_dir, root=work / f"run-{ingest_dir.name}-{n}-{r}", dask_address=client.scheduler.address
                )
                runs[n]["seconds"].append(time.perf_counter() - t0)
                runs[n]["cpu_s"].append(sum(client.run(_cpu_s).values()) + _cpu_s() - before)
                runs[n]["manifests"].append(read_manifest(out))
        peaks = {n: sorted(round(v, 1) for v in clients[n].run(_peak_rss_mb).values()) for n in worker_counts}

    result = {}
    for n in worker_counts:
        m = runs[n]["manifests"][-1]
        points = int(m["rows_in"])
        seconds = statistics.median(runs[n]["seconds"])
        result[n] = {
            "workers": n,
            "points": points,
            "npartitions": m["dask"]["npartitions"],
            "seconds": seconds,
            "seconds_all": [round(x, 3) for x in runs[n]["seconds"]],
            "points_per_s": points / seconds,
            "cpu_s": statistics.median(runs[n]["cpu_s"]),
            "points_per_cpu_s": points / statistics.median(runs[n]["cpu_s"]),
            "rows_out": m["rows_out"],
            "points_hash": m["files"]["points"]["hash"],
            "same_hash_every_run": len({x["files"]["points"]["hash"] for x in runs[n]["manifests"]}) == 1,
            "peak_rss_mb_per_worker": peaks[n],
        }
    return result


# ----------------------------------------------------------------------------------------------


def run(out: Path, repeats: int = 3, replica: int = 16, mpd_points: int = 4000, mpd_repeats: int = 1) -> dict:
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trajfm-bench-") as tmp:
        work = Path(tmp)
        real = load_real_points()
        n_real = len(real)
        sources = {str(k): int(v) for k, v in real.groupby("source", observed=True).size().items()}
        real_dir = write_input(work / "in", "real", real)
        subset = movingpandas_subset(real, mpd_points)
        subset_path = work / "mpd_subset.parquet"
        subset.to_parquet(subset_path, index=False)
        sub_dir = write_input(work / "in", "subset", subset)
        rep = make_replica(real, replica)
        n_replica = len(rep)
        rep_dir = write_input(work / "in", "replica", rep)
        del rep, real

        mp = _in_fresh_process(time_movingpandas, str(subset_path), mpd_repeats)
        kernel = _in_fresh_process(time_chain_in_memory, str(real_dir / "points.parquet"), repeats)
        kernel_subset = _in_fresh_process(time_chain_in_memory, str(subset_path), repeats)
        stage = {}
        for name, directory in (("real", real_dir), ("replica", rep_dir)):
            for n, result in time_stages(directory, (1, 2), repeats, work / "out").items():
                stage[f"{name}_{n}"] = result
        stage["subset_1"] = time_stages(sub_dir, (1,), repeats, work / "out")[1]
    load_after = os.getloadavg()

    one, two = stage["replica_1"], stage["replica_2"]
    results = {
        "movingpandas_points_per_s": mp["points_per_s"],
        "trajfm_points_per_s_1worker": one["points_per_s"],
        "trajfm_points_per_s_2workers": two["points_per_s"],
        "speedup_vs_movingpandas": one["points_per_s"] / mp["points_per_s"],
        "scaling_2_vs_1": two["points_per_s"] / one["points_per_s"],
        "chain_points_per_s_per_core_in_memory": kernel["points_per_s"],
        "points_per_cpu_s": {
            "movingpandas": mp["points_per_cpu_s"],
            "trajfm_stage_1worker": one["points_per_cpu_s"],
            "trajfm_stage_2workers": two["points_per_cpu_s"],
            "trajfm_chain_in_memory": kernel["points_per_cpu_s"],
        },
        "notes": {
            "points_per_cpu_s": "input fixes per CPU-second (user + system, workers + client): per-core efficiency, "
            "less sensitive than wall time to other jobs on a shared machine",
            "points_per_s": "input fixes per second, median of repeated runs",
            "movingpandas": f"plain MovingPandas chain, one process, on a subset of {mp['points']} fixes "
            f"({mp['trajectories']} whole trajectories; the full set would take about an hour)",
            "trajfm_1worker/2workers": f"whole preprocess stage (Parquet in -> Parquet out) on a LocalCluster of 1 / 2 "
            f"worker processes x 1 thread, replica of {replica} copies of the real set ({n_replica} fixes); "
            "cluster start-up and a warm-up run excluded from the timed section",
            "speedup_vs_movingpandas": "trajfm 1 worker (whole stage) / MovingPandas, both on one core",
            "chain_points_per_s_per_core_in_memory": "clean_partition (speed, outliers, gap split, resample) "
            "on the real set in memory, one process: the chain without Parquet I/O",
            "machine": _machine_note(load_before, load_after),
        },
        "targets": {
            "speedup_vs_movingpandas": ">= 100",
            "points_per_s_per_core": ">= 1e6",
            "scaling_2_vs_1": ">= 1.7",
        },
        "dataset": {
            "real_points": n_real,
            "real_points_by_source": sources,
            "replica_copies": replica,
            "replica_points": n_replica,
            "movingpandas_subset_points": mp["points"],
            "row_group_rows": ROW_GROUP_ROWS,
        },
        "movingpandas": mp,
        "trajfm_chain_in_memory": kernel,
        "trajfm_chain_in_memory_same_subset": kernel_subset,
        "trajfm_stage": stage,
        "speedup_vs_movingpandas_same_subset_in_memory": kernel_subset["points_per_s"] / mp["points_per_s"],
        "speedup_vs_movingpandas_same_subset_stage_1worker": stage["subset_1"]["points_per_s"] / mp["points_per_s"],
        "peak_rss_mb": {
            "movingpandas_process": mp["peak_rss_mb"],
            "trajfm_chain_in_memory_process": kernel["peak_rss_mb"],
            "trajfm_worker_1worker_replica": max(one["peak_rss_mb_per_worker"]),
            "trajfm_worker_2workers_replica": max(two["peak_rss_mb_per_worker"]),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "python": sys.version.split()[0],
            "versions": _versions(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "shared": max(load_before[0], load_after[0]) > 0.5,
        },
        "repeats": repeats,
        "benchmark_seconds": round(time.perf_counter() - started, 1),
    }
    return results


def _machine_note(before, after) -> str:
    cores = os.cpu_count() or 1
    # The load after includes this benchmark's own processes; only the load before says whether
    # other jobs shared the machine.
    if before[0] > 0.5:
        return (
            f"{cores}-core machine with other jobs running (load average {before[0]:.1f} before, {after[0]:.1f} "
            "after, this benchmark included): rates and scaling are lower bounds"
        )
    return (
        f"{cores}-core machine, idle before the run (load average {before[0]:.1f}; {after[0]:.1f} after, "
        "this benchmark's own load)"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("numpy", "pandas", "pyarrow", "dask", "distributed", "movingpandas", "shapely"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def markdown(r: dict) -> str:
    s, mp = r["trajfm_stage"], r["movingpandas"]
    fmt = lambda v: f"{v:,.0f}"  # noqa: E731
    rows = [
        (
            "plain MovingPandas, 1 process",
            f"subset, {mp['points']:,} fixes",
            fmt(mp["points_per_s"]),
            f"{mp['seconds']:.1f}",
            f"{mp['peak_rss_mb']:.0f}",
        ),
    ]
    for key, label in (
        ("real_1", "trajfm stage, 1 worker"),
        ("real_2", "trajfm stage, 2 workers"),
        ("replica_1", "trajfm stage, 1 worker"),
        ("replica_2", "trajfm stage, 2 workers"),
    ):
        x = s[key]
        data = "real set" if key.startswith("real") else f"replica x{r['dataset']['replica_copies']}"
        rows.append(
            (
                label,
                f"{data}, {x['points']:,} fixes",
                fmt(x["points_per_s"]),
                f"{x['seconds']:.2f}",
                f"{max(x['peak_rss_mb_per_worker']):.0f} per worker",
            )
        )
    k = r["trajfm_chain_in_memory"]
    rows.append(
        (
            "trajfm chain in memory, 1 process",
            f"real set, {k['points']:,} fixes",
            fmt(k["points_per_s"]),
            f"{k['seconds']:.2f}",
            f"{k['peak_rss_mb']:.0f}",
        )
    )
    table = ["| contender | data | fixes/s (median) | seconds | peak RSS MB |", "|---|---|---:|---:|---:|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    m = r["machine"]
    lines = [
        "# Preprocessing benchmark",
        "",
        "Chain: speed + speed-outlier cleaning + gap split + resample (60 s vessels, 10 s people), per-kind defaults.",
        "",
        *table,
        "",
        f"- speedup vs MovingPandas (1 core each): **{r['speedup_vs_movingpandas']:,.0f}x** (target >= 100x); "
        f"same subset, chain in memory: {r['speedup_vs_movingpandas_same_subset_in_memory']:,.0f}x",
        f"- chain per core, in memory: **{r['chain_points_per_s_per_core_in_memory']:,.0f} fixes/s** (target >= 1M); "
        f"whole stage per core (1 worker): {r['trajfm_points_per_s_1worker']:,.0f} fixes/s",
        f"- scaling 2 workers / 1 worker (replica): **{r['scaling_2_vs_1']:.2f}x** (target >= 1.7x); real set: "
        f"{s['real_2']['points_per_s'] / s['real_1']['points_per_s']:.2f}x",
        f"- per CPU-second (user + system, all processes; less sensitive to other jobs): MovingPandas "
        f"{r['points_per_cpu_s']['movingpandas']:,.0f}, "
        f"trajfm stage 1 worker {r['points_per_cpu_s']['trajfm_stage_1worker']:,.0f}, "
        f"2 workers {r['points_per_cpu_s']['trajfm_stage_2workers']:,.0f}, chain in memory "
        f"{r['points_per_cpu_s']['trajfm_chain_in_memory']:,.0f} fixes/CPU-s",
        f"- machine: {m['cpu_count']} cores ({m['processor']}), load average {m['load_average_before']} before, "
        f"{m['load_average_after']} after -- {r['notes']['machine']}",
        f"- medians of {r['repeats']} runs; cluster start-up and a warm-up run excluded; trajfm timings are the whole "
        "stage, Parquet in to Parquet out",
        "",
    ]
    return "\n".join(lines)


def main(out: Path, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trajfm bench preprocess")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replica", type=int, default=16)
    parser.add_argument("--mpd-points", type=int, default=4000)
    args = parser.parse_args(argv or [])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run(out, repeats=args.repeats, replica=args.replica, mpd_points=args.mpd_points)
    out.write_text(json.dumps(results, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    from benchmarks import run_as_script

    sys.exit(run_as_script(main, "python -m benchmarks.preprocess"))
