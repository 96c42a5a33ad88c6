"""Transfer protocols: train on some sources, evaluate on held-out ones, zero-shot and fine-tuned.

A protocol file (YAML, ``protocols/*.yaml``) declares::

    name: ais_to_geolife
    description: what is held out and why
    train:                       # sources the model is trained on
      - data: embedded:traj      # files / directories / globs / URLs, or embedded:SUBSET; a list is fine
        format: tracktable       # optional: force a reader (default: detected per file)
        kind: vessel             # optional: mover kind (default: the format's)
        options: {}              # optional reader options: columns, timezone, time_format, delimiter
        exclude_bbox: [lon_min, lat_min, lon_max, lat_max]   # optional: drop trajectories touching it
        bbox: [...]              # optional: keep only trajectories entirely inside
        time_range: [start, end] # optional: keep trajectories starting in [start, end)
        clean: {interval_s: 120} # optional: cleaning overrides on the kind's defaults
                                 # (trajfm.data.clean.PreprocessParams fields; e.g. another sampling rate)
    heldout:                     # sources never seen in training (same keys)
      - data: ../../shared/data/geolife
        format: geolife
    train_split: [0.8, 0.15]     # optional: train / validation fractions of the train sources' time span
    fine_tune: {frac: 0.3, val_frac: 0.1}   # held-out time span: earliest 30% fine-tunes, next 10%
                                 # picks the best fine-tune step, the rest is evaluated
    window: 32                   # optional: points per window
    tasks: [forecast, recovery]  # optional: default all; params: {task: {...}} optional too
    model: models:/trajfm-base@champion   # optional: a pre-trained base model, scored as well
                                 # (``--base-model`` overrides it; a path is relative to the file)

Relative paths are relative to the protocol file. ``run_protocol`` reuses the pipeline's
library stages (ingest -> preprocess -> select -> features -> ``trajfm.train.run_training``),
all cached under the data root. For each seed it trains ``preset`` and the ``tutorial`` preset on
the train sources, evaluates both on the held-out evaluation windows (zero-shot), fine-tunes each
for ``fine_tune_steps`` steps on the held-out fine-tune split (``init_checkpoint``) and evaluates
again; the baselines (which learn only from the fine-tune split) run on the same windows. Keys are
``<task>.<metric>.<predictor>`` with predictors ``<preset>@zero-shot``, ``<preset>@fine-tuned``,
``<preset>+blend@zero-shot`` (forecast only: the zero-shot model with its never-worse-than-
constant-velocity blend fitted on the TRAIN sources' validation split, ``trajfm.evaluate.calibrate``)
and the baselines' names (``kalman`` among them: fitted on the fine-tune split, as the others).
``<preset>@in-domain`` (``in_domain=True``) is the same preset trained from scratch on the
held-out fine-tune split only, for the same budget: what the held-out data alone teaches.

A base model (the protocol's ``model:`` key, or ``base_model=``: ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``runs:/ID/model``, a ``model.pt`` or a train stage directory) adds
``base@zero-shot`` (its forecasts as registered: a calibrated model blends with constant velocity
as it does when served) and ``base@fine-tuned`` (``fine_tune_steps`` on the fine-tune split from
its weights). The base model must not have seen the held-out sources (a leave-out protocol needs
a base pre-trained without them: docs/corpus.md "Protocols"); ``train_sources=False`` then skips
training ``preset`` on the train sources (hours on a corpus), keeping the base model, the
in-domain model and the baselines. ``bars`` checks the zero-shot bars of issue 15 per model
(``zero_shot_bars``). ``summary`` holds mean ± std (population std) over seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trajfm.store import data_root

PROTOCOL_KEYS = {
    "name",
    "description",
    "train",
    "heldout",
    "train_split",
    "fine_tune",
    "window",
    "tasks",
    "params",
    "model",
}
SOURCE_KEYS = {"data", "format", "kind", "options", "bbox", "exclude_bbox", "time_range", "clean"}
RESULTS_FORMAT = "trajfm.transfer"


@dataclass
class SourceSpec:
    data: list[str]
    format: str | None = None
    kind: str | None = None
    options: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    clean: dict = field(default_factory=dict)  # PreprocessParams overrides (every kind's defaults)


@dataclass
class Protocol:
    name: str
    description: str
    train: list[SourceSpec]
    heldout: list[SourceSpec]
    train_split: tuple[float, float] = (0.8, 0.15)
    fine_tune_frac: float = 0.3
    fine_tune_val_frac: float = 0.1
    window: int = 32
    tasks: list[str] | None = None
    params: dict = field(default_factory=dict)
    path: str = ""
    model: str | None = None  # a base model URI or path (resolved against the file)


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file and the key."""

    def __init__(self, path, message: str):
        super().__init__(f"protocol {path}: {message}")


