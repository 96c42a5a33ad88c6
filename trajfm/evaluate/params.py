"""``EvaluateParams``: the evaluation suite's per-task parameters as a typed model (Pydantic).

One field per task of ``trajfm.evaluate.tasks.TASKS``, each a dict whose keys are that task's
keyword parameters (read from its signature): an unknown task or key is refused with the known
ones named, NaN and infinity are refused. The CLI (``trajfm evaluate --params``) and the
``evaluate-model`` flow parse their ``params`` with it (``trajfm.params.parse``); the other
flows' parameter models are in ``trajfm.params``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Optional

from pydantic import Field, create_model, model_validator

from trajfm.params import ParamsModel


def is_finite_value(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (numbers, lists and dicts of them)."""
    import math

    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(is_finite_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(is_finite_value(v) for v in value.values())
    return True


def task_params_by_task() -> dict[str, tuple[str, ...]]:
    """Each evaluation task's keyword parameters (not the model, windows or seed)."""
    import inspect

    from trajfm.evaluate.tasks import TASKS

    skip = {"model", "ws", "seed", "train_ws"}
    return {name: tuple(p for p in inspect.signature(fn).parameters if p not in skip) for name, fn in TASKS.items()}


def evaluate_params_model() -> type[ParamsModel]:
    task_params = task_params_by_task()

    class _EvaluateBase(ParamsModel):
        what: ClassVar[str] = "evaluate params"

        @model_validator(mode="after")
        def _task_keys(self):
            for task, known in task_params.items():
                given = getattr(self, task) or {}
                unknown = sorted(set(given) - set(known))
                if unknown:
                    raise ValueError(f"unknown key(s) {unknown} for task {task!r}; known: {sorted(known)}")
                bad = sorted(k for k, v in given.items() if not is_finite_value(v))
                if bad:
                    raise ValueError(f"{task}: {bad} must be finite numbers (NaN and infinity are refused)")
            return self

    return create_model(
        "EvaluateParams",
        __base__=_EvaluateBase,
        __doc__='Per-task parameters of the evaluation suite, e.g. {"forecast": {"horizons": [1, 5]}}.',
        __module__=__name__,
        **{
            task: (
                Optional[dict[str, Any]],
                Field(None, description=f"{task} task: {', '.join(keys) or 'no parameters'}"),
            )
            for task, keys in task_params.items()
        },
    )


_LAZY: dict[str, Any] = {}


def __getattr__(name: str):
    """``EvaluateParams`` is built on first use: it reads the evaluation tasks' signatures, and
    importing them (torch) would slow every command that only needs the other models."""
    if name == "EvaluateParams":
        if name not in _LAZY:
            _LAZY[name] = evaluate_params_model()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
