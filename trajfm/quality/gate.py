"""Run a stage's suite on a points frame and gate the pipeline on critical failures.

>>> report = validate_points(points, "processed", params={"v_max_mps": 30})   # doctest: +SKIP
>>> gate(report)          # raises ValidationFailed naming each failed critical expectation
>>> report.to_markdown()  # a table for a Prefect artifact or a run log

By default an ephemeral GX context is used (nothing written). With ``context_root`` a file
context lives under ``<context_root>/gx``: the suite and validation definition are stored
there, every run is kept as a validation result, and Data Docs are rebuilt at
``<context_root>/gx/uncommitted/data_docs/local_site/index.html``.

Large frames are validated in partitions of ``chunk_rows`` rows, and a stage's table where it lies
with :func:`validate_stage` (each Dask worker reads its own rows), then merged
(``trajfm.quality.partitioned``: row-wise counts summed and success recomputed with GX's own
``mostly`` rule, (considered - unexpected) / considered >= mostly, vacuously true on nothing
considered; table-level expectations by exact rules). The merged report equals the whole-frame one.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from trajfm.data.schema import empty_points, to_canonical
from trajfm.quality.partitioned import (
    PARTITION_ROWS,
    FrameSlice,
    plan_slices,
    stage_files,
    suite_configs,
    validate_partitions,
)
from trajfm.quality.results import accumulate, result_key, silence_progress_bars
from trajfm.quality.suites import STAGES, derive_columns, jsonable, resolve_params, suite_for

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 2_000_000
DATA_DOCS_INDEX = Path("gx/uncommitted/data_docs/local_site/index.html")


class ValidationFailed(ValueError):
    """A critical expectation failed; ``report`` holds every result."""

    def __init__(self, message: str, report: "ValidationReport"):
        super().__init__(message)
        self.report = report


@dataclass
class ValidationReport:
    """Outcome of validating one frame against one stage's suite.

    ``success`` is True when every *critical* expectation passed (warnings do not count).
    Each entry of ``results``: expectation (GX type), column, check, success,
    unexpected_count, unexpected_percent (of the rows considered: non-null rows, or all rows for
    not-null checks; of trajectories for ``traj_length``), critical, severity, mostly,
    element_count, considered_count, examples (a few offending traj_ids), exception.
    """

    stage: str
    success: bool
    n_rows: int
    results: list[dict] = field(default_factory=list)
    n_trajectories: int = 0
    params: dict = field(default_factory=dict)
    data_docs: str | None = None

    @property
    def failed_critical(self) -> list[dict]:
        return [r for r in self.results if r["critical"] and not r["success"]]

    @property
    def failed_warnings(self) -> list[dict]:
        return [r for r in self.results if not r["critical"] and not r["success"]]

    def to_dict(self) -> dict:
        """JSON-serialisable form (for manifests, Prefect artifacts, MLflow)."""
        return jsonable(asdict(self))

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [
            f"### Data quality: `{self.stage}` {status}",
            "",
            f"{self.n_rows:,} rows, {self.n_trajectories:,} trajectories; "
            f"{len(self.failed_critical)} critical and {len(self.failed_warnings)} warning failure(s) "
            f"of {len(self.results)} expectations.",
            "",
            "| | severity | expectation | column | unexpected | % | mostly | examples |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for r in self.results:
            mark = "ok" if r["success"] else ("**FAIL**" if r["critical"] else "warn")
            count = "error" if r["exception"] else (r["unexpected_count"] if r["unexpected_count"] is not None else "")
            pct = f"{r['unexpected_percent']:.3g}" if r["unexpected_percent"] is not None else ""
            examples = ", ".join(f"`{e}`" for e in r["examples"])
            lines.append(
                f"| {mark} | {r['severity']} | `{r['expectation']}` | `{r['column']}` | {count} | {pct} "
                f"| {r['mostly']:g} | {examples} |"
            )
        errors = [r for r in self.results if r["exception"]]
        for r in errors:
            lines += ["", f"- `{r['expectation']}` on `{r['column']}` raised: {r['exception']}"]
        if self.data_docs:
            lines += ["", f"Data Docs: {self.data_docs}"]
        return "\n".join(lines) + "\n"


def _describe(r: dict) -> str:
    where = f"{r['expectation']} on column '{r['column']}' [{r['check']}]"
    if r["exception"]:
        return f"{where}: raised {r['exception']}"
    text = f"{where}: {r['unexpected_count']} unexpected"
    if r["unexpected_percent"] is not None:
        text += f" ({r['unexpected_percent']:.3g}% of {r['considered_count']}, mostly={r['mostly']:g})"
    if r["examples"]:
        text += f", e.g. traj_id {', '.join(map(str, r['examples']))}"
    return text


def gate(report: ValidationReport) -> ValidationReport:
    """Raise :class:`ValidationFailed` if the stage has no rows or any critical expectation
    failed; else return the report.

    The message names every failed critical expectation, its column and unexpected count.
    Warning failures are logged, never raised.
    """
    if report.n_rows == 0:  # every expectation holds on nothing; the next stage would crash on it
        raise ValidationFailed(
            f"{report.stage} points: the stage has 0 rows, nothing to validate or train on "
            f"(empty sources, or every row quarantined: see the stage's quarantine table)",
            report,
        )
    for r in report.failed_warnings:
        log.warning("data quality warning (%s): %s", report.stage, _describe(r))
    failed = report.failed_critical
    if failed:
        lines = [f"{report.stage} points failed {len(failed)} critical expectation(s) ({report.n_rows} rows):"]
        lines += [f"  - {_describe(r)}" for r in failed]
        raise ValidationFailed("\n".join(lines), report)
    return report


def _build(stage: str, params: dict, context_root: Path | None, extra: list | None = None):
    """(context, validation definition, checkpoint or None) for ``stage`` (plus ``extra`` expectations)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if context_root is None:
        context = gx.get_context(mode="ephemeral")
    else:
        Path(context_root).mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(context_root))
    silence_progress_bars(context)

    # add_or_update replaces a stored datasource with a fresh one without assets; add them anew.
    source = context.data_sources.add_or_update_pandas(name="trajfm_points")
    asset = source.add_dataframe_asset(name=f"{stage}_points")
    batch_definition = asset.add_batch_definition_whole_dataframe(name="whole_frame")
    suite = suite_for(stage, params)
    for e in extra or []:  # a copy: an expectation belongs to one suite
        config = e.configuration.to_json_dict()
        config.pop("id", None)
        suite.add_expectation(ExpectationConfiguration(**config).to_domain_obj())
    suite = context.suites.add_or_update(suite)
    definition = gx.ValidationDefinition(name=f"trajfm_{stage}_points", data=batch_definition, suite=suite)
    definition = context.validation_definitions.add_or_update(definition)
    checkpoint = None
    if context_root is not None:
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"trajfm_{stage}_points",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
                result_format="SUMMARY",
            )
        )
    return context, definition, checkpoint


