"""The house's layering, read from the source (every import, module-level or inside a function).

Commands (cli, convert, service, training) sit on top; ingest, outputs, report, dicom, the
queue and core below them; the shared helpers (errors, files, logsafe, metrics, memory, ...)
at the bottom. An arrow that runs back up, or two modules that import each other, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ecg_dicom"
COMMANDS = {"cli", "__main__", "convert", "service", "training"}
# core is pure numpy/torch: it may use only these
CORE_MAY_USE = {"core", "errors", "extras", "files", "leads"}  # extras: which pip extra brings torch


def _module_name(path: Path) -> str:
    parts = ("ecg_dicom", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the ecg_dicom modules it imports (a ``from pkg import submodule`` counts as the submodule)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("ecg_dicom"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ecg_dicom"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ecg_dicom"


def test_the_graph_reader_sees_the_imports_it_must_judge() -> None:
    graph = import_graph()
    assert "ecg_dicom.metrics" in graph["ecg_dicom.ingest.scp"]
    assert "ecg_dicom.convert.batch" in graph["ecg_dicom.convert.ray_engine"]
    assert "ecg_dicom.convert.ray_engine" in graph["ecg_dicom.convert"]  # a lazy import counts


def test_no_module_below_the_commands_imports_a_command() -> None:
    upward = sorted(f"{module} -> {dep}" for module, deps in import_graph().items() for dep in deps
                    if _package(module) not in COMMANDS and _package(dep) in COMMANDS)
    assert upward == []


def test_core_uses_nothing_but_numpy_torch_and_the_bottom_helpers() -> None:
    outside = sorted(f"{module} -> {dep}" for module, deps in import_graph().items() for dep in deps
                     if _package(module) == "core" and _package(dep) not in CORE_MAY_USE)
    assert outside == []


def test_no_two_modules_import_each_other_even_through_others() -> None:
    graph = import_graph()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    circles = sorted(f"{module} <-> {dep}" for module, deps in graph.items() for dep in deps
                     if module in reachable(dep))
    assert circles == []