def _resolve(item: str, base: Path) -> str:
    text = os.path.expandvars(os.path.expanduser(str(item)))
    if text.startswith("embedded:") or "://" in text or os.path.isabs(text):
        return text
    return str((base / text).resolve())


def _source(raw, where: str, base: Path, path) -> SourceSpec:
    from trajfm.data.clean import FIELD_NAMES as CLEAN_FIELDS
    from trajfm.data.clean import normalize_params
    from trajfm.data.readers import READERS
    from trajfm.evaluate.suite import check_selection, ingest_params

    if not isinstance(raw, dict):
        raise ProtocolError(path, f"{where} must be a mapping with a 'data' key, got {raw!r}")
    unknown = set(raw) - SOURCE_KEYS
    if unknown:
        raise ProtocolError(path, f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(SOURCE_KEYS)}")
    data = raw.get("data")
    if not data or not (isinstance(data, str) or (isinstance(data, list) and all(isinstance(d, str) for d in data))):
        raise ProtocolError(path, f"{where}.data must be a path or a list of paths, got {data!r}")
    fmt = raw.get("format")
    if fmt is not None and fmt not in READERS:
        raise ProtocolError(path, f"{where}.format {fmt!r} is not a reader; known: {sorted(READERS)}")
    options = raw.get("options") or {}
    clean = raw.get("clean") or {}
    try:
        ingest_params(fmt, raw.get("kind"), options)
        if not isinstance(clean, dict) or not set(clean) <= CLEAN_FIELDS:
            raise ValueError(
                f"clean must map cleaning parameters to values, got {clean!r}; known: {sorted(CLEAN_FIELDS)}"
            )
        normalize_params(clean)  # the values make a valid PreprocessParams for every kind
        selection = check_selection(
            {k: raw[k] for k in ("bbox", "exclude_bbox", "time_range") if raw.get(k) is not None}
        )
    except (ValueError, TypeError) as exc:
        raise ProtocolError(path, f"{where}: {exc}") from None
    items = [data] if isinstance(data, str) else data
    return SourceSpec([_resolve(d, base) for d in items], fmt, raw.get("kind"), dict(options), selection, dict(clean))


def _fraction(value, where: str, path) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ProtocolError(path, f"{where} must be a number, got {value!r}") from None
    if not 0 <= f < 1:
        raise ProtocolError(path, f"{where} must be in [0, 1), got {f}")
    return f


