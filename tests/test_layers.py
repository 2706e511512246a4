"""The package's layers, checked from the source: base < storage < cut < jobs < ship < app, imports only
downward (also those inside functions), and no import cycles at all."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tessq"
BASE = {"defaults", "errors", "options", "logs", "redact", "perprocess", "progress", "hashing", "malloc"}
APP = {"cli", "api", "demo", "samples", "entry", "pipeline", "__main__", "__init__"}
ORDER = ["base", "storage", "cut", "jobs", "ship", "app"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER):
        return parts[1]
    name = parts[1] if len(parts) == 2 else "__init__"
    return "base" if name in BASE else "app"


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every tessq module `path` imports, at module level or inside functions (TYPE_CHECKING blocks aside)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != me and not me.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports(p, set(paths)) for m, p in paths.items()}


def test_every_import_goes_to_the_same_layer_or_below() -> None:
    upward = [
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in graph().items()
        for t in targets
        if t != "tessq" and ORDER.index(layer(t)) > ORDER.index(layer(m))
    ]
    assert upward == []


def test_no_module_takes_part_in_an_import_cycle() -> None:
    edges = {m: {t for t in ts if t != "tessq"} for m, ts in graph().items()}
    cyclic = []
    for start in edges:
        stack, seen = list(edges[start]), set()
        while stack:
            node = stack.pop()
            if node == start:
                cyclic.append(start)
                break
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))
    assert cyclic == []


def test_the_layer_check_sees_a_module_of_every_layer() -> None:
    assert {layer(m) for m in graph()} == set(ORDER)
