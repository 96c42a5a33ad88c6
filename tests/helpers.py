"""Helpers shared by several test files (fixtures shared by all live in ``conftest.py``).

- ``seeded_model``: the tiny ``TrajGPT`` the model and evaluation tests build, seeded, with the
  normalization statistics of the windows it will see.
- ``zero_head``: zero a model's point head, so it predicts its anchor exactly.
- ``small_slice_points`` / ``small_slice_windows``: the embedded 9,091-point NY Harbor AIS day
  (``SMALL_SLICE``), read, and cleaned and cut into windows as the pipeline does.
- ``free_port``: a free TCP port on 127.0.0.1 for a server a test starts.
"""

from __future__ import annotations

import socket

import pandas as pd
import torch

from synthetic_tracks import stats_of


def seeded_model(ws, seed: int = 0, **config):
    """``TrajGPT(GPTConfig.from_dict(config))`` after ``torch.manual_seed(seed)``, normalized by ``ws``'s
    statistics; in train mode (call ``.eval()`` for inference)."""
    from trajfm.model import GPTConfig, TrajGPT

    torch.manual_seed(seed)
    m = TrajGPT(GPTConfig.from_dict(config))
    st = stats_of(ws)
    m.set_normalization(st["mean"], st["std"])
    return m


def zero_head(model):
    """Zero the point head's weight and bias in place: every prediction becomes the anchor."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def small_slice_points() -> pd.DataFrame:
    """Canonical points of the embedded NY Harbor day (``SMALL_SLICE``), as read (not cleaned)."""
    from trajfm.data.catalog import SMALL_SLICE, embedded_files
    from trajfm.data.readers import read_file

    return read_file(embedded_files(SMALL_SLICE)[0]).points


def cleaned_windows(points: pd.DataFrame, window: int = 32, stride: int = 16) -> dict:
    """``points`` cleaned with the per-kind defaults (``clean_partition``) and cut into windows of
    ``window`` points every ``stride``: the ``train``/``val``/``test`` window sets."""
    from trajfm.data.clean import clean_partition
    from trajfm.features.windows import WindowParams, build_windows

    out, _, _ = clean_partition(points)
    sets, _ = build_windows(out, WindowParams(window=window, stride=stride))
    return sets


def small_slice_windows(window: int = 32, stride: int = 16) -> dict:
    """The NY Harbor day cleaned and cut into windows as the pipeline does (60 s fixes)."""
    return cleaned_windows(small_slice_points(), window=window, stride=stride)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loss_curve(history: list[dict]) -> list[tuple]:
    """(epoch, step, train loss, validation loss) of every epoch: what a resumed run must repeat."""
    return [(h["epoch"], h["step"], h["train_loss"], h["val_loss"]) for h in history]


def kill_after_line(proc, marker: str, sig: int, result: dict) -> None:
    """Wait for ``marker`` on the worker's stdout (e.g. its step-N checkpoint), send ``sig``, and
    collect what it says into ``result`` (``returncode, stdout, stderr``, or ``error``)."""
    try:
        for line in proc.stdout:
            if line.strip() == marker:
                proc.send_signal(sig)
                break
        rest, err = proc.communicate(timeout=90)
        result.update(returncode=proc.returncode, stdout=rest, stderr=err)
    except Exception as exc:  # reported by the test
        result.update(error=repr(exc))
    finally:
        if proc.poll() is None:
            proc.kill()


def bench_result(quality: dict, budget: str = "quick", **fields) -> dict:
    """A model benchmark results document around one dataset's ``quality`` section (AIS), for
    ``markdown``/merge tests: a made-up machine, created ``t0``; ``fields`` adds e.g. ``runs``."""
    return {
        "budget": {"name": budget},
        "created": "t0",
        "elapsed_s": 9,
        "quality": {"ais": quality},
        "machine": {"cpu_count": 2, "processor": "x", "torch": "2", "torch_threads": 1, "load_average_before": [1.0]},
        **fields,
    }
