"""The registry's aliases: who is ``champion`` and ``challenger``, why, and how to change it.

Promotion rule (applied by ``decide`` when a version is registered; ``metric`` lower is better
unless the version says otherwise):

1. No champion yet: the new version becomes ``champion``.
2. The champion was evaluated on the same evaluation set (equal ``trajfm.eval_id`` tags: a hash
   of the features key, split, context length and horizon; two untagged versions count as
   equal): the new version becomes ``champion`` only if its metric is strictly better than the
   champion's; a tie or a worse value makes it ``challenger``.
3. Different evaluation sets: the champion is compared on the new version's set when the caller
   can re-measure it (``champion_metric_on_eval``); otherwise promotion is skipped, with the
   reason recorded, and the new version becomes ``challenger``.
4. A champion without a value of the metric loses to any version that has one.

``challenger`` is always the latest registered version that did not become champion; a
version is never both (promoting the challenger by hand removes the alias). Each decision is
recorded as tags on the version (``trajfm.promotion.*``: decision, metric, value, compared_with,
compared_value, reason, time). Every new champion (by registration or ``promote``) is appended
to the registered model's tag ``trajfm.champion_history`` (a JSON list of ``{version, time, by,
reason}``); ``rollback`` drops the newest entries down to the previous champion, moves the alias
there and tags the version it replaced ``trajfm.rolled_back`` (who, when, why).

Functions take an ``MlflowClient``; nothing here sets MLflow's global state.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "trajfm.champion_history"
EVAL_ID_TAG = "trajfm.eval_id"
LINEAGE_TAG = "trajfm.lineage_key"
DECISION = "trajfm.promotion."  # prefix of the decision tags
MANUAL_TAG = "trajfm.promotion.manual"
ROLLED_BACK_TAG = "trajfm.rolled_back"
_HISTORY_KEEP = 500  # entries kept in the history tag (its value may hold 100,000 characters)


class RegistryError(ValueError):
    """An unknown model, version or alias, or an operation the registry state does not allow."""


@dataclass
class Decision:
    """What registration decided for a new version."""

    decision: str  # "champion" | "challenger" | "skipped" (not comparable; also challenger)
    champion_version: int  # the champion afterwards
    compared_with: int | None  # the champion the version was compared with
    compared_value: float | None  # that champion's metric on the same evaluation set
    reason: str

    @property
    def promoted(self) -> bool:
        return self.decision == "champion"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return "unknown"


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- reading the registry ----------------------------------------------------------------------


def aliases_of(client, name: str) -> dict[str, int]:
    """alias -> version of registered model ``name`` ({} when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: int(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        return {}


def require_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise  # unreachable server, no permission, ...: say that, not "not found"
        raise RegistryError(f"no registered model named {name!r} in this registry") from exc


def is_not_found(exc) -> bool:
    """True when an ``MlflowException`` says the thing asked for does not exist (and not that the
    registry could not be asked)."""
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # MLflow's stores report a missing alias as INVALID_PARAMETER_VALUE "... alias X not found."
    return code == "INVALID_PARAMETER_VALUE" and "not found" in str(getattr(exc, "message", exc))


def resolve_version(client, name: str, ref: str | int):
    """The ModelVersion for ``ref``: a version number or an alias (``champion``, ``challenger``)."""
    from mlflow.exceptions import MlflowException

    require_model(client, name)
    text = str(ref).strip()
    if text[:1] in "vV" and text[1:].isdigit():  # "v3" as list and show print it
        text = text[1:]
    try:
        if text.isdigit():
            return client.get_model_version(name, text)
        return client.get_model_version_by_alias(name, text)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        known = ", ".join(f"{a}->v{v}" for a, v in sorted(aliases_of(client, name).items())) or "none"
        kind = "version" if text.isdigit() else "alias"
        raise RegistryError(f"{name} has no {kind} {text!r} (aliases: {known})") from exc


def champion_history(client, name: str) -> list[dict]:
    tags = require_model(client, name).tags or {}
    try:
        history = json.loads(tags.get(HISTORY_TAG, "[]"))
    except json.JSONDecodeError:
        log.warning("tag %s of %s is not JSON; starting a new history", HISTORY_TAG, name)
        return []
    return history if isinstance(history, list) else []


def version_metric(client, name: str, version: int, metric: str) -> float | None:
    """``metric`` of a version: its tag, else the metric of the run that produced it."""
    mv = client.get_model_version(name, str(version))
    value = _float((mv.tags or {}).get(metric))
    if value is None and mv.run_id:
        value = _float(client.get_run(mv.run_id).data.metrics.get(metric))
    return value


# --- changing aliases --------------------------------------------------------------------------


def _append_history(client, name: str, version: int, by: str, reason: str) -> None:
    history = champion_history(client, name) + [
        {"version": int(version), "time": now_iso(), "by": by, "reason": reason}
    ]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-_HISTORY_KEEP:]))


