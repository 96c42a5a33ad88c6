"""Where stage outputs live and how they are written: data root, manifests, atomic writes.

Every stage writes a directory ``<root>/<stage>/<key>/`` holding its tables (Parquet), a
``manifest.json`` (row counts, content hashes, parameters, schema version) and, when it rejects
rows, ``quarantine.parquet`` with a ``reason`` column. ``key`` is a hash of the stage's inputs and
parameters, so identical inputs map to the same directory (a free cache) and two runs with
different inputs never write to the same place. Directories appear atomically: a stage writes
into a temporary sibling and renames it into place, so readers never see a partial output. A
temporary sibling left by a killed run (SIGKILL, out of memory) is removed by the next writer in
that stage folder once its owner process is gone (``remove_stale_temp_dirs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = 1
ENV_ROOT = "TRAJFM_HOME"
DEFAULT_ROOT = ".trajfm"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: the argument, else ``$TRAJFM_HOME``, else ``./.trajfm``."""
    chosen = root if root not in (None, "") else os.environ.get(ENV_ROOT, DEFAULT_ROOT)
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
REDACTED = "***"


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``:
    ``s3://KEY:SECRET@bucket/a.csv`` -> ``s3://***@bucket/a.csv``, ``https://user:pw@host/x`` ->
    ``https://***@host/x``. Text without such a URL comes back unchanged."""
    if "@" not in text or "://" not in text:
        return text
    return _CREDENTIALS_IN_URL.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def redact(obj: Any) -> Any:
    """``obj`` (str, list, tuple, dict, path, nested) with ``redact_url`` applied to every string
    in it, keys included; what is written to manifests, logs and Prefect parameters."""
    if isinstance(obj, str):
        return redact_url(obj)
    if isinstance(obj, os.PathLike):
        text = os.fspath(obj)
        return redact_url(text) if isinstance(text, str) and redact_url(text) != text else obj
    if isinstance(obj, dict):
        return {redact(k): redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash of a DataFrame's values and column names (row order matters)."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Identity of an input file for cache keys: path, size and modification time."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_dir(root: Path, stage: str, key: str) -> Path:
    return root / stage / key


def within_root(recorded: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A stage directory recorded in a manifest (an absolute path when it was written), found
    under this data root: ``<root>/<stage>/<key>`` when that exists (the root was moved or
    copied since), else the path as recorded."""
    recorded = Path(recorded)
    here = data_root(root) / recorded.parent.name / recorded.name
    return here if here.exists() else recorded


def read_manifest(path: str | os.PathLike) -> dict:
    """Read ``manifest.json`` from a stage directory (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    return json.loads(p.read_text())


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether a stage directory is whole: its ``manifest.json`` reads, and every entry the manifest
    lists is still there (``contents``: what the stage wrote; ``files``: its tables,
    ``<name>.parquet``). A directory someone deleted files from is not complete, so the stage
    (and a cache keyed on it) builds it again instead of handing out a path that fails later."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    names = list(manifest.get("contents") or [])
    names += [f"{name}.parquet" for name in (manifest.get("files") or {})]
    return all(os.path.exists(directory / name) for name in names)


OWNER_FILE = ".owner"  # in a stage's temporary directory: which process writes it
STALE_UNOWNED_S = 6 * 3600.0  # a temporary directory without an owner file is stale after this (seconds)


def write_owner(directory: Path) -> None:
    """Record the writing process (host, pid) in a temporary directory."""
    import socket

    (directory / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale_temp_dir(directory: Path, now: float | None = None) -> bool:
    """True for a stage's temporary directory whose writer is gone: its owner process is not
    alive on this host (killed by SIGKILL or the OOM killer mid-stage), or it has no owner file
    and is older than ``STALE_UNOWNED_S`` (written before owner files, or on another host)."""
    import socket
    import time

    try:
        owner = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        owner = None
    if isinstance(owner, dict) and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"])
    try:
        age = (time.time() if now is None else now) - directory.stat().st_mtime
    except OSError:
        return False
    return age > STALE_UNOWNED_S


def remove_stale_temp_dirs(stage_folder: Path) -> list[str]:
    """Delete the temporary directories (``.<key>.<random>``) a killed run left in a stage
    folder; a live writer's directory is left alone. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(stage_folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.count(".") >= 2 and entry.is_dir(follow_symlinks=False)):
            continue
        path = Path(entry.path)
        if is_stale_temp_dir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(entry.name)
    return removed


class StageWriter:
    """Write a stage's files into a temporary directory, then move it into place at once.

    >>> with StageWriter(root, "ingest", key) as w:      # doctest: +SKIP
    ...     w.write_frame("points", df)
    ...     w.manifest.update(rows_in=10)
    """

    def __init__(self, root: Path, stage: str, key: str):
        self.final = stage_dir(root, stage, key)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(self.final.parent)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.final.parent))
        write_owner(self.tmp)
        self.manifest: dict[str, Any] = {
            "stage": stage,
            "key": key,
            "schema_version": SCHEMA_VERSION,
            "files": {},
        }

    @property
    def path(self) -> Path:
        return self.tmp

    def write_frame(self, name: str, df: pd.DataFrame) -> None:
        df.to_parquet(self.tmp / f"{name}.parquet", index=False)
        self.manifest["files"][name] = {"rows": int(len(df)), "hash": frame_hash(df)}

    def write_json(self, name: str, obj: Any) -> None:
        (self.tmp / f"{name}.json").write_text(json.dumps(redact(obj), indent=2, default=str))

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        # What the stage wrote (top level), so `is_complete` can tell a directory that lost a file.
        self.manifest["contents"] = sorted(
            p.name for p in self.tmp.iterdir() if p.name not in ("manifest.json", OWNER_FILE)
        )
        # Credentials in a source URL (s3://KEY:SECRET@...) never reach the data root.
        (self.tmp / "manifest.json").write_text(json.dumps(redact(self.manifest), indent=2, default=str))
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            # Another run produced the same key first: identical inputs, identical content.
            if is_complete(self.final):
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                shutil.rmtree(self.final, ignore_errors=True)
                os.rename(self.tmp, self.final)


def root_identity(root: str | os.PathLike | None = None) -> str:
    """A random id written once per data root: a wiped root gets a new id, so caches keyed on it
    (Prefect task caches) never hand back paths that no longer exist."""
    r = data_root(root)
    marker = r / ".root_id"
    if not marker.exists():
        import uuid

        tmp = r / f".root_id.{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, marker)  # atomic: the first writer wins, later ones read its id
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return marker.read_text().strip()


@contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive ``fcntl`` lock on the file ``path`` (created, with its folder, if absent) for
    the ``with`` block: processes on this machine sharing a data root take turns."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
