"""``trajfm registry``: read and steer the MLflow model registry.

    trajfm registry list                      versions: aliases, metric, registered_as (the decision
                                              at registration), preset, created, data hash
    trajfm registry show [VERSION|ALIAS]      one version (default: champion): tags, metrics, lineage
    trajfm registry promote VERSION [--alias champion] [--reason TEXT]
    trajfm registry rollback [--reason TEXT]  champion back to the previous champion

Options (after the subcommand): ``--name trajfm``, ``--data-root DIR`` (its SQLite store),
``--tracking-uri URI`` (a tracking server; default ``$MLFLOW_TRACKING_URI``, else the data
root's store), ``--json`` (machine-readable output). Exit status 1 with a message on stderr
for an unknown model, version or alias, or an unreachable registry: a tracking server that
does not accept a connection within 5 s fails at once, and MLflow's HTTP calls get one retry
and a 15 s timeout (``MLFLOW_HTTP_REQUEST_TIMEOUT``/``_MAX_RETRIES`` set by you win).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from trajfm.registry.manage import (
    CHAMPION,
    DECISION,
    LINEAGE_TAG,
    RegistryError,
    champion_history,
    promote,
    require_model,
    resolve_version,
    rollback,
)

LINEAGE_TAGS = (
    "trajfm.data_hash",
    "trajfm.config",
    "trajfm.code_version",
    "trajfm.train_key",
    "trajfm.features_key",
    "trajfm.eval_id",
    LINEAGE_TAG,
)


def _client(args):
    from mlflow import MlflowClient

    from trajfm.registry.tracking import tracking_uri

    uri = args.tracking_uri or tracking_uri(args.data_root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise RegistryError(
            f"no MLflow store at {uri[len('sqlite:///') :]}: nothing registered under this data root yet"
        )
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


CONNECT_TIMEOUT_S = 5.0  # seconds to open a connection to a tracking server
HTTP_ENV = {  # MLflow's own HTTP settings for this command: one try, short timeout (seconds)
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def check_reachable(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, in one line, when an ``http(s)://`` tracking server does not accept connections
    (MLflow's client would retry for minutes, then report "not found")."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    host, port = parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise RegistryError(f"cannot reach the MLflow tracking server at {redact_uri(uri)}: {exc}") from None


def redact_uri(uri: str) -> str:
    from trajfm.store import redact_url

    return redact_url(uri)


def _http_settings() -> dict:
    """``HTTP_ENV`` entries the user has not set (theirs win); applied for the command's duration."""
    import os

    return {k: v for k, v in HTTP_ENV.items() if k not in os.environ}


def one_line(message: str, limit: int = 400) -> str:
    """An error message on one line: MLflow's connection errors span several and repeat a URL."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lock(args):
    """The data root's registration lock (not taken for an explicit ``--tracking-uri``)."""
    from contextlib import nullcontext

    from trajfm.registry.tracking import registry_lock

    return nullcontext() if args.tracking_uri else registry_lock(args.data_root)


def _created(ms) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def _short_hash(text: str | None) -> str:
    from trajfm.store import stable_hash

    return stable_hash(text, length=8) if text else ""


def version_row(mv, aliases: dict[int, list[str]]) -> dict:
    tags = mv.tags or {}
    metric = tags.get(DECISION + "metric") or tags.get("trajfm.promote_metric") or "test_ade_m"
    value = tags.get(metric)
    return {
        "version": int(mv.version),
        "aliases": ",".join(sorted(aliases.get(int(mv.version), []))),
        "metric": metric,
        "value": float(value) if value not in (None, "") else None,
        "registered_as": tags.get(DECISION + "decision", ""),
        "preset": tags.get("trajfm.preset", ""),
        "created": _created(mv.creation_timestamp),
        "data": _short_hash(tags.get("trajfm.data_hash")),
    }