def _set_champion(client, name: str, version: int, by: str, reason: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if aliases_of(client, name).get(CHALLENGER) == int(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    _append_history(client, name, version, by, reason)


def promote(
    client, name: str, version: str | int, alias: str = CHAMPION, reason: str = "", by: str | None = None
) -> dict:
    """Move ``alias`` to ``version`` by hand; recorded on the version (``trajfm.promotion.manual``)
    and, for ``champion``, in the champion history. Returns the record."""
    mv = resolve_version(client, name, version)
    target = int(mv.version)
    alias = alias.strip()
    if not alias or alias.isdigit():
        raise RegistryError(f"an alias must be a name, not {alias!r}")
    by = by or whoami()
    previous = aliases_of(client, name).get(alias)
    record = {"alias": alias, "version": target, "previous": previous, "by": by, "time": now_iso(), "reason": reason}
    if alias == CHAMPION:
        _set_champion(client, name, target, by, reason or "promoted by hand")
    else:
        client.set_registered_model_alias(name, alias, str(target))
    client.set_model_version_tag(name, str(target), MANUAL_TAG, json.dumps(record))
    log.info("%s: alias %s v%s -> v%d by %s (%s)", name, alias, previous, target, by, reason)
    return record


def rollback(client, name: str, reason: str = "", by: str | None = None) -> dict:
    """Champion back to the previous champion of the history; the history forgets the rolled
    back entries, so a second rollback goes one further back."""
    current = aliases_of(client, name).get(CHAMPION)
    history = champion_history(client, name)
    while history and history[-1]["version"] == current:
        history.pop()
    if not history:
        raise RegistryError(f"{name} has no previous champion to roll back to (champion: v{current})")
    target = int(history[-1]["version"])
    by = by or whoami()
    record = {"from": current, "to": target, "by": by, "time": now_iso(), "reason": reason}
    resolve_version(client, name, target)  # still registered?
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, str(target))
    if aliases_of(client, name).get(CHALLENGER) == target:
        client.delete_registered_model_alias(name, CHALLENGER)
    if current is not None:
        client.set_model_version_tag(name, str(current), ROLLED_BACK_TAG, json.dumps(record))
    log.info("%s: champion rolled back v%s -> v%d by %s (%s)", name, current, target, by, reason)
    return record


# --- the automatic decision at registration ----------------------------------------------------


def decide(
    client,
    name: str,
    version: int,
    metric: str,
    value: float,
    lower_is_better: bool = True,
    eval_id: str | None = None,
    champion_metric_on_eval: Callable[[int], float | None] | None = None,
) -> Decision:
    """Apply the promotion rule (module docstring) to a just-registered ``version``: move the
    aliases and record the decision as tags on the version."""
    champion = aliases_of(client, name).get(CHAMPION)
    compared_value = None
    if champion is None or champion == version:
        decision, reason = "champion", "first version: no champion yet"
    else:
        champion_eval = (client.get_model_version(name, str(champion)).tags or {}).get(EVAL_ID_TAG)
        if champion_eval == eval_id:
            compared_value = version_metric(client, name, champion, metric)
            where = "on the same evaluation set"
        else:
            compared_value = _remeasure(champion_metric_on_eval, champion)
            where = "re-measured on this version's evaluation set"
        if champion_eval != eval_id and compared_value is None:
            decision = "skipped"
            reason = (
                f"evaluation sets differ (champion v{champion}: {champion_eval}, this: {eval_id}) and the champion "
                "could not be measured on this one; promote by hand if wanted"
            )
        elif compared_value is None:
            decision, reason = "champion", f"champion v{champion} has no {metric}"
        else:
            better = value < compared_value if lower_is_better else value > compared_value
            op = ("<" if lower_is_better else ">") if better else ("not <" if lower_is_better else "not >")
            decision = "champion" if better else "challenger"
            reason = f"{metric} {value:.6g} {op} champion v{champion} {compared_value:.6g} {where}"
    if decision == "champion":
        _set_champion(client, name, version, "registration", reason)
    else:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    tags = {
        "decision": decision,
        "metric": metric,
        "value": repr(float(value)),
        "compared_with": "" if champion in (None, version) else str(champion),
        "compared_value": "" if compared_value is None else repr(compared_value),
        "reason": reason,
        "time": now_iso(),
    }
    for key, text in tags.items():
        client.set_model_version_tag(name, str(version), DECISION + key, text)
    log.info("%s v%d: %s (%s)", name, version, decision, reason)
    return Decision(
        decision=decision,
        champion_version=version if decision == "champion" else int(champion),
        compared_with=None if champion in (None, version) else int(champion),
        compared_value=compared_value,
        reason=reason,
    )


def _remeasure(measure: Callable[[int], float | None] | None, champion: int) -> float | None:
    if measure is None:
        return None
    try:
        return _float(measure(champion))
    except Exception as exc:  # a champion that cannot be loaded or evaluated is not comparable
        log.warning("could not measure champion v%d on the new evaluation set: %s", champion, exc)
        return None


def find_by_lineage(client, name: str, lineage_key: str):
    """The newest version of ``name`` tagged with ``lineage_key``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}' and tag.`{LINEAGE_TAG}` = '{lineage_key}'")
    except MlflowException:
        return None
    return max(found, key=lambda mv: int(mv.version)) if found else None
