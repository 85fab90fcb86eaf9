"""The shape of the code, as docs/design.md states it: no import cycles, no project
import hidden inside a function unless .importlinter says why, and no module over
about 500 lines whose opening lines do not say why it is one piece. The floors
themselves are import-linter's contracts (`lint-imports`), run here too."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "wrapper",
    "sessions_app",
    "jobs_app",
    "monitor_app",
    "fleet",
    "alerts_app",
    "opsconsole",
)
LONG_MODULE_LINES = 500


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def deferred_imports_allowed() -> dict[tuple[str, str], str]:
    """(importer, imported) -> why, from the [deferred-imports] section of .importlinter."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    allowed = {}
    for pair, why in parser.items("deferred-imports"):
        importer, _, imported = pair.partition("->")
        allowed[(importer.strip(), imported.strip())] = why
    return allowed


def imports_inside_functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                found.append((inner.module, inner.lineno))
            elif isinstance(inner, ast.Import):
                found += [(alias.name, inner.lineno) for alias in inner.names]
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def test_no_import_cycles_among_the_projects_modules():
    graph = grimp.build_graph(*PACKAGES)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert cycles == []


def test_no_project_import_inside_a_function_unless_the_contract_file_says_why():
    allowed = deferred_imports_allowed()
    assert all(why.strip() for why in allowed.values())
    hidden = []
    for name, path in project_modules().items():
        for imported, line in imports_inside_functions(path):
            if not any(name == a and imported.startswith(b) for a, b in allowed):
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert hidden == []


def test_a_long_module_says_why_it_is_one_piece():
    unexplained = []
    for path in project_modules().values():
        text = path.read_text()
        if text.count("\n") <= LONG_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if "One piece:" not in docstring:
            unexplained.append(str(path.relative_to(ROOT)))
    assert unexplained == []


def test_below_the_web_nothing_imports_request_machinery():
    web_only = ("django.http", "django.shortcuts", "django.template", "django.views", "django_htmx")
    found = []
    for name, path in project_modules().items():
        if name.split(".")[0] in ("opsconsole", "wrapper") or name.endswith(".admin"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module]
            found += [f"{name}: {m}" for m in names if m and m.startswith(web_only)]
    assert found == []


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
