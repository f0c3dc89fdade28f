"""The import graph of gan_core, read with ast (nothing is imported), and any cycle in it.

    .venv/bin/python drills/import_graph.py [--all]   # --all: also modules without gan_core imports

Prints `module -> imported gan_core modules`, each edge marked by where the import sits: plain at
module level, `(lazy)` inside a function (runs on first call: a lazy import that closes a loop is
still a cycle, only deferred), `(type)` under `if TYPE_CHECKING:` (never runs). Then the cycles among
the runtime edges (module level + lazy); exits 1 if there is one. tests/test_structure.py asserts the
same with `cycles(graph())`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gan_core"
TOP, LAZY, TYPE = "top", "lazy", "type"


def modules(root: Path = ROOT / PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (packages by their __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    """The package modules an import statement loads: `from a.b import c` is a.b.c when c is a
    submodule, else a.b."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level or not node.module:
        return []  # relative imports: gan_core uses none; the test of no-cycles would miss them
    else:
        sub = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        names = sub if len(sub) == len(node.names) else [node.module, *sub]
    return [n for n in names if n.split(".")[0] == PACKAGE]


def edges_of(path: Path, known: dict[str, Path]) -> dict[str, str]:
    """Imported module -> TOP | LAZY | TYPE (the most eager kind when a module is imported twice)."""
    out: dict[str, str] = {}
    rank = {TOP: 0, LAZY: 1, TYPE: 2}

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            k = kind
            if isinstance(child, ast.If) and _is_type_checking(child):
                k = TYPE
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == TOP:
                k = LAZY
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in _targets(child, known):
                    if rank[k] < rank.get(out.get(name, TYPE), 3) or name not in out:
                        out[name] = k
            visit(child, k)

    visit(ast.parse(path.read_text(), str(path)), TOP)
    return out


def graph(root: Path = ROOT / PACKAGE) -> dict[str, dict[str, str]]:
    known = modules(root)
    return {name: edges_of(path, known) for name, path in known.items()}


def cycles(g: dict[str, dict[str, str]], kinds: tuple[str, ...] = (TOP, LAZY)) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), over the edges of
    the given kinds: each is a set of modules that import one another round a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, k in g.get(v, {}).items():
            if k not in kinds or w not in g:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, {}):
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return sorted(found)


def render(g: dict[str, dict[str, str]], everything: bool = False) -> str:
    lines = []
    for mod in sorted(g):
        deps = g[mod]
        if not deps and not everything:
            continue
        shown = [d if k == TOP else f"{d} ({k})" for d, k in sorted(deps.items())]
        lines.append(f"{mod} -> {', '.join(shown) or '-'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    g = graph()
    print(render(g, "--all" in argv))
    found = cycles(g)
    edges = sum(len(d) for d in g.values())
    print(f"\n{len(g)} modules, {edges} gan_core import edges")
    typed = [c for c in cycles(g, (TOP, LAZY, TYPE)) if c not in found]
    for comp in typed:  # annotations only (Family.check takes a PipelineConfig): nothing runs round them
        print("type-only loop (never runs): " + " <-> ".join(comp))
    if not found:
        print("no import cycle")
        return 0
    for comp in found:
        print("CYCLE: " + " <-> ".join(comp))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
