"""calmrl's modules import each other without a cycle, counting the imports inside functions too (a lazy import
hides a cycle at start-up but still ties the modules together), and the schemas import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def module_names() -> dict[str, Path]:
    names = {}
    for path in (SRC / "calmrl").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The calmrl modules `path` (module `name`) imports anywhere in its body. `from pkg import x` counts as
    importing pkg.x where that is a module, else pkg."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # calmrl.x.y.attr -> calmrl.x.y
                target = target.rpartition(".")[0]
            if target.startswith("calmrl") and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imported_modules(path, name, known) for name, path in known.items()}


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    report = [f"{' <-> '.join(c)}: " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found]
    assert not found, "import cycles:\n" + "\n".join(report)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_lazy_import_counts(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from calmrl.trainer import Trainer\n")
    assert imported_modules(tmp_path / "m.py", "calmrl.m", module_names()) == {"calmrl.trainer"}


SCHEMA_MODULES = ["calmrl.errors", "calmrl.config"] + [
    f"calmrl.schemas.{p.stem}" for p in sorted((SRC / "calmrl" / "schemas").glob("*.py")) if p.stem != "__init__"
]


@pytest.mark.parametrize("module", SCHEMA_MODULES)
def test_schemas_import_no_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"importing {module} imports torch"
