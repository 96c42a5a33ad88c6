"""The report's error-vs-horizon plot and its metrics table come from one source of truth
(issue 20.8): the same windows (count) and the same step-h value as the table's ``fde_m@h``,
on the real NY Harbor AIS slice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluate_cli import train_tiny


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from trajfm.evaluate.suite import evaluate_model

    root = tmp_path_factory.mktemp("one_source_root")
    out = tmp_path_factory.mktemp("one_source") / "results.json"
    model = train_tiny(root, steps=6)
    result = evaluate_model(model, "embedded:small", tasks="forecast", root=root, out=out)  # default horizons 1, 5, 10
    return root, model, out, result


def test_plot_curve_is_the_tables_fde_on_the_same_windows(evaluated):
    _, _, out, result = evaluated
    m = result["metrics"]
    with np.load(out.with_name("results.plots.npz")) as z:
        assert int(z["n_windows"]) == int(m["forecast.n_windows"])
        assert int(z["horizon"]) == 10
        for h in (1, 5, 10):
            assert z["err_model_m"][h - 1] == pytest.approx(m[f"forecast.fde_m@{h}.model"], rel=1e-9)
            assert z["err_constant_velocity_m"][h - 1] == pytest.approx(
                m[f"forecast.fde_m@{h}.constant_velocity"], rel=1e-9
            )
        assert z["err_model_m"].mean() == pytest.approx(m["forecast.ade_m@10.model"], rel=1e-9)
    assert json.loads(out.read_text())["plot_data"] == "results.plots.npz"


def test_the_curve_uses_every_window_when_the_drawn_subset_is_smaller(evaluated):
    from trajfm.evaluate.forecast import forecast_task
    from trajfm.evaluate.report import collect_plot_data
    from trajfm.features.windows import load_features
    from trajfm.model import load_model

    _, model_dir, _, result = evaluated
    model = load_model(model_dir / "model.pt", map_location="cpu")
    sets, _ = load_features(result["stages"]["features"])
    ws = sets["test"]
    table = forecast_task(model, ws, context_len=20, horizons=(1, 5, 10))
    n = int(table["forecast.n_windows"])
    assert n > 40
    d = collect_plot_data(model, ws, context_len=20, horizon=10, max_windows=40)
    assert int(d["n_subset_windows"]) == 40 and int(d["n_windows"]) == n
    assert d["err_model_m"][-1] == pytest.approx(table["forecast.fde_m@10.model"], rel=1e-9)
    assert len(d["ex_true_lon"]) == 6  # examples still come from the drawn subset
