"""Progress bars only on a terminal (never under CI=true), and each training epoch once in the
task log (the training child's own epoch log line is not relayed next to the epoch record)."""

from __future__ import annotations

import io
import re

import pytest

from trajfm.progress import progress_bar, progress_enabled, track


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_on_a_terminal_only_and_never_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TRAJFM_PROGRESS", raising=False)
    assert progress_enabled(_Tty()) and not progress_enabled(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(_Tty())
    monkeypatch.setenv("TRAJFM_PROGRESS", "1")  # forced on (e.g. a terminal multiplexer that is no tty)
    assert progress_enabled(io.StringIO())
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TRAJFM_PROGRESS", "0")
    assert not progress_enabled(_Tty())


def test_a_bar_is_silent_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("TRAJFM_PROGRESS", raising=False)
    assert list(track(range(5), desc="ingest", unit="file")) == [0, 1, 2, 3, 4]
    with progress_bar(3, "train", unit="step") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TRAJFM_PROGRESS", "1")
    list(track(range(5), desc="ingest", unit="file"))
    assert "ingest" in capsys.readouterr().err


class _Logger:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg, *args):
        self.lines.append(msg % args if args else msg)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    pytest.importorskip("tracktable_data")
    from trajfm.data.catalog import embedded_files
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess
    from trajfm.features.windows import make_features

    root = tmp_path_factory.mktemp("root")
    pre = preprocess(ingest(embedded_files("small"), root=root), root=root, scheduler="sync")
    return root, make_features(pre, root=root)


def test_each_training_epoch_is_logged_once(features_dir, monkeypatch, capsys):
    from test_evaluate_cli import TINY

    import tasks.train as train_task_module

    root, feats = features_dir
    monkeypatch.setattr(train_task_module, "update_progress_artifact", lambda *a, **k: None)
    monkeypatch.setenv("TRAJFM_PROGRESS", "1")  # the step bar on, as on a terminal: it must stay out of the log
    cmd = train_task_module.training_command(
        str(feats),
        str(root),
        "tutorial",
        TINY,
        {"epochs": 2, "batch_size": 512, "warmup_steps": 2, "device": "cpu", "seed": 0, "log_every": 0},
        1,
    )
    logger = _Logger()
    out = train_task_module.supervise(cmd, progress=None, logger=logger)
    assert (out / "model.pt").is_file()
    for epoch in (1, 2):
        lines = [line for line in logger.lines if re.search(rf"\bepoch {epoch}\b", line)]
        assert len(lines) == 1, logger.lines
    assert any("train_loss" in line for line in logger.lines)  # the one kept carries the losses
    assert "train" in capsys.readouterr().err and not any("step/s" in line or "it/s" in line for line in logger.lines)


def test_ingest_and_dask_preprocessing_draw_bars_when_on(features_dir, monkeypatch, capsys):
    from distributed import Client, LocalCluster

    from trajfm.data.catalog import embedded_files
    from trajfm.data.dask_runner import Runner
    from trajfm.data.ingest import ingest
    from trajfm.store import read_manifest

    root, _ = features_dir
    monkeypatch.setenv("TRAJFM_PROGRESS", "1")
    out = ingest(embedded_files("small"), root=root / "bars")
    assert read_manifest(out)["rows_read"] == 9091 and "ingest" in capsys.readouterr().err
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        runner = Runner("distributed", client=client)
        assert runner.gather(runner.map(lambda x: 2 * x, [1, 2, 3])) == [2, 4, 6]  # results in order
    assert "preprocess" in capsys.readouterr().err