def load_protocol(path: str | os.PathLike) -> Protocol:
    """Parse and check a protocol file; every problem is a ``ProtocolError`` naming file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"protocol file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProtocolError(path, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(path, "must be a mapping with train and heldout sources")
    unknown = set(raw) - PROTOCOL_KEYS
    if unknown:
        raise ProtocolError(path, f"unknown key(s) {sorted(unknown)}; known: {sorted(PROTOCOL_KEYS)}")
    for key in ("train", "heldout"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise ProtocolError(path, f"'{key}' must be a non-empty list of sources")
    base = path.resolve().parent
    train = [_source(s, f"train[{i}]", base, path) for i, s in enumerate(raw["train"])]
    heldout = [_source(s, f"heldout[{i}]", base, path) for i, s in enumerate(raw["heldout"])]
    split = raw.get("train_split", [0.8, 0.15])
    if not isinstance(split, list) or len(split) != 2:
        raise ProtocolError(path, f"train_split must be [train_frac, val_frac], got {split!r}")
    tf, vf = _fraction(split[0], "train_split[0]", path), _fraction(split[1], "train_split[1]", path)
    if not (tf > 0 and tf + vf < 1):
        raise ProtocolError(path, f"train_split needs train_frac > 0 and train_frac + val_frac < 1, got {split}")
    ft = raw.get("fine_tune") or {}
    if not isinstance(ft, dict) or set(ft) - {"frac", "val_frac"}:
        raise ProtocolError(path, f"fine_tune must be a mapping with frac and val_frac, got {ft!r}")
    ff, fv = (
        _fraction(ft.get("frac", 0.3), "fine_tune.frac", path),
        _fraction(ft.get("val_frac", 0.1), "fine_tune.val_frac", path),
    )
    if not (ff > 0 and ff + fv < 1):
        raise ProtocolError(path, f"fine_tune needs frac > 0 and frac + val_frac < 1 (the rest is evaluated), got {ft}")
    window = raw.get("window", 32)
    if not isinstance(window, int) or window < 2:
        raise ProtocolError(path, f"window must be an integer >= 2, got {window!r}")
    tasks = raw.get("tasks")
    if tasks is not None:
        from trajfm.evaluate.suite import check_tasks

        try:
            tasks = check_tasks(tasks)
        except ValueError as exc:
            raise ProtocolError(path, f"tasks: {exc}") from None
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ProtocolError(path, f"params must map task names to parameter mappings, got {params!r}")
    model = raw.get("model")
    if model is not None and not (isinstance(model, str) and model.strip()):
        raise ProtocolError(path, f"model must be a model URI or path, got {model!r}")
    return Protocol(
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        train=train,
        heldout=heldout,
        train_split=(tf, vf),
        fine_tune_frac=ff,
        fine_tune_val_frac=fv,
        window=window,
        tasks=tasks,
        params=params,
        path=str(path),
        model=None if model is None else (model if model.startswith(("models:/", "runs:/")) else _resolve(model, base)),
    )


def source_features(
    sources: list[SourceSpec], root: Path, window: int, train_frac: float, val_frac: float
) -> tuple[Path, dict]:
    """ingest + preprocess each source, select, window: (features dir, accounting per source)."""
    from trajfm.evaluate.suite import accounting, ingest_and_clean, select_stage, window_sets
    from trajfm.store import read_manifest

    parts, per_source = [], []
    for s in sources:
        ing, pre = ingest_and_clean(
            s.data, format=s.format, kind=s.kind, options=s.options, root=root, preprocess_params=s.clean or None
        )
        parts.append((pre, s.selection))
        per_source.append({"data": s.data, **accounting(ing, pre)})
    sel = select_stage(parts, root)
    feat = window_sets(sel, root, window=window, train_frac=train_frac, val_frac=val_frac)
    m = read_manifest(sel)
    return feat, {
        "sources": per_source,
        "select": {k: m[k] for k in ("rows_in", "rows_kept", "rows_filtered", "n_trajectories")},
        "windows": read_manifest(feat)["windows"],
    }


def _renamed(metrics: dict, predictor: str) -> dict:
    """The model's keys (``<task>.<metric>.model``) under another predictor name."""
    return {k[: -len(".model")] + f".{predictor}": v for k, v in metrics.items() if k.endswith(".model")}


def _baselines(metrics: dict) -> dict:
    """Baseline metrics and counts (everything but the model's keys)."""
    return {k: v for k, v in metrics.items() if not k.endswith(".model")}


def summarize(runs: dict) -> dict:
    """Mean and std (population, ddof 0, as ``trajfm.evaluate.tasks.mean_std``) over seeds of
    every key all runs have: ``{key: {"mean", "std", "n"}}``."""
    from trajfm.evaluate.tasks import mean_std

    mean, std = mean_std(list(runs.values()))
    # identical values (a baseline without randomness) have std 0, not float rounding noise
    same = {k for k in mean if len({m[k] for m in runs.values()}) == 1}
    return {k: {"mean": mean[k], "std": 0.0 if k in same else std[k], "n": len(runs)} for k in mean}


def summary_text(summary: dict) -> str:
    from trajfm.evaluate.tables import metrics_table_text

    return metrics_table_text(summary)


def summary_markdown(summary: dict) -> str:
    from trajfm.evaluate.tables import metrics_table_markdown

    return metrics_table_markdown(summary)


