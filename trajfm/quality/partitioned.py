"""Validate a large stage per Dask partition with Great Expectations, then merge the results.

GX has no Dask engine, so the table is cut into partitions (row ranges of the stage's Parquet
files: the ingest stage's one ``points.parquet``, or the preprocess stage's folder of
``part-NNNNN.parquet``), each worker reads its own rows and validates them with the same suite
(built once by the caller, shipped as expectation configurations) in an ephemeral GX context,
and only counts come back. Schedulers follow ``trajfm.data.preprocess``: a LocalCluster of
``n_workers`` processes (one thread each), any ``dask_address``, or ``"sync"`` for small data.

Merge rules, chosen per expectation type so that the merged report equals validating the whole
table at once (success, element, missing and unexpected counts; not the example ids, which are
the first few found partition by partition):

================================  ===================================  ==================================
expectation                       on each partition (worker)           merged (caller)
================================  ===================================  ==================================
row-wise: ``expect_column_values  GX on the partition's rows            element / missing / unexpected
_to_*`` (not unique / increasing  (every suite expectation of           counts summed; success =
/ decreasing), column-pair values  ``trajfm.quality.suites`` is one)   (considered - unexpected) /
                                                                        considered >= mostly, GX's rule
extremes: ``expect_column_min``/  the column's min / max                GX on the frame of partition
``max_to_be_between``                                                   extremes (min of minima = min)
row count: ``expect_table_row_    the partition's row count             GX on a frame of the summed
count_to_be_between`` / ``_equal``                                      count of rows (a RangeIndex)
anything else (uniqueness,        the columns it reads                  global check: GX once on those
increasing, mean, quantiles, ...)                                       columns of the whole table, in
                                                                        table order
================================  ===================================  ==================================

Per-trajectory columns (``dt_s``, ``speed_mps``, ``traj_len``, see
:func:`trajfm.quality.suites.derive_columns`) need a trajectory's neighbours: a worker derives
them assuming its partition holds whole trajectories and returns, per ``traj_id``, its row count
and last fix. When a ``traj_id`` turns up in two or more partitions (a cut trajectory, or ids
out of order), the partitions holding it are validated again with the fix that precedes them
(``carry``), the trajectory's total length and whether its first row lies in an earlier
partition -- exactly what one pass over the whole table in row order computes. Stages written
by trajfm never cut a trajectory between part files, so that second pass is for bad data.

Data Docs and the file-mode context (``context_root``) are written once, by the caller, from the
merged result (see :func:`trajfm.quality.gate.validate_points`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.quality.results import MAX_EXAMPLES, accumulate, silence_progress_bars
from trajfm.quality.suites import REQUIRED_COLUMNS, STAGES, derive_columns, resolve_params, suite_for

PARTITION_ROWS = 1_000_000  # rows per partition (and the size above which a stage is partitioned)
SCHEDULERS = ("distributed", "sync")

# Expectation types merged by summing counts (GX column map expectations over single rows).
_NOT_ROWWISE = {
    "expect_column_values_to_be_unique",
    "expect_column_values_to_be_increasing",
    "expect_column_values_to_be_decreasing",
}
_ROWWISE_PAIRS = {
    "expect_column_pair_values_to_be_equal",
    "expect_column_pair_values_a_to_be_greater_than_b",
    "expect_column_pair_values_to_be_in_set",
    "expect_select_column_values_to_be_unique_within_record",
    "expect_multicolumn_sum_to_equal",
}
_EXTREMES = {"expect_column_min_to_be_between": "min", "expect_column_max_to_be_between": "max"}
_ROW_COUNT = {"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"}


def merge_rule(expectation_type: str) -> str:
    """``"rowwise"``, ``"extreme"``, ``"row_count"`` or ``"global"`` (see the module docstring)."""
    if expectation_type in _EXTREMES:
        return "extreme"
    if expectation_type in _ROW_COUNT:
        return "row_count"
    if expectation_type in _ROWWISE_PAIRS or (
        expectation_type.startswith("expect_column_values_to_") and expectation_type not in _NOT_ROWWISE
    ):
        return "rowwise"
    return "global"


# ----------------------------------------------------------------------------------------------
# Partitions


@dataclass(frozen=True)
class FileSlice:
    """Rows ``[start, stop)`` of one Parquet file (read by the worker itself)."""

    path: str
    start: int
    stop: int

    def load(self, columns: list[str]) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        sizes = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)], np.int64)
        first = np.cumsum(sizes) - sizes
        groups = [g for g in range(len(sizes)) if first[g] < self.stop and first[g] + sizes[g] > self.start]
        present = [c for c in columns if c in pf.schema_arrow.names]
        if not groups:
            return pf.schema_arrow.empty_table().select(present).to_pandas()
        table = pf.read_row_groups(groups, columns=present)
        table = table.slice(self.start - int(first[groups[0]]), self.stop - self.start)
        return pa.Table.from_batches(table.to_batches(), schema=table.schema).to_pandas()


@dataclass(frozen=True)
class FrameSlice:
    """Rows of an in-memory frame whose per-trajectory columns were derived on the whole table."""

    frame: pd.DataFrame

    def load(self, columns: list[str]) -> pd.DataFrame:
        return self.frame


def stage_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files of a stage's points table, in table order.

    ``path``: a stage directory (holding ``points.parquet``), a Parquet file, or a folder of
    ``*.parquet`` parts (read in name order, as ``pd.read_parquet`` does).
    """
    path = Path(path)
    if path.is_dir() and (path / "points.parquet").exists():
        path = path / "points.parquet"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".parquet" and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no Parquet points table at {path}")
    return files