def _finish(entry: dict) -> dict:
    considered, unexpected = entry["considered_count"], entry["unexpected_count"]
    if entry["exception"]:
        success, percent, unexpected = False, None, None
    elif entry.get("gx_success") is not None:  # an aggregate: GX's verdict on the whole table
        success, percent, unexpected = entry["gx_success"], None, None
    elif considered == 0:
        success, percent = True, 0.0
    else:
        success = (considered - unexpected) / considered >= entry["mostly"]
        percent = 100.0 * unexpected / considered
    out = {
        "expectation": entry["expectation"],
        "column": entry["column"],
        "success": bool(success),
        "unexpected_count": unexpected,
        "unexpected_percent": percent,
        "critical": entry["severity"] == "critical",
        "check": entry["check"],
        "severity": entry["severity"],
        "mostly": entry["mostly"],
        "element_count": entry["element_count"],
        "considered_count": considered,
        "examples": entry["examples"],
        "exception": entry["exception"],
    }
    if entry.get("gx_success") is not None:
        out["observed_value"] = entry.get("observed_value")
    return out


def _columns_of(expectations: list | None) -> list[str]:
    """Columns the ``extra_expectations`` read (kept in the validated frame)."""
    out: list[str] = []
    for e in expectations or []:
        kw = e.configuration.kwargs
        out += [kw[k] for k in ("column", "column_A", "column_B") if kw.get(k)] + list(kw.get("column_list") or [])
    return out


