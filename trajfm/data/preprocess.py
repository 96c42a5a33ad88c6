"""Preprocess: clean, split, filter and resample the ingested points in parallel with Dask.

``preprocess(ingest_dir)`` reads ``<ingest_dir>/points.parquet`` as a Dask DataFrame, shuffles it
so that every mover (``obj_id``) lands in exactly one partition (no trajectory is cut), runs
``trajfm.data.clean.clean_partition`` on each partition, and writes ``<root>/preprocess/<key>/``:

- ``points.parquet``: resampled canonical points sorted by ``traj_id, t``;
- ``quarantine.parquet``: rejected input fixes with ``reason, detail``;
- ``manifest.json``: ``rows_in == rows_kept + rows_quarantined``, counts by reason, ``rows_out``,
  ``n_trajectories``, the parameters and the Dask scheduler used.

The outputs are sorted by content, so the same input gives byte-identical tables (same content
hash) on the synchronous scheduler, a LocalCluster of any size, or a remote scheduler.
``key`` hashes the ingest output (its key and table hashes) and the normalized parameters;
a complete directory for that key is returned without work.

Schedulers: ``"distributed"`` (default) starts a ``LocalCluster`` (processes, ``n_workers``, one
thread each, dashboard on a free port) and closes it afterwards, or connects to ``dask_address``
(``tcp://host:port``) when given; ``"threads"`` and ``"sync"`` use Dask's local schedulers (sync
runs everything in this process: for tests and debugging).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from trajfm.data.clean import (
    ParamsLike,
    clean_partition,
    empty_clean_quarantine,
    merge_counts,
    normalize_params,
    params_to_json,
)
from trajfm.data.schema import OPTIONAL_COLUMNS, empty_points, to_canonical
from trajfm.store import (
    SCHEMA_VERSION,
    StageWriter,
    data_root,
    is_complete,
    read_manifest,
    stable_hash,
    stage_dir,
)

STAGE = "preprocess"
PREPROCESS_VERSION = 1  # bump when cleaning behaviour changes, so cached outputs are not reused
SCHEDULERS = ("distributed", "threads", "sync")
# Task-based shuffle: at this project's sizes (about 1M fixes) it is faster than p2p and does not
# log p2p's per-shuffle warnings; switch to "p2p" for data larger than the workers' memory.
SHUFFLE_METHOD = "tasks"


def preprocess_key(ingest_manifest: dict, params: ParamsLike = None) -> str:
    """Cache key: the ingest output's key and table hashes, normalized parameters, versions."""
    return stable_hash(
        {
            "stage": STAGE,
            "version": PREPROCESS_VERSION,
            "schema_version": SCHEMA_VERSION,
            "ingest": {"key": ingest_manifest.get("key"), "files": ingest_manifest.get("files")},
            "params": params_to_json(params),
        }
    )


def _default_root(ingest_dir: Path) -> Path:
    """The data root the ingest directory lives under (``<root>/ingest/<key>``), else the default."""
    if ingest_dir.parent.name == "ingest":
        return data_root(ingest_dir.parent.parent)
    return data_root(None)


def preprocess(
    ingest_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    params: ParamsLike = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    scheduler: str = "distributed",
    npartitions: int | None = None,
) -> Path:
    """Run the preprocess stage on an ingest output directory; returns the stage directory.

    ``root``: data root for the output (default: the root ``ingest_dir`` lives under).
    ``params``: cleaning parameters (``trajfm.data.clean.normalize_params``; per-kind defaults
    when ``None``). ``dask_address``: an existing Dask scheduler to use instead of a LocalCluster.
    ``n_workers``: LocalCluster worker processes. ``scheduler``: ``"distributed"``, ``"threads"``
    or ``"sync"``. ``npartitions``: partitions after the shuffle by ``obj_id`` (default
    ``2 * n_workers``); it changes the work split, never the result. A ``dask_address`` always
    means the distributed scheduler at that address, whatever ``scheduler`` says.
    """
    ingest_dir = Path(ingest_dir)
    if not is_complete(ingest_dir):
        raise FileNotFoundError(f"{ingest_dir} is not a complete stage directory (no manifest.json)")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    ingest_manifest = read_manifest(ingest_dir)
    table = normalize_params(params)
    root = data_root(root) if root not in (None, "") else _default_root(ingest_dir)
    key = preprocess_key(ingest_manifest, table)
    out = stage_dir(root, STAGE, key)
    if is_complete(out):
        return out

    npartitions = int(npartitions or max(1, 2 * n_workers))
    started = time.perf_counter()
    results, dask_info = _run_partitions(
        ingest_dir / "points.parquet", table, npartitions, scheduler, dask_address, n_workers
    )
    points, quarantine, counts = _gather(results)
    elapsed = time.perf_counter() - started

    if counts["rows_in"] != ingest_manifest.get("rows_kept", counts["rows_in"]):
        raise AssertionError(
            f"preprocess read {counts['rows_in']} rows, ingest kept {ingest_manifest.get('rows_kept')}"
        )
    with StageWriter(root, STAGE, key) as writer:
        writer.write_frame("points", points)
        writer.write_frame("quarantine", quarantine)
        writer.manifest.update(
            counts,
            params=params_to_json(table),
            dask=dask_info,
            ingest={"dir": str(ingest_dir), "key": ingest_manifest.get("key")},
            elapsed_s=round(elapsed, 3),
        )
    return writer.final


