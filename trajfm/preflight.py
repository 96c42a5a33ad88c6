"""Checks that run before any stage: a run that is certain to fail says so at once, in one line.

The flows call :func:`check_run` first; the ``trajfm`` command calls it before it starts Prefect,
so ``trajfm train --preset nope`` answers in about a second instead of after ingest, preprocess
and features (and three training attempts). Each check raises :class:`PreflightError` (a
``ValueError``, so Prefect tasks and flows never retry it) whose message is one line.

Cheap on purpose: no Prefect, MLflow or torch import; the source check lists the files (it reads
none of them) and the root check writes and deletes one empty file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


class PreflightError(ValueError):
    """A run that cannot succeed: bad preset, model name, sources or data root. One-line message."""


def check_data_root(root: str | os.PathLike | None) -> Path:
    """The resolved data root, created if needed, after proving it is writable (a file is
    created and removed there, and in ``$PREFECT_HOME`` when that is set).

    A read-only root would otherwise surface minutes later as a Prefect API timeout (its SQLite
    database under the root cannot be written)."""
    from trajfm.store import data_root

    try:
        path = data_root(root)
    except OSError as exc:
        raise PreflightError(
            f"cannot create the data root {root or os.environ.get('TRAJFM_HOME') or '.trajfm'}: {_reason(exc)}"
        ) from None
    _require_writable(path, "data root")
    prefect_home = os.environ.get("PREFECT_HOME")
    if prefect_home and Path(prefect_home).expanduser().is_dir():
        _require_writable(Path(prefect_home).expanduser(), "Prefect home (PREFECT_HOME)")
        db = Path(prefect_home).expanduser() / "prefect.db"
        if db.is_file() and not os.access(db, os.W_OK):
            raise PreflightError(
                f"the Prefect database {db} is read-only: fix its permissions or choose another data root"
            )
    return path


def _require_writable(path: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".trajfm-write-check.", dir=path)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PreflightError(
            f"the {what} {path} is not writable ({_reason(exc)}): choose another --data-root / TRAJFM_HOME or fix "
            "its permissions"
        ) from None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_sources(sources, params: dict | None = None) -> list[str] | None:
    """``None`` (left out) means the embedded data and passes; anything else must name at least
    one readable file. An empty list (a glob that matched nothing in the shell), an empty
    directory, or a directory with no file of a known format is an error, never the demo data."""
    if sources is None:
        return None
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, (list, tuple)):
        raise PreflightError(f"sources must be a list of paths, globs or URLs, got {type(sources).__name__}")
    if len(sources) == 0:
        raise PreflightError(
            "sources is an empty list: name files, directories or globs (leave sources out for the embedded demo data)"
        )
    from trajfm.data.catalog import expand_data
    from trajfm.data.readers.sources import resolve_sources

    sources = expand_data(sources)  # embedded:SUBSET (e.g. embedded:small) names bundled AIS files

    fmt = (params or {}).get("format")
    try:
        files, _ = resolve_sources([str(s) for s in sources], fmt)
    except (OSError, ValueError) as exc:
        raise PreflightError(" ".join(str(exc).split())) from None
    if not files:
        listed = ", ".join(map(str, sources[:3])) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
        raise PreflightError(f"no trajectory files found in {listed}" + (f" (format {fmt!r})" if fmt else ""))
    return [s.file.url for s in files]


def check_preset(preset: str) -> None:
    """A bundled preset name or a path to a preset ``.json``; the error lists the known presets.

    Reads the preset folder directly: importing ``trajfm.model`` would import torch (seconds)."""
    path = Path(str(preset))
    if path.suffix == ".json" and path.is_file():
        return
    if not isinstance(preset, str) or not (PRESET_DIR / f"{preset}.json").is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.json"))  # as trajfm.model.config.list_presets
        raise PreflightError(f"unknown model preset {preset!r}; known presets: {', '.join(known)}")


# The bundled presets (``trajfm.model.config.PRESET_DIR``), found without importing trajfm.model.
PRESET_DIR = Path(__file__).resolve().parent / "model" / "presets"


# Registered model names: MLflow refuses "/" and ":", and trajfm's model URIs
# (``models:/<name>@champion``) need a name without "@" or surrounding spaces.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,254}")


def check_model_name(name: str) -> None:
    """A name the MLflow registry accepts and ``models:/<name>@champion`` can carry."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name != name.strip():
        raise PreflightError(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' or inner spaces, starting with a "
            "letter or digit"
        )


def check_run(
    sources=None,
    data_root=None,
    preset: str | None = None,
    model_name: str | None = None,
    ingest_params: dict | None = None,
) -> None:
    """Every check that applies to a run (arguments left ``None`` are not checked), cheapest first."""
    if preset is not None:
        check_preset(preset)
    if model_name is not None:
        check_model_name(model_name)
    check_data_root(data_root)
    check_sources(sources, ingest_params)
