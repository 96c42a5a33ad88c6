"""The house rules of issue 17, checked on the code itself: short functions, modules of a readable
size, no private name used outside its module, a README that stays a front door, on every module
of ``trajfm/``, ``tasks/`` and ``flows/``. (``ruff check``, ``ruff format --check`` and
``lint-imports`` run first in ``make test``, and alone in ``make lint``.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ("trajfm", "tasks", "flows")  # the bars of issue 17 apply here (tests and benchmarks aside)
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600
MAX_README_LINES = 250


def _modules(roots=CODE):
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            yield path


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def long_functions(paths, root: Path = REPO) -> list[str]:
    """``path:line name (N lines)`` for every function longer than the bar (decorators aside)."""
    out = []
    for path in paths:
        for fn in _functions(ast.parse(path.read_text(), str(path))):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(root)}:{fn.lineno} {fn.name} ({n} lines)")
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(paths, root: Path = REPO) -> list[str]:
    """Private names taken from another module: ``from m import _x`` and ``module._x`` where
    ``module`` is a name bound by an import (of ours or of a library)."""
    out = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        imported_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported_modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if _is_private(a.name):
                        out.append(f"{path.relative_to(root)}:{node.lineno} from {node.module} import {a.name}")
                    else:
                        imported_modules.add(a.asname or a.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules
            ):
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.value.id}.{node.attr}")
    return out


def test_no_function_longer_than_80_lines():
    assert long_functions(_modules()) == []


def test_no_module_longer_than_600_lines():
    long = [
        f"{p.relative_to(REPO)} ({n} lines)"
        for p in _modules(CODE + ("benchmarks",))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def test_no_private_name_used_outside_its_module():
    assert private_uses(_modules(CODE + ("benchmarks",))) == []


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES
    assert "make demo" in "\n".join(lines[:15]) and "make test" in "\n".join(lines[:15])


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n" + "    x = 1\n" * 80 + "    return x\n", 1),
        ("def f():\n" + "    x = 1\n" * 78 + "    return x\n", 0),
    ],
)
def test_the_function_check_counts_lines(tmp_path, source, expected):
    (tmp_path / "m.py").write_text(source)
    assert len(long_functions([tmp_path / "m.py"], root=tmp_path)) == expected


def test_the_private_check_finds_both_forms(tmp_path):
    (tmp_path / "m.py").write_text(
        "from a.b import _hidden, public\nimport os\nfrom x import mod\n"
        "def f(self):\n    return os._exit, mod._state, self._mine, public\n"
    )
    found = private_uses([tmp_path / "m.py"], root=tmp_path)
    assert found == ["m.py:1 from a.b import _hidden", "m.py:5 os._exit", "m.py:5 mod._state"]
