"""Where MLflow keeps the runs and the model registry of a data root, and reading models from it.

The layer under ``trajfm.evaluate`` and ``trajfm.registry`` that both need: the tracking URI of a
data root (``tracking_uri``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``), a
moved root's store rebased in place (``rebase_moved_store``), MLflow's process-global URIs set
for a block (``global_uris``) or for a run (``setup_mlflow``), MLflow-legal metric names
(``mlflow_metric_name``), and a registered trajfm model's checkpoint found and downloaded
(``registered_version``, ``download_registered_checkpoint``, ``download_checkpoint``). Logging,
registration and promotion stay in ``trajfm.registry``.

MLflow is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trajfm.store import data_root

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "trajfm"
CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc model's artifact holding the torch checkpoint
CHAMPIONS = Path("retrain") / "champions"  # downloaded champion checkpoints, one folder per version
_SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` (absolute path).

    A data root that was moved or copied is rebased here on first use (``rebase_moved_store``),
    so its store names its own artifacts, never the original root's."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    root_path = data_root(root)
    rebase_moved_store(root_path)
    return f"sqlite:///{root_path / 'mlflow.db'}"


# --- a movable data root ------------------------------------------------------------------
# MLflow's SQL store makes every artifact location absolute (a relative one is resolved against
# the current directory when it is stored), and MLflow 3 writes the model's absolute artifact
# URI into its MLmodel. A copied data root would therefore still read, and write, the original.
# So a store whose locations point under another root is rewritten once, in place, to point
# under the root it now lives in: the copy then works on its own, the original is never opened.

ARTIFACTS_DIR = "mlartifacts"
_REBASED: set[tuple[str, int]] = set()  # (database, inode) checked by this process
# (table, column) holding artifact locations; values of params and tags are rebased too.
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
    ("params", "value"),
    ("tags", "value"),
    ("model_version_tags", "value"),
)


def recorded_root(database: Path) -> str | None:
    """The data root path a store's experiments were created under (from their artifact
    locations ``file://<root>/mlartifacts/...``), or None when there is none."""
    import sqlite3

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        try:
            rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # a store MLflow has not created its tables in yet
            return None
    marker = f"/{ARTIFACTS_DIR}/"
    for (location,) in rows:
        text = (location or "").removeprefix("file://")
        if marker in text:
            return text.split(marker, 1)[0]
    return None


def rebase_moved_store(root: Path) -> str | None:
    """If ``<root>/mlflow.db`` was written under another root path (the root was moved or
    copied), rewrite every artifact location in it, and the MLmodel files under
    ``<root>/mlartifacts``, from the old root to ``root``. Returns the old root path when it
    rebased, else None. Checked once per process and database; a no-op for a store in place."""
    import sqlite3

    database = Path(root) / "mlflow.db"
    try:
        key = (str(database), database.stat().st_ino)
    except FileNotFoundError:
        return None
    if key in _REBASED:
        return None
    old = recorded_root(database)
    new = str(Path(root))
    if old is None or old == new:
        _REBASED.add(key)
        return None
    with sqlite_init_lock(f"sqlite:///{database}"):
        old = recorded_root(database)  # another process may have rebased it meanwhile
        if old is not None and old != new:
            with sqlite3.connect(database) as con:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                for table, column in _LOCATION_COLUMNS:
                    if table not in tables:
                        continue
                    for before, after in ((f"file://{old}", f"file://{new}"), (old, new)):
                        con.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (after, len(before) + 1, before, len(before) + 1, before + "/"),
                        )
            for mlmodel in (Path(root) / ARTIFACTS_DIR).rglob("MLmodel"):
                text = mlmodel.read_text()
                if old + "/" in text:
                    mlmodel.write_text(text.replace(old + "/", new + "/"))
            log.warning(
                "data root moved: %s was written under %s; its MLflow locations now point under %s", database, old, new
            )
    _REBASED.add(key)
    return old


def _server_stores_artifacts(uri: str) -> bool:
    """True for a tracking server (it has its own artifact root); False for a database store."""
    return uri.split(":", 1)[0].lower() in _SERVER_SCHEMES