def list_versions(client, name: str) -> list[dict]:
    """One row per version of ``name``, newest first."""
    model = require_model(client, name)
    by_version: dict[int, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(int(version), []).append(alias)
    versions = client.search_model_versions(f"name='{name}'")
    return [version_row(mv, by_version) for mv in sorted(versions, key=lambda mv: -int(mv.version))]


def _maybe_json(text: str):
    """The JSON records (manual promotion, rollback) as objects; other tag values as they are."""
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def describe_version(client, name: str, ref: str) -> dict:
    """Everything about one version: aliases, tags, run metrics and params, lineage, URIs."""
    mv = resolve_version(client, name, ref)
    model = require_model(client, name)
    aliases = sorted(a for a, v in (model.aliases or {}).items() if int(v) == int(mv.version))
    tags = dict(mv.tags or {})
    run = client.get_run(mv.run_id) if mv.run_id else None
    lineage = {k.removeprefix("trajfm."): tags.get(k) for k in LINEAGE_TAGS}
    for key in ("data_hash", "config"):
        try:
            lineage[key] = json.loads(lineage[key]) if lineage[key] else None
        except json.JSONDecodeError:
            pass
    return {
        "name": name,
        "version": int(mv.version),
        "aliases": aliases,
        "model_uri": f"models:/{name}/{mv.version}",
        "alias_uris": [f"models:/{name}@{a}" for a in aliases],
        "source": mv.source,
        "run_id": mv.run_id,
        "created": _created(mv.creation_timestamp),
        "promotion": {k.removeprefix(DECISION): _maybe_json(v) for k, v in tags.items() if k.startswith(DECISION)},
        "lineage": lineage,
        "metrics": dict(run.data.metrics) if run else {},
        "tags": {k: _maybe_json(v) for k, v in tags.items() if not k.startswith(DECISION) and k not in LINEAGE_TAGS},
        "params": dict(run.data.params) if run else {},
        "champion_history": champion_history(client, name),
    }


def table(rows: list[dict]) -> str:
    """Rows as an aligned text table (floats with one decimal)."""
    if not rows:
        return "(no versions)"
    cells = [[("" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)) for v in r.values()] for r in rows]
    head = list(rows[0])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _show_text(info: dict) -> str:
    p, lin = info["promotion"], info["lineage"]
    config = lin.get("config") or {}
    lines = [
        f"{info['name']} version {info['version']}  aliases: {', '.join(info['aliases']) or '-'}",
        f"  model URI   {info['model_uri']}" + "".join(f"  {u}" for u in info["alias_uris"]),
        f"  run         {info['run_id']}   created {info['created']} UTC",
        f"  source      {info['source']}",
        f"  promotion   {p.get('decision', '-')}: {p.get('reason', '')} ({p.get('time', '')})",
    ]
    if "manual" in p:
        m = p["manual"]
        lines.append(
            f"  by hand     {m['alias']} by {m['by']} at {m['time']}: {m['reason'] or '-'} (was v{m['previous']})"
        )
    lines += [
        f"  code        {lin.get('code_version')}",
        f"  data hash   {json.dumps(lin.get('data_hash'))}",
        f"  lineage     key {lin.get('lineage_key')}  train {lin.get('train_key')}  features {lin.get('features_key')}"
        f"  eval {lin.get('eval_id')}",
        f"  preset      {config.get('preset', info['tags'].get('trajfm.preset', '?'))}",
        f"  config      {json.dumps(config, sort_keys=True)}" if config else "  config      -",
        "  metrics     " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(info["metrics"].items())),
        "  champions   " + " -> ".join(f"v{h['version']}" for h in info["champion_history"]),
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default="trajfm", help="registered model name (default: trajfm)")
    common.add_argument(
        "--data-root", default=None, help="data root whose mlflow.db to use (default: $TRAJFM_HOME or ./.trajfm)"
    )
    common.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the data root's)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser = argparse.ArgumentParser(
        prog="trajfm registry",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="all versions, newest first")
    show = sub.add_parser("show", parents=[common], help="one version (default: the champion)")
    show.add_argument("ref", nargs="?", default=CHAMPION, metavar="VERSION|ALIAS")
    prom = sub.add_parser("promote", parents=[common], help="move an alias to a version by hand")
    prom.add_argument("ref", metavar="VERSION|ALIAS")
    prom.add_argument("--alias", default=CHAMPION)
    prom.add_argument("--reason", default="")
    prom.add_argument("--by", default=None, help="who (default: the login name)")
    back = sub.add_parser("rollback", parents=[common], help="champion back to the previous champion")
    back.add_argument("--reason", default="")
    back.add_argument("--by", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    from mlflow.exceptions import MlflowException

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = _http_settings()
    os.environ.update(settings)
    try:
        client = _client(args)
        if args.command == "list":
            out = list_versions(client, args.name)
            text = table(out)
        elif args.command == "show":
            out = describe_version(client, args.name, args.ref)
            text = _show_text(out)
        elif args.command == "promote":
            with _lock(args):
                out = promote(client, args.name, args.ref, alias=args.alias, reason=args.reason, by=args.by)
            text = f"{args.name}: {out['alias']} -> version {out['version']} (was {out['previous']}); by {out['by']}"
        else:
            with _lock(args):
                out = rollback(client, args.name, reason=args.reason, by=args.by)
            text = (
                f"{args.name}: champion rolled back from version {out['from']} to version {out['to']}; by {out['by']}"
            )
    except (RegistryError, MlflowException) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        print(f"trajfm registry: error: {one_line(message)}", file=sys.stderr)
        return 1
    finally:
        for key in settings:
            os.environ.pop(key, None)
    print(json.dumps(out, indent=2, default=str) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
