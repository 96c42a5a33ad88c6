"""Processes a killed run left behind: Prefect's temporary API server.

``trajfm run`` / ``trajfm demo`` without ``PREFECT_API_URL`` let Prefect start a temporary
server (``python -m uvicorn ... prefect.server.api.server:create_app`` with
``PREFECT__SERVER_EPHEMERAL=1``) as a child process, stopped at exit. After a SIGKILL of the run
nothing stops it: it keeps its port and the data root's Prefect database. The next run finds such
servers of the same ``PREFECT_HOME`` whose parent is gone and stops them.

Linux only (reads ``/proc``); elsewhere nothing is found. Prefect is not imported.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")
SERVER_APP = "prefect.server.api.server:create_app"


def _cmdline(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # fields after "(comm)": state, ppid, ...


def _is_python(pid: int) -> bool:
    args = _cmdline(pid)
    return bool(args) and "python" in os.path.basename(args[0])


def orphaned_prefect_servers(prefect_home: str | os.PathLike) -> list[int]:
    """Pids of Prefect temporary servers for ``prefect_home`` whose starting process is gone
    (their parent is now init or a sub-reaper, not the Python process that started them)."""
    if not PROC.is_dir():
        return []
    home = str(Path(prefect_home).resolve())
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        args = _cmdline(pid)
        if SERVER_APP not in args or "uvicorn" not in args:
            continue
        env = _environ(pid)
        if env.get("PREFECT__SERVER_EPHEMERAL") != "1" or not env.get("PREFECT_HOME"):
            continue
        if str(Path(env["PREFECT_HOME"]).resolve()) != home:
            continue
        parent = _parent(pid)
        if parent is None or parent == 1 or not _is_python(parent):
            found.append(pid)
    return sorted(found)


def stop_orphaned_prefect_servers(prefect_home: str | os.PathLike, wait_s: float = 5.0) -> list[int]:
    """Stop (SIGTERM, then SIGKILL after ``wait_s`` seconds) the orphaned temporary servers of
    ``prefect_home``; returns their pids."""
    pids = orphaned_prefect_servers(prefect_home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    for pid in pids:
        while time.monotonic() < deadline and (PROC / str(pid)).exists() and _state(pid) != "Z":
            time.sleep(0.1)
        if (PROC / str(pid)).exists() and _state(pid) != "Z":
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return pids


def _state(pid: int) -> str:
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""