def setup_mlflow(root: str | os.PathLike | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow (tracking and registry) at ``tracking_uri(root)`` and select ``experiment``.

    A new experiment gets the artifact location ``<root>/mlartifacts/<experiment>`` when the store
    is a database (so nothing lands in ``./mlruns``); with a tracking server the server decides.
    Returns the experiment id. Sets MLflow's process-global tracking URI and experiment.
    """
    import mlflow

    uri = tracking_uri(root)
    _set_global_uris(uri, uri)  # the process-global URI is what start_run uses
    with sqlite_init_lock(uri):  # a new database is migrated and the experiment created once
        existing = mlflow.get_experiment_by_name(experiment)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                mlflow.MlflowClient().restore_experiment(existing.experiment_id)
            experiment_id = existing.experiment_id
        else:
            artifact_location = None
            if not _server_stores_artifacts(uri):
                artifacts = data_root(root) / ARTIFACTS_DIR / re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
                artifacts.mkdir(parents=True, exist_ok=True)
                artifact_location = artifacts.as_uri()
            experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
        mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models(max_results=1)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def global_uris(uri: str):
    """MLflow's process-global tracking and registry URIs set to ``uri`` inside the block, as
    they were after it (the environment too). For MLflow calls that take URIs as arguments but
    resolve a registered model's logged-model source through the global store: without it, a
    fresh process downloading ``models:/NAME@ALIAS`` looked in ``./mlflow.db`` (and created it)."""
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    _set_global_uris(uri, uri)
    try:
        yield
    finally:
        _set_global_uris(*before)


def _set_global_uris(tracking: str, registry: str) -> None:
    """Set MLflow's process-global tracking and registry URIs, leaving the environment as it was:
    mlflow.set_*_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into os.environ, which
    would make every later ``tracking_uri(other_root)`` answer this one."""
    import mlflow

    saved = {key: os.environ.get(key) for key in _URI_ENV}
    try:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def sqlite_init_lock(uri: str):
    """For a ``sqlite:///`` store: an exclusive lock on ``<database>.init.lock`` while MLflow
    creates and migrates the database. Two processes opening a new ``mlflow.db`` at once would
    otherwise both run MLflow's migrations and one fails (``table _alembic_tmp_tags already
    exists``). Other stores (a tracking server) need no lock. Not reentrant across calls with the
    same database in one process (a separate file from ``registry_lock``, so it nests in it)."""
    from trajfm.store import file_lock

    if not uri.lower().startswith("sqlite:///"):
        yield
        return
    database = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    with file_lock(database.with_name(database.name + ".init.lock")):
        yield


def mlflow_metric_name(key: str) -> str:
    """An MLflow-legal metric name (alphanumerics, _ - . / : and spaces): ``@`` is written
    ``_at_`` (``ade_m@10`` -> ``ade_m_at_10``), any other character ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key.replace("@", "_at_"))


# --- trajfm models in the registry ------------------------------------------------------------


def registered_version(uri: str, root) -> dict:
    """Name, version and run of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    body = uri[len("models:/") :].strip("/")
    tracking = tracking_uri(root)
    if tracking.startswith("sqlite:///") and not Path(tracking[len("sqlite:///") :]).is_file():
        raise ValueError(
            f"{uri!r}: there is no MLflow store at {tracking} (wrong --data-root, or nothing registered yet)"
        )
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.partition("/")
            if not version.isdigit():
                raise ValueError(f"{uri!r}: expected models:/NAME/VERSION (a number) or models:/NAME@ALIAS")
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"{uri!r} is not in the model registry at {tracking}: {exc.message}") from None
    return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id, "tracking_uri": tracking}


def download_registered_checkpoint(uri: str, root, into: Path) -> Path:
    """Download a logged pyfunc model (``models:/`` or ``runs:/<run_id>/model``) and return its
    ``checkpoint`` artifact file."""
    import mlflow.artifacts
    import yaml
    from mlflow.exceptions import MlflowException

    tracking = tracking_uri(root)
    try:
        with global_uris(tracking):  # MLflow resolves the version's logged model through the global store
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(into), tracking_uri=tracking, registry_uri=tracking
                )
            )
    except MlflowException as exc:
        raise ValueError(f"{uri!r} cannot be downloaded from {tracking}: {exc.message}") from None
    if not (local / "MLmodel").is_file():
        raise ValueError(f"{uri!r} is not an MLflow model (no MLmodel file); for a run give runs:/<run_id>/model")
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {}) or {}
    if CHECKPOINT_ARTIFACT not in artifacts:
        raise ValueError(f"{uri}: the registered model has no {CHECKPOINT_ARTIFACT!r} artifact; is it a trajfm model?")
    return local / artifacts[CHECKPOINT_ARTIFACT]["path"]


def download_checkpoint(root, name: str, version: int) -> Path:
    """The ``.pt`` checkpoint of ``models:/<name>/<version>``, downloaded once under the data root."""
    import mlflow

    dest = data_root(root) / CHAMPIONS / f"{name}-v{version}"
    found = sorted(dest.rglob("*.pt")) if dest.is_dir() else []
    if found:
        return found[0]
    uri = tracking_uri(root)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{name}-v{version}.", dir=dest.parent if dest.parent.exists() else _mkdir(dest.parent)
        )
    )
    previous = mlflow.get_registry_uri()
    try:
        mlflow.set_registry_uri(uri)  # models:/ URIs resolve through the registry URI
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp), tracking_uri=uri
        )
    finally:
        mlflow.set_registry_uri(previous)
    found = sorted(tmp.rglob("*.pt"))
    if not found:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileNotFoundError(f"models:/{name}/{version} holds no .pt checkpoint")
    try:
        os.rename(tmp, dest)
    except OSError:  # another run downloaded it first
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(dest.rglob("*.pt"))[0]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