def _run_partitions(
    points_path: Path, table: dict, npartitions: int, scheduler: str, address: str | None, n_workers: int
) -> tuple[list, dict]:
    """Shuffle by mover and clean each partition; returns the per-partition results."""
    import dask
    import dask.dataframe as dd

    ddf = dd.read_parquet(str(points_path))
    # One mover -> one partition: a deterministic hash of obj_id picks the partition.
    ddf = ddf.shuffle(on="obj_id", npartitions=npartitions, shuffle_method=SHUFFLE_METHOD)
    tasks = [dask.delayed(clean_partition)(part, table) for part in ddf.to_delayed()]
    info = {"scheduler": scheduler, "npartitions": npartitions}

    if scheduler in ("sync", "threads") and address is None:
        return list(dask.compute(*tasks, scheduler="sync" if scheduler == "sync" else "threads")), info

    from distributed import Client, LocalCluster

    if address is not None:
        info.update(scheduler="distributed", address=address)
        with Client(address) as client:
            info["n_workers"] = len(client.scheduler_info().get("workers", {}))
            return client.gather(client.compute(tasks)), info
    info.update(scheduler="distributed-local", n_workers=n_workers)
    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        return client.gather(client.compute(tasks)), info


def _gather(results: list[tuple[pd.DataFrame, pd.DataFrame, dict]]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Concatenate partition outputs and sort them by content (scheduler-independent result)."""
    counts = merge_counts([r[2] for r in results])
    point_frames = [r[0] for r in results if len(r[0])]
    points = to_canonical(pd.concat(point_frames, ignore_index=True)) if point_frames else to_canonical(empty_points())
    points = points.sort_values(["traj_id", "t"], ignore_index=True)

    q_frames = [r[1] for r in results if len(r[1])]
    if q_frames:
        quarantine = pd.concat(q_frames, ignore_index=True)
        reason, detail = quarantine.pop("reason"), quarantine.pop("detail")
        quarantine = to_canonical(quarantine)
        quarantine["reason"] = reason.astype("string").reset_index(drop=True)
        quarantine["detail"] = detail.astype("string").reset_index(drop=True)
        optional = [c for c in OPTIONAL_COLUMNS if c in quarantine.columns and c != "mode"]
        by = ["traj_id", "t", "lon", "lat", *optional, "reason", "detail"]
        quarantine = quarantine.sort_values(by, ignore_index=True)
    else:
        columns = results[0][1].columns if results else []
        quarantine = empty_clean_quarantine([c for c in columns if c in OPTIONAL_COLUMNS])
    counts["n_trajectories"] = int(points["traj_id"].nunique())
    return points, quarantine, counts


def read_preprocess_counts(path: str | os.PathLike) -> dict:
    """Row counts of a preprocess directory: rows_in, rows_kept, rows_quarantined, by reason, rows_out."""
    m = read_manifest(path)
    keys = ("rows_in", "rows_kept", "rows_quarantined", "quarantined_by_reason", "rows_out", "n_trajectories")
    return {k: m[k] for k in keys}


__all__ = ["preprocess", "preprocess_key", "read_preprocess_counts", "SCHEDULERS"]