def _train_overrides(
    n_windows: int, epochs: int, max_steps: int | None, batch_size: int, seed: int, device: str
) -> dict:
    """TrainConfig overrides; warmup is a tenth of the planned steps (at most 100), so a short
    budget still reaches its peak learning rate."""
    from trajfm.train import TrainConfig, planned_steps

    planned = planned_steps(n_windows, TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size))
    return {
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
        "warmup_steps": max(1, min(100, planned // 10)),
        "progress": False,
    }


def _check_budget(fine_tune_steps: int, epochs: int, seeds, fine_tune_lr: float | None) -> None:
    if fine_tune_steps < 0 or epochs < 1 or not seeds:
        raise ValueError(
            f"need fine_tune_steps >= 0, epochs >= 1 and at least one seed, got {fine_tune_steps}, {epochs}, {seeds}"
        )
    if fine_tune_lr is not None and not fine_tune_lr > 0:
        raise ValueError(f"fine_tune_lr must be > 0 (or None for the training learning rate), got {fine_tune_lr}")


BASE = "base"  # the predictor name of a protocol's pre-trained base model
BASE_MODELS = "base_models"  # data-root folder of the base models' checkpoints, by content


def base_checkpoint(uri: str, root: Path) -> tuple[Path, dict]:
    """A local copy of a base model's checkpoint, ``<root>/base_models/<sha256[:16]>/model.pt``
    (by content: a moved alias gives another folder, and fine-tuning's stage key follows the
    weights), and what was resolved (uri, registered version, sha256)."""
    import shutil
    import tempfile

    from trajfm.mlflow_store import download_registered_checkpoint, registered_version
    from trajfm.store import file_sha256

    info: dict = {"uri": str(uri)}
    tmp = None
    try:
        if str(uri).startswith(("models:/", "runs:/")):
            tmp = Path(tempfile.mkdtemp(prefix="trajfm-base-"))
            src = download_registered_checkpoint(str(uri), root, tmp)
            if str(uri).startswith("models:/"):
                info.update(registered_version(str(uri), root))
        else:
            src = Path(uri).expanduser()
            src = src / "model.pt" if src.is_dir() else src
            if not src.is_file():
                raise FileNotFoundError(
                    f"base model {uri!r}: no such checkpoint (a model.pt or a train stage directory)"
                )
        sha = file_sha256(src)
        dest = root / BASE_MODELS / sha[:16] / "model.pt"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest.with_suffix(".tmp"))
            dest.with_suffix(".tmp").replace(dest)
        return dest, {**info, "checkpoint_sha256": sha}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def zero_shot_bars(summary: dict, predictor: str, horizon: int = 10) -> dict | None:
    """Issue 15's zero-shot bars for ``predictor`` on one protocol (means over seeds): its ADE@h
    improvement over constant velocity (bar: >= 25%) and the steps ``horizons`` where its mean
    FDE is worse than constant velocity's (bar: none); None without forecast keys."""

    def mean(metric: str, who: str):
        v = summary.get(f"forecast.{metric}.{who}")
        return None if v is None else v["mean"]

    model, cv = mean(f"ade_m@{horizon}", predictor), mean(f"ade_m@{horizon}", "constant_velocity")
    if model is None or cv is None:
        return None
    steps = sorted(
        int(k.split(".")[1].split("@")[1])
        for k in summary
        if k.startswith("forecast.fde_m@") and k.endswith(f".{predictor}") and k.split("@")[1].split(".")[0].isdigit()
    )
    worse = [h for h in steps if mean(f"fde_m@{h}", predictor) > mean(f"fde_m@{h}", "constant_velocity")]
    gain = 1.0 - model / cv
    return {
        f"ade_m@{horizon}_vs_constant_velocity": gain,
        "worse_than_constant_velocity_at_steps": worse,
        "meets_bars": bool(gain >= 0.25 and not worse),
    }


@dataclass
class _PresetRun:
    """One preset and seed of a protocol: trained on the train sources, scored zero-shot, with
    its never-worse blend (forecast) and fine-tuned on the held-out fine-tune split; the same
    preset trained on the held-out fine-tune split alone; a base model zero-shot and fine-tuned."""

    name: str
    seed: int
    root: Path
    train_feat: Path | None
    held_feat: Path
    n_train: int
    fit_ws: object
    eval_ws: object
    tasks: list[str] | None
    params: dict

    def score(self, model_dir: Path, predictor: str, tasks=None) -> dict:
        """The suite's model metrics of ``model_dir/model.pt`` (or a checkpoint file) as ``predictor``."""
        from trajfm.evaluate.suite import run_suite
        from trajfm.model.checkpoint import load_model

        model = load_model(model_dir / "model.pt" if model_dir.is_dir() else model_dir)
        return _renamed(
            run_suite(model, self.eval_ws, self.fit_ws, tasks or self.tasks, seed=self.seed, params=self.params),
            predictor,
        )

    def fine_tune(self, start: Path, label: str, steps: int, lr: float | None, batch_size: int, device: str) -> Path:
        """``steps`` steps on the held-out fine-tune split from the checkpoint ``start``."""
        from trajfm.train import run_training

        ft = _train_overrides(len(self.fit_ws), steps, steps, batch_size, self.seed, device)
        if lr is not None:
            ft["lr"] = lr
        return Path(
            run_training(self.held_feat, self.root, label, train_overrides={**ft, "init_checkpoint": str(start)})
        )

    def evaluate(self, metrics, epochs, max_steps, batch_size, device, fine_tune_steps, fine_tune_lr) -> dict:
        """Train, score zero-shot, with the blend and fine-tuned (in that order) into ``metrics``;
        returns the model directories."""
        from trajfm.evaluate.calibrate import calibrate_stage
        from trajfm.train import run_training

        name, seed, root = self.name, self.seed, self.root
        overrides = _train_overrides(self.n_train, epochs, max_steps, batch_size, seed, device)
        base = Path(run_training(self.train_feat, root, name, train_overrides=overrides))
        metrics.update(self.score(base, f"{name}@zero-shot"))
        dirs = {"zero-shot": str(base)}
        if "forecast" in (self.tasks or ["forecast"]):
            # the never-worse rule, chosen on the TRAIN sources' validation split: still zero-shot
            shape = self.params.get("forecast") or {}
            calibrated = calibrate_stage(
                self.train_feat,
                base,
                root=root,
                context_len=int(shape.get("context_len", 20)),
                horizon=max(int(h) for h in shape.get("horizons", (1, 5, 10))),
            )
            metrics.update(self.score(calibrated, f"{name}+blend@zero-shot", ["forecast"]))
            dirs["zero-shot+blend"] = str(calibrated)
        if fine_tune_steps > 0:
            tuned = self.fine_tune(base / "model.pt", name, fine_tune_steps, fine_tune_lr, batch_size, device)
            metrics.update(self.score(tuned, f"{name}@fine-tuned"))
            dirs["fine-tuned"] = str(tuned)
        return dirs

    def in_domain(self, metrics, epochs, max_steps, batch_size, device) -> str:
        """The preset trained from scratch on the held-out fine-tune split only (its val split
        picks the best epoch), scored as ``<preset>@in-domain``."""
        from trajfm.train import run_training

        overrides = _train_overrides(len(self.fit_ws), epochs, max_steps, batch_size, self.seed, device)
        trained = Path(run_training(self.held_feat, self.root, self.name, train_overrides=overrides))
        metrics.update(self.score(trained, f"{self.name}@in-domain"))
        return str(trained)

    def base_model(self, metrics, checkpoint: Path, fine_tune_steps, fine_tune_lr, batch_size, device) -> dict:
        """The base model zero-shot and fine-tuned, scored as ``base@zero-shot`` / ``base@fine-tuned``."""
        metrics.update(self.score(checkpoint, f"{BASE}@zero-shot"))
        dirs = {"zero-shot": str(checkpoint)}
        if fine_tune_steps > 0:
            tuned = self.fine_tune(checkpoint, BASE, fine_tune_steps, fine_tune_lr, batch_size, device)
            metrics.update(self.score(tuned, f"{BASE}@fine-tuned"))
            dirs["fine-tuned"] = str(tuned)
        return dirs


@dataclass
class _Budget:
    epochs: int
    max_steps: int | None
    batch_size: int
    device: str
    fine_tune_steps: int
    fine_tune_lr: float | None


def _run_seed(run: _PresetRun, budget: _Budget, metrics: dict, train_sources: bool, in_domain: bool) -> dict:
    """One preset and seed: every model the protocol asks for, scored into ``metrics``."""
    b = budget
    dirs = {}
    if train_sources:
        dirs.update(
            run.evaluate(metrics, b.epochs, b.max_steps, b.batch_size, b.device, b.fine_tune_steps, b.fine_tune_lr)
        )
    if in_domain:
        dirs["in-domain"] = run.in_domain(metrics, b.epochs, b.max_steps, b.batch_size, b.device)
    return dirs


def run_protocol(
    path: str | os.PathLike,
    preset: str,
    *,
    epochs: int = 5,
    root=None,
    fine_tune_steps: int = 100,
    fine_tune_lr: float | None = None,
    seeds=(0, 1, 2),
    max_steps: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    tasks: list[str] | str | None = None,
    params: dict | None = None,
    compare_tutorial: bool = True,
    base_model: str | None = None,
    train_sources: bool = True,
    in_domain: bool = True,
) -> dict:
    """Run a transfer protocol (see the module docstring); returns the results dict.

    ``fine_tune_lr`` is the peak learning rate of fine-tuning (None: the training one, 1e-3);
    a lower one keeps more of what the model learned on the train sources. ``base_model``
    (default: the protocol's ``model:``) adds the pre-trained model's rows."""
    from trajfm.evaluate.suite import check_tasks, run_suite
    from trajfm.features.windows import load_features
    from trajfm.model.config import load_preset

    proto = load_protocol(path)
    load_preset(preset)  # an unknown preset fails before any work
    _check_budget(fine_tune_steps, epochs, seeds, fine_tune_lr)
    base_model = base_model or proto.model
    if not (train_sources or in_domain or base_model):
        raise ValueError("nothing to score: give a base model, or train on the train sources or in-domain")
    tasks = check_tasks(tasks) if tasks is not None else proto.tasks
    params = {**proto.params, **(params or {})}
    root = data_root(root)
    base = base_checkpoint(base_model, root) if base_model else None
    train_feat, train_acc = (
        source_features(proto.train, root, proto.window, *proto.train_split) if train_sources else (None, None)
    )
    held_feat, held_acc = source_features(
        proto.heldout, root, proto.window, proto.fine_tune_frac, proto.fine_tune_val_frac
    )
    held, _ = load_features(held_feat)
    n_train = len(load_features(train_feat)[0]["train"]) if train_sources else 0
    fit_ws, eval_ws = held["train"], held["test"]
    if len(eval_ws) == 0 or len(fit_ws) == 0:
        raise ValueError(
            f"protocol {proto.name}: the held-out data gives {len(fit_ws)} fine-tune and {len(eval_ws)} "
            "evaluation windows; both must be > 0"
        )
    presets = [preset] + (["tutorial"] if compare_tutorial and preset != "tutorial" else [])
    budget = _Budget(epochs, max_steps, batch_size, device, fine_tune_steps, fine_tune_lr)
    runs: dict[str, dict] = {}
    trained: dict[str, dict] = {}
    for seed in seeds:
        metrics = _baselines(run_suite(None, eval_ws, fit_ws, tasks, seed=seed, params=params))
        for name in presets:
            run = _PresetRun(name, seed, root, train_feat, held_feat, n_train, fit_ws, eval_ws, tasks, params)
            trained[f"{seed}/{name}"] = _run_seed(run, budget, metrics, train_sources, in_domain)
        if base is not None:
            run = _PresetRun(BASE, seed, root, train_feat, held_feat, n_train, fit_ws, eval_ws, tasks, params)
            trained[f"{seed}/{BASE}"] = run.base_model(
                metrics, base[0], fine_tune_steps, fine_tune_lr, batch_size, device
            )
        runs[str(seed)] = metrics
    settings = {**vars(budget), "train_sources": train_sources, "in_domain": in_domain}
    return _results(proto, preset, seeds, settings, tasks, params, held, runs, trained, root, base, train_acc, held_acc)


def _results(proto, preset, seeds, settings, tasks, params, held, runs, trained, root, base, train_acc, held_acc):
    """The results dict of ``run_protocol`` (format ``trajfm.transfer``)."""
    summary = summarize(runs)
    predictors = sorted({k.rsplit(".", 1)[1] for k in summary if "@" in k.rsplit(".", 1)[1]})
    bars = {p: b for p in predictors if "zero-shot" in p and (b := zero_shot_bars(summary, p)) is not None}
    return {
        "format": RESULTS_FORMAT,
        "protocol": proto.name,
        "description": proto.description,
        "protocol_file": proto.path,
        "preset": preset,
        "base_model": base[1] if base is not None else None,
        "seeds": [int(s) for s in seeds],
        "settings": {
            **settings,
            "window": proto.window,
            "train_split": list(proto.train_split),
            "fine_tune": {"frac": proto.fine_tune_frac, "val_frac": proto.fine_tune_val_frac},
            "tasks": tasks,
            "params": params,
        },
        "heldout_windows": {
            "fine_tune": len(held["train"]),
            "fine_tune_val": len(held["val"]),
            "eval": len(held["test"]),
        },
        "accounting": {"train": train_acc, "heldout": held_acc},
        "summary": summary,
        "bars": bars,
        "runs": runs,
        "trained": trained,
        "data_root": str(root),
    }
