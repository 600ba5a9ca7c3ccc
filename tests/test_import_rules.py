"""The import graph between ferry's packages, as docs/design.md §1 draws it:

    common  <──  wal
       ^          ^
       └── core ──┘ (only core.compose and core.cli: the composition root)
            ^
         cluster    (NATS: reached from the composition root only)

common imports neither core nor wal; wal never imports core or cluster; core reaches wal
and cluster only from its composition root; cluster never imports wal. No package imports another inside a function to hide a cycle
(core.cli's lazy imports keep `ferry token` and `ferry --help` quick; it is the root).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "core", "wal", "cluster")
COMPOSITION_ROOT = {"core/compose.py", "core/cli.py", "core/replay_tool.py"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[str, bool, int]]:
    """(top-level package imported, inside a function?, line) for every import."""
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(
                    (alias.name.split(".")[0], in_function, child.lineno) for alias in child.names
                )
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module.split(".")[0], in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _violations(package: str) -> list[str]:
    bad: list[str] = []
    for path in _modules(package):
        rel = path.relative_to(ROOT).as_posix()
        for target, in_function, line in _imports(ast.parse(path.read_text())):
            if target not in (*PACKAGES, "bench") or target == package:
                continue
            where = f"{rel}:{line} imports {target}"
            if (
                package == "common"
                or target == "bench"
                or (package == "wal" and target in ("core", "cluster"))
                or (package == "cluster" and target == "wal")
            ):
                bad.append(where)
            elif package == "core" and target in ("wal", "cluster") and rel not in COMPOSITION_ROOT:
                bad.append(where + " outside the composition root")
            elif in_function and rel not in COMPOSITION_ROOT:
                bad.append(where + " inside a function")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package: str) -> None:
    assert _violations(package) == []


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The checker itself: a wal module importing core, at any depth, is caught."""
    tree = ast.parse("def f():\n    from core.config import Config\n")
    assert _imports(tree) == [("core", True, 2)]
