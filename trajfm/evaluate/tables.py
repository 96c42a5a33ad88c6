"""The suite's metrics as tables: one per task, metric rows x predictor columns.

Flat metric keys are ``<task>.<metric>.<predictor>`` (``forecast.ade_m@10.model``; the metric
names of ``trajfm.evaluate.metrics``); a key of two parts (``forecast.n_windows``) is a count or
setting, listed apart. A value may be a number, None (not measured) or ``{"mean", "std"}`` over
seeds (``trajfm.evaluate.transfer.summarize``).
"""

from __future__ import annotations


def metrics_rows(metrics: dict) -> tuple[list[str], list[str], dict]:
    """(metric rows ``task.metric``, predictor columns, {(row, column): value}) of flat metrics."""
    cells: dict = {}
    rows: list[str] = []
    cols: list[str] = []
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) < 3:  # a count or setting (forecast.n_windows): no predictor
            continue
        row, predictor = ".".join(parts[:-1]), parts[-1]
        if row not in rows:
            rows.append(row)
        if predictor not in cols:
            cols.append(predictor)
        cells[(row, predictor)] = value
    # the model (or models) first, baselines after, in first-seen order
    cols.sort(key=lambda c: 0 if c == "model" or "@" in c else 1)
    return rows, cols, cells


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):  # mean/std over seeds
        if value.get("mean") is None:
            return "-"
        return f"{format_value(value['mean'])} ± {format_value(value.get('std') or 0.0)}"
    v = float(value)
    if v != v:
        return "nan"
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    a = abs(v)
    return f"{v:,.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3f}" if a >= 0.01 else f"{v:.2e}"


def task_blocks(metrics: dict):
    """Per task: (rows, predictor columns that have a value for that task, cells)."""
    rows, cols, cells = metrics_rows(metrics)
    tasks: list[str] = []
    for r in rows:
        if r.split(".")[0] not in tasks:
            tasks.append(r.split(".")[0])
    for task in tasks:
        task_rows = [r for r in rows if r.split(".")[0] == task]
        task_cols = [c for c in cols if any((r, c) in cells for r in task_rows)]
        yield task_rows, task_cols, cells


def metrics_table_text(metrics: dict) -> str:
    """Fixed-width tables, one per task: metric rows x predictor columns (model(s) first)."""
    blocks = []
    for rows, cols, cells in task_blocks(metrics):
        width0 = max([len("metric")] + [len(r) for r in rows])
        texts = {(r, c): format_value(cells.get((r, c))) for r in rows for c in cols}
        widths = [max([len(c)] + [len(texts[(r, c)]) for r in rows]) for c in cols]
        head = f"{'metric':<{width0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths))
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r:<{width0}}  " + "  ".join(f"{texts[(r, c)]:>{w}}" for c, w in zip(cols, widths)))
        blocks.append("\n".join(lines))
    counts = counts_of(metrics)
    if counts:
        blocks.append("counts: " + ", ".join(f"{k} {format_value(v)}" for k, v in counts.items()))
    return "\n\n".join(blocks)


def counts_of(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if len(k.split(".")) < 3}


def metrics_table_markdown(metrics: dict) -> str:
    """Markdown tables, one per task: metric rows x predictor columns."""
    blocks = []
    for rows, cols, cells in task_blocks(metrics):
        lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for r in rows:
            lines.append(f"| {r} | " + " | ".join(format_value(cells.get((r, c))) for c in cols) + " |")
        blocks.append("\n".join(lines))
    counts = counts_of(metrics)
    if counts:
        blocks.append("Counts: " + ", ".join(f"`{k}` {format_value(v)}" for k, v in counts.items()))
    return "\n\n".join(blocks)
