"""Code that builds the shipped assets (guardforge_build) stays off the runtime import path: no guardforge module
imports it when loaded, and the wheel leaves it out (DESIGN.md)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_PACKAGE = "guardforge_build"


def _imports_on_load(tree: ast.Module) -> list[ast.stmt]:
    """The import statements that run when the module is imported: at module level and in class bodies, under
    any if/try/with, but not inside a function, whose imports wait for its call."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]


def test_no_guardforge_module_imports_the_build_package_when_loaded():
    offenders = []
    for path in sorted((ROOT / "guardforge").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports_on_load(tree):
            if any(name == BUILD_PACKAGE or name.startswith(BUILD_PACKAGE + ".") for name in _names(node)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"guardforge imports {BUILD_PACKAGE} at load time: {offenders}"


def test_the_scan_sees_an_import_at_load_time_and_not_one_inside_a_function():
    tree = ast.parse("import os\nif True:\n    from guardforge_build.shapes import train\n"
                     "class A:\n    import guardforge_build\n"
                     "def f():\n    import guardforge_build.guard\n")
    assert sorted(name for node in _imports_on_load(tree) for name in _names(node)) == [
        "guardforge_build", "guardforge_build.shapes", "os"]


def test_the_wheel_takes_guardforge_and_leaves_the_build_package_out():
    from setuptools import find_namespace_packages

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    # What packages.find does for a pyproject.toml: namespace packages count unless `namespaces = false`.
    packages = find_namespace_packages(str(ROOT), include=find["include"])
    assert {"guardforge", "guardforge.guard", "guardforge.train.shapes"} <= set(packages)
    assert not [p for p in packages if p.split(".")[0] != "guardforge"], packages