def _frame_for(df: pd.DataFrame, stage: str, extra: list | None) -> pd.DataFrame:
    frame = derive_columns(df, extra=_columns_of(extra))
    return frame.drop(columns=["dt_s", "speed_mps", "traj_len"]) if stage == "raw" else frame


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def validate_points(
    df: pd.DataFrame,
    stage: str,
    params: dict | None = None,
    context_root: Path | str | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    n_workers: int | None = None,
    dask_address: str | None = None,
    extra_expectations: list | None = None,
) -> ValidationReport:
    """Validate canonical points against the ``stage`` suite ("raw" or "processed").

    ``params``: see :data:`trajfm.quality.suites.DEFAULT_PARAMS` (``v_max_mps`` in m/s,
    ``min_points``, ``mostly`` and ``severity`` per check); other keys are ignored.
    ``context_root``: None for an ephemeral GX context, else a directory for a file context
    with Data Docs. Does not raise on failed expectations; pass the report to :func:`gate`.

    A frame of over ``chunk_rows`` rows is validated in partitions of ``chunk_rows`` rows
    (``trajfm.quality.partitioned``) on the synchronous scheduler, or on Dask workers when
    ``n_workers`` (a LocalCluster) or ``dask_address`` is given; the merged report equals the
    whole-frame one. ``extra_expectations``: GX expectations added to the stage's suite.
    """
    _check_stage(stage)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    resolved = resolve_params(params)
    frame = _frame_for(df, stage, extra_expectations)
    context_root = Path(context_root) if context_root is not None else None
    n_trajectories = int(frame["traj_id"].nunique(dropna=True))

    if len(frame) <= chunk_rows and n_workers is None and dask_address is None:
        results, data_docs = _validate_whole(frame, stage, resolved, context_root, extra_expectations)
    else:
        sources = [FrameSlice(frame.iloc[s : s + chunk_rows]) for s in range(0, len(frame), chunk_rows)]
        entries, _, _ = validate_partitions(
            sources,
            stage,
            suite_configs(stage, resolved, extra_expectations),
            derived=True,
            scheduler="sync" if n_workers is None and dask_address is None else "distributed",
            dask_address=dask_address,
            n_workers=n_workers or 2,
        )
        results = [_finish(e) for e in entries]
        data_docs = _record(context_root, stage, resolved, extra_expectations, results, len(sources))
    return _report(stage, results, len(frame), n_trajectories, resolved, data_docs)


def validate_stage(
    path: str | Path,
    stage: str,
    params: dict | None = None,
    context_root: Path | str | None = None,
    *,
    partitioned: bool | None = None,
    partition_rows: int | None = None,
    n_workers: int = 2,
    dask_address: str | None = None,
    scheduler: str = "distributed",
    extra_expectations: list | None = None,
) -> ValidationReport:
    """Validate a stage's points table where it lies (a stage directory, a Parquet file or a
    folder of parts), per partition on Dask workers that read their own rows.

    ``partitioned``: None validates per partition when the table has over ``partition_rows``
    rows (default ``trajfm.quality.partitioned.PARTITION_ROWS``), else as one frame here.
    ``scheduler``: ``"distributed"`` (a LocalCluster of ``n_workers`` processes x 1 thread, or
    the cluster at ``dask_address``) or ``"sync"`` (in this process). Other arguments as
    :func:`validate_points`; Data Docs are written once, here, from the merged result.
    """
    import pyarrow.parquet as pq

    _check_stage(stage)
    files = stage_files(path)
    rows = sum(int(pq.ParquetFile(f).metadata.num_rows) for f in files)
    partition_rows = int(partition_rows or PARTITION_ROWS)
    if partitioned is None:
        partitioned = rows > partition_rows
    if not partitioned or rows == 0:
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return validate_points(df, stage, params, context_root, extra_expectations=extra_expectations)
    resolved = resolve_params(params)
    context_root = Path(context_root) if context_root is not None else None
    slices = plan_slices(files, partition_rows)
    entries, n_rows, n_trajectories = validate_partitions(
        slices,
        stage,
        suite_configs(stage, resolved, extra_expectations),
        derived=False,
        scheduler=scheduler,
        dask_address=dask_address,
        n_workers=n_workers,
    )
    results = [_finish(e) for e in entries]
    data_docs = _record(context_root, stage, resolved, extra_expectations, results, len(slices))
    return _report(stage, results, n_rows, n_trajectories, resolved, data_docs)


