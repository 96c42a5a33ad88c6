"""Great Expectations results, summed over chunks or partitions: one entry per (expectation
type, column, check), shared by the whole-frame gate (``gate.py``) and the partitioned one
(``partitioned.py``)."""

from __future__ import annotations

import pandas as pd

from trajfm.quality.suites import jsonable

MAX_EXAMPLES = 5  # traj_id examples kept per failed expectation


def silence_progress_bars(context) -> None:
    """Turn off Great Expectations' progress bars on ``context`` (they flood logs)."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)


def result_key(config) -> tuple:
    return (config.type, config.kwargs.get("column"), (config.meta or {}).get("check"))


def exception_message(result) -> str | None:
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return info.get("exception_message") or "exception"
    # When several metrics fail, GX nests one info dict per metric.
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "exception"
    return None


def mostly(config) -> float:
    mostly = config.kwargs.get("mostly")
    return 1.0 if mostly is None else float(mostly)


def accumulate(acc: dict, suite_result, frame: pd.DataFrame) -> None:
    """Add one chunk's GX results to ``acc`` (keyed by expectation type, column, check)."""
    for er in suite_result.results:
        config = er.expectation_config
        key = result_key(config)
        meta = config.meta or {}
        entry = acc.setdefault(
            key,
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "check": meta.get("check"),
                "severity": meta.get("severity", "critical"),
                "mostly": mostly(config),
                "element_count": 0,
                "considered_count": 0,
                "unexpected_count": 0,
                "examples": [],
                "exception": None,
            },
        )
        message = exception_message(er)
        if message is not None:
            entry["exception"] = entry["exception"] or message
            continue
        res = er.result or {}
        if "unexpected_count" not in res:  # not a map expectation (row count, min, uniqueness...)
            entry["gx_success"] = bool(er.success) and entry.get("gx_success", True)
            entry["observed_value"] = jsonable(res.get("observed_value"))
        elements = int(res.get("element_count") or 0)
        missing = int(res.get("missing_count") or 0)  # absent for not-null checks: all rows count
        entry["element_count"] += elements
        entry["considered_count"] += elements - missing
        entry["unexpected_count"] += int(res.get("unexpected_count") or 0)
        if not er.success and len(entry["examples"]) < MAX_EXAMPLES:
            # GX reports index labels; the frame's labels are row positions of the whole frame.
            for index in res.get("partial_unexpected_index_list") or []:
                example = frame["traj_id"].get(index)
                if example is None or pd.isna(example):
                    continue
                if str(example) not in entry["examples"]:
                    entry["examples"].append(str(example))
                if len(entry["examples"]) >= MAX_EXAMPLES:
                    break