def plan_slices(files: list[Path], partition_rows: int = PARTITION_ROWS) -> list[FileSlice]:
    """Cut the files into slices of about ``partition_rows`` rows (never two files in one)."""
    import pyarrow.parquet as pq

    if partition_rows < 1:
        raise ValueError(f"partition_rows must be >= 1, got {partition_rows}")
    slices = []
    for f in files:
        n = int(pq.ParquetFile(f).metadata.num_rows)
        parts = max(1, -(-n // partition_rows))
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        slices += [FileSlice(str(f), lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    return slices


# ----------------------------------------------------------------------------------------------
# On the workers


@dataclass(frozen=True)
class _Plan:
    """What every partition is validated against (small; shipped to each task)."""

    stage: str
    rowwise: list  # expectation configurations (JSON dicts) run by GX on each partition
    extremes: list  # [(column, "min" | "max")] to compute per partition
    global_columns: list  # columns the global checks read (gathered, in table order)
    derived: bool  # FrameSlice partitions come with their per-trajectory columns


def _ephemeral_definition(configs: list[dict], name: str):
    """A validation definition for ``configs`` in a fresh ephemeral GX context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    silence_progress_bars(context)
    asset = context.data_sources.add_pandas(name="trajfm_points").add_dataframe_asset(name=name)
    batch_definition = asset.add_batch_definition_whole_dataframe(name="whole_frame")
    expectations = [ExpectationConfiguration(**c).to_domain_obj() for c in configs]
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    return context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))


def run_expectations(configs: list[dict], frame: pd.DataFrame, name: str = "trajfm_partition") -> dict:
    """GX results of ``configs`` on ``frame`` as gate entries keyed by (type, column, check)."""

    acc: dict = {}
    if configs:
        definition = _ephemeral_definition(configs, name)
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        accumulate(acc, result, frame)
    return acc


def validate_partition(
    source, plan: _Plan, carry: pd.DataFrame | None = None, totals: dict | None = None, seen: set | None = None
) -> dict:
    """Validate one partition; returns counts, extremes, global-check columns and an id summary.

    ``carry``, ``totals``, ``seen``: for trajectories that also appear in other partitions (see
    :func:`trajfm.quality.suites.derive_columns`).
    """
    columns = REQUIRED_COLUMNS + sorted(
        set(plan.global_columns) | {c for c, _ in plan.extremes} | _config_columns(plan.rowwise)
    )
    df = source.load(columns)
    summary = None
    if plan.derived:
        frame = df
    else:
        frame, summary = derive_columns(df, carry=carry, totals=totals, seen=seen, extra=columns, summary=True)
        if plan.stage == "raw":
            frame = frame.drop(columns=["dt_s", "speed_mps", "traj_len"])
    extremes = {}
    for col, how in plan.extremes:
        values = frame[col].dropna() if col in frame else pd.Series(dtype="float64")
        extremes[(col, how)] = None if values.empty else (values.min() if how == "min" else values.max())
    gathered = frame[sorted(set(plan.global_columns) | {"traj_id"})] if plan.global_columns else None
    return {
        "entries": run_expectations(plan.rowwise, frame),
        "n_rows": int(len(frame)),
        "extremes": extremes,
        "gathered": gathered,
        "ids": summary,
    }


def _config_columns(configs: list[dict]) -> set:
    out = set()
    for c in configs:
        kw = c.get("kwargs", {})
        out |= {kw[k] for k in ("column", "column_A", "column_B") if kw.get(k)}
        out |= set(kw.get("column_list") or [])
    return out


# ----------------------------------------------------------------------------------------------
# On the caller


def split_suite(configs: list[dict]) -> dict[str, list[dict]]:
    """Expectation configurations grouped by :func:`merge_rule`."""
    groups: dict[str, list[dict]] = {"rowwise": [], "extreme": [], "row_count": [], "global": []}
    for c in configs:
        groups[merge_rule(c["type"])].append(c)
    return groups


def validate_partitions(
    sources: list,
    stage: str,
    configs: list[dict],
    *,
    derived: bool,
    scheduler: str = "sync",
    dask_address: str | None = None,
    n_workers: int = 2,
) -> tuple[list[dict], int, int]:
    """Validate ``sources`` on Dask and merge: (gate entries in suite order, rows, trajectories).

    ``configs``: the suite's expectation configurations (JSON dicts) in suite order.
    """
    from trajfm.data.preprocess import dask_runner

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    groups = split_suite(configs)
    plan = _Plan(
        stage=stage,
        rowwise=groups["rowwise"],
        extremes=[(c["kwargs"]["column"], _EXTREMES[c["type"]]) for c in groups["extreme"]],
        global_columns=sorted(_config_columns(groups["global"])),
        derived=derived,
    )
    with dask_runner(scheduler, dask_address, n_workers) as runner:
        results = runner.gather(runner.map(validate_partition, sources, [plan] * len(sources)))
        n_traj = None
        if not derived:
            results, n_traj = _rerun_cut_trajectories(runner, sources, plan, results)

    merged = _merge_rowwise(results)
    merged.update(_run_extremes(groups["extreme"], results))
    merged.update(_run_row_count(groups["row_count"], sum(r["n_rows"] for r in results)))
    merged.update(_run_global(groups["global"], results))
    keys = [_config_key(c) for c in configs]
    entries = [merged[k] for k in keys if k in merged]
    return entries, sum(r["n_rows"] for r in results), n_traj


def _config_key(c: dict) -> tuple:
    return (c["type"], c.get("kwargs", {}).get("column"), (c.get("meta") or {}).get("check"))


def _rerun_cut_trajectories(runner, sources, plan: _Plan, results: list[dict]) -> tuple[list[dict], int]:
    """Validate again, with their neighbours' context, the partitions holding a traj_id that
    appears in more than one partition; returns the final results and the number of traj_ids."""
    ids = pd.concat([r["ids"].assign(part=i) for i, r in enumerate(results)], ignore_index=True)
    n_traj = int(ids["traj_id"].nunique())
    spread = ids[ids["traj_id"].duplicated(keep=False)]
    if spread.empty:
        return results, n_traj
    totals = spread.groupby("traj_id", sort=False)["count"].sum().to_dict()
    first_part = spread.groupby("traj_id", sort=False)["part"].min().to_dict()
    redo, args = [], []
    for part, rows in spread.groupby("part", sort=True):
        earlier = spread[spread["part"] < part]
        # The last fix of each of these trajectories before this partition: in the latest earlier one.
        carry = earlier[earlier["traj_id"].isin(rows["traj_id"])].drop_duplicates("traj_id", keep="last")
        carry = carry[["traj_id", "last_t", "last_lon", "last_lat"]].rename(columns=lambda c: c.removeprefix("last_"))
        names = set(rows["traj_id"])
        seen = {t for t in names if first_part[t] < part}
        redo.append(int(part))
        args.append((carry.reset_index(drop=True), {t: totals[t] for t in names}, seen))
    again = runner.gather(
        runner.map(validate_partition, [sources[p] for p in redo], [plan] * len(redo), *map(list, zip(*args)))
    )
    results = list(results)
    for p, r in zip(redo, again):
        results[p] = r
    return results, n_traj


def _merge_rowwise(results: list[dict]) -> dict:

    merged: dict = {}
    for r in results:
        for key, e in r["entries"].items():
            m = merged.setdefault(
                key, {**e, "element_count": 0, "considered_count": 0, "unexpected_count": 0, "examples": []}
            )
            for count in ("element_count", "considered_count", "unexpected_count"):
                m[count] += e[count]
            m["exception"] = m["exception"] or e["exception"]
            m["examples"] += [x for x in e["examples"] if x not in m["examples"]][: MAX_EXAMPLES - len(m["examples"])]
    return merged


def _run_extremes(configs: list[dict], results: list[dict]) -> dict:
    out = {}
    for c in configs:
        col, how = c["kwargs"]["column"], _EXTREMES[c["type"]]
        values = [r["extremes"][(col, how)] for r in results if r["extremes"][(col, how)] is not None]
        out.update(run_expectations([c], pd.DataFrame({col: pd.Series(values, dtype=object).infer_objects()})))
    return out


def _run_row_count(configs: list[dict], n_rows: int) -> dict:
    # A frame of n_rows rows on a RangeIndex and one all-null boolean column... costs n_rows bytes.
    frame = pd.DataFrame({"_row": np.zeros(n_rows, dtype=bool)}) if configs else None
    return run_expectations(configs, frame) if configs else {}


def _run_global(configs: list[dict], results: list[dict]) -> dict:
    if not configs:
        return {}
    frame = pd.concat([r["gathered"] for r in results], ignore_index=True)
    return run_expectations(configs, frame)


def suite_configs(stage: str, params: dict | None = None, extra: list | None = None) -> list[dict]:
    """The stage's suite (plus ``extra`` expectations) as configuration dicts, built once."""
    import great_expectations as gx

    silence_progress_bars(gx.get_context(mode="ephemeral"))  # building a suite needs an active context
    suite = suite_for(stage, resolve_params(params))
    out = [e.configuration.to_json_dict() for e in suite.expectations]
    out += [e.configuration.to_json_dict() for e in extra or []]
    for c in out:
        c.pop("id", None)
    return out


__all__ = [
    "FileSlice",
    "FrameSlice",
    "PARTITION_ROWS",
    "merge_rule",
    "plan_slices",
    "split_suite",
    "stage_files",
    "suite_configs",
    "validate_partition",
    "validate_partitions",
]