@contextmanager
def context_lock(context_root: Path | None):
    """Hold an exclusive lock on the file context at ``context_root`` (``<context_root>.lock``
    beside it) while one validation builds its suite and runs: GX's file stores are not safe for
    concurrent writers (two pipelines on one data root once read a validation definition whose
    suite the other was rewriting). Nothing to lock for an ephemeral context (None)."""
    if context_root is None:
        yield
        return
    from trajfm.store import file_lock

    with file_lock(Path(context_root).with_name(Path(context_root).name + ".lock")):
        yield


def _validate_whole(frame, stage, resolved, context_root, extra) -> tuple[list[dict], str | None]:
    """One GX run on the whole frame (the checkpoint writes Data Docs in a file context)."""
    with context_lock(context_root):
        context, definition, checkpoint = _build(stage, resolved, context_root, extra)
        if checkpoint is not None:
            suite_results = list(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values())
        else:
            suite_results = [definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")]
    acc: dict[tuple, dict] = {}
    for suite_result in suite_results:
        accumulate(acc, suite_result, frame)
    # Report in suite order (GX returns results in evaluation order).
    order = {result_key(e.configuration): i for i, e in enumerate(definition.suite.expectations)}
    results = [_finish(entry) for key, entry in sorted(acc.items(), key=lambda kv: order.get(kv[0], len(order)))]
    return results, _data_docs_index(context_root)


def _data_docs_index(context_root: Path | None) -> str | None:
    if context_root is None:
        return None
    index = context_root / DATA_DOCS_INDEX
    return str(index) if index.exists() else None


def _record(context_root, stage, resolved, extra, results: list[dict], n_partitions: int) -> str | None:
    """Store the merged result in the file context under ``context_root`` and rebuild Data Docs.

    GX builds the result object from a run on zero rows (so its metadata are GX's own); each
    expectation's outcome is then replaced by the merged one and stored under that run's key.
    """
    if context_root is None:
        return None
    with context_lock(context_root):
        return _record_locked(context_root, stage, resolved, extra, results, n_partitions)


def _record_locked(context_root, stage, resolved, extra, results: list[dict], n_partitions: int) -> str | None:
    """``_record`` under the context's lock."""
    import datetime as dt

    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context, definition, _ = _build(stage, resolved, context_root, extra)
    run_id = RunIdentifier(
        run_name=f"trajfm-{stage}-{n_partitions}-partitions", run_time=dt.datetime.now(dt.timezone.utc)
    )
    empty = _frame_for(to_canonical(empty_points()), stage, None)
    suite_result = definition.run(batch_parameters={"dataframe": empty}, result_format="SUMMARY", run_id=run_id)
    merged = {(r["expectation"], r["column"], r["check"]): r for r in results}
    for er in suite_result.results:
        r = merged[result_key(er.expectation_config)]
        er.success = r["success"]
        er.exception_info = {
            "raised_exception": bool(r["exception"]),
            "exception_message": r["exception"],
            "exception_traceback": None,
        }
        if r["unexpected_count"] is None:
            er.result = {"observed_value": r.get("observed_value")}
        else:
            er.result = {
                "element_count": r["element_count"],
                "missing_count": r["element_count"] - r["considered_count"],
                "unexpected_count": r["unexpected_count"],
                "unexpected_percent": r["unexpected_percent"],
                "partial_unexpected_list": [],
            }
    n_ok = sum(1 for r in results if r["success"])
    suite_result.success = n_ok == len(results)
    suite_result.statistics.update(
        evaluated_expectations=len(results),
        successful_expectations=n_ok,
        unsuccessful_expectations=len(results) - n_ok,
        success_percent=100.0 * n_ok / len(results) if results else None,
    )
    suite_result.meta["trajfm_partitions"] = n_partitions
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=definition.suite.name),
        run_id=run_id,
        batch_identifier=suite_result.batch_id,
    )
    context.validation_results_store.store_validation_results(suite_result, key)
    context.build_data_docs()
    return _data_docs_index(context_root)


def _report(stage, results, n_rows, n_trajectories, resolved, data_docs) -> ValidationReport:
    return ValidationReport(
        stage=stage,
        success=int(n_rows) > 0 and all(r["success"] for r in results if r["critical"]),  # 0 rows: see gate()
        n_rows=int(n_rows),
        results=results,
        n_trajectories=int(n_trajectories),
        params=resolved,
        data_docs=data_docs,
    )
