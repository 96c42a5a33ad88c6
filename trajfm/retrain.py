"""Scheduled retraining, the library side: which files in a watched folder are new, and what the
current champion was trained and evaluated on.

The ledger ``<root>/retrain/ledger.json`` lists every file a successful retraining consumed,
keyed by its fingerprint (path, size, modification time or ETag, see
``trajfm.data.ingest.fingerprint``): a file is new when its fingerprint is not there, so an
edited or replaced file counts as new again. ``record_consumed`` is called only after the run
that read the files has registered its model; a failed run leaves the ledger as it was and the
next run sees the same files again. The ledger is rewritten atomically (temporary file and
``os.replace``); two retraining runs on one data root at the same time may both consume the same
new files (each then trains once), never corrupt the ledger.

``champion_lineage`` reads what the flow needs to fine-tune and compare fairly: the champion's
checkpoint (downloaded from the registry), the features stage it was evaluated on and its
evaluation settings. MLflow is imported inside the functions.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from trajfm.mlflow_store import CHAMPIONS, download_checkpoint  # noqa: F401 - part of this module's API
from trajfm.store import data_root, stable_hash

log = logging.getLogger(__name__)

LEDGER = Path("retrain") / "ledger.json"


def file_id(fp: dict) -> str:
    """The ledger key of a file fingerprint."""
    return stable_hash(fp)


def watched_files(watch_dir: str | os.PathLike, format: str | None = None) -> list[dict]:
    """Fingerprints of the readable files under ``watch_dir`` (a directory, glob or fsspec URL),
    sorted by path; ``[]`` for an empty folder. Raises ``FileNotFoundError`` when it is missing."""
    from trajfm.data.ingest import fingerprint
    from trajfm.data.readers.sources import resolve_sources

    files, _skipped = resolve_sources([str(watch_dir)], format)
    return [fingerprint(s.file) for s in files]


def read_ledger(root=None) -> dict:
    path = data_root(root) / LEDGER
    if not path.is_file():
        return {"files": {}}
    return json.loads(path.read_text())


def missing_watch_dir(watch_dir: str | os.PathLike) -> str | None:
    """A one-line warning when ``watch_dir`` names nothing yet (a folder that does not exist, a
    glob matching no file), else None. The nightly deployment ships ``watch_dir: ./incoming``;
    until someone creates and fills it, each night is "nothing new", not a failure."""
    from trajfm.data.readers.sources import SourceFile

    file = SourceFile.of(watch_dir)
    text = file.url
    has_glob = any(c in text for c in "*?[")
    if file.is_local:
        local = os.path.expanduser(text)
        exists = bool(glob.glob(local, recursive=True)) if has_glob else os.path.exists(local)
    else:
        import fsspec

        fs, path = fsspec.core.url_to_fs(text)
        exists = bool(fs.glob(path)) if has_glob else fs.exists(path)
    if exists:
        return None
    where = Path(os.path.expanduser(text)).resolve() if file.is_local and not has_glob else text
    return (
        f"watch_dir {watch_dir!s} ({where}) does not exist yet: nothing new to retrain on "
        "(create it and drop new files there)"
    )


def new_files(watch_dir: str | os.PathLike, root=None, format: str | None = None) -> list[dict]:
    """Fingerprints of the files under ``watch_dir`` no successful retraining has consumed.

    A ``watch_dir`` that does not exist (yet) is "nothing new" with a logged warning (see
    ``missing_watch_dir``), not an error."""
    warning = missing_watch_dir(watch_dir)
    if warning:
        log.warning(warning)
        return []
    seen = read_ledger(root)["files"]
    return [fp for fp in watched_files(watch_dir, format) if file_id(fp) not in seen]


def record_consumed(files: list[dict], root=None, run: dict | None = None) -> Path:
    """Add ``files`` (fingerprints) to the ledger, with ``run`` (e.g. the registered version)."""
    root = data_root(root)
    path = root / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = read_ledger(root)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for fp in files:
        ledger["files"][file_id(fp)] = {**fp, "consumed_at": when, "run": run or {}}
    fd, tmp = tempfile.mkstemp(prefix=".ledger.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(ledger, f, indent=2, default=str)
    os.replace(tmp, path)
    return path


@dataclass
class ChampionLineage:
    version: int
    checkpoint: Path  # local copy of the champion's model.pt
    features_dir: Path | None  # the features stage its metric was measured on, when under this root
    split: str
    context_len: int
    horizon: int
    metric: float | None  # its test ADE (m), as registered


def champion_lineage(root=None, name: str = "trajfm") -> ChampionLineage | None:
    """The current champion of ``name`` and what it was evaluated on; None without a champion."""
    from trajfm.registry.tracking import champion_info

    info = champion_info(root, name)
    if info is None:
        return None
    client = _client(root)
    run = client.get_run(info["run_id"])
    tags, params = {**run.data.tags, **info.get("tags", {})}, run.data.params
    key = tags.get("trajfm.features_key")
    features = data_root(root) / "features" / key if key else None
    split = params.get("eval.split") or "test"
    return ChampionLineage(
        version=int(info["version"]),
        checkpoint=download_checkpoint(root, name, int(info["version"])),
        features_dir=features if features is not None and (features / "manifest.json").is_file() else None,
        split=split,
        context_len=int(params.get("eval.context_len") or 20),
        horizon=int(params.get("eval.horizon") or 10),
        metric=info.get("metrics", {}).get(f"{split}_ade_m"),
    )


def _client(root):
    from mlflow import MlflowClient

    from trajfm.registry.tracking import tracking_uri

    uri = tracking_uri(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
