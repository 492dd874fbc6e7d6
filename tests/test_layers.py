"""Imports run one way: no cycles between modules, and no module imports from a layer above its own.

Every module under `adaptune/` is parsed with `ast` (nothing is imported): imports at any nesting level (a function
body counts as much as the top of the file), relative and absolute, with `from . import x` resolved to the submodule
`x` when there is one. `__import__("adaptune...")` and `importlib.import_module("adaptune...")` with a constant name
count as imports too, so a lazy import cannot hide an arrow. The layers are the ones drawn in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "adaptune"

# Lowest first. An import may point down, or sideways within a layer; the longest matching prefix decides.
LAYERS: dict[str, int] = {
    "adaptune/config.py": 1, "adaptune/registry.py": 1, "adaptune/version.py": 1, "adaptune/utils/": 1,
    "adaptune/data/": 2,
    "adaptune/models/": 3, "adaptune/adapters.py": 3, "adaptune/card.py": 3,
    "adaptune/budget/": 4,
    "adaptune/methods/": 5,
    "adaptune/tasks/": 6, "adaptune/train/": 6, "adaptune/rl/": 6,
    "adaptune/eval/": 7, "adaptune/default/": 7, "adaptune/pretrain/": 7, "adaptune/demo.py": 7, "adaptune/share.py": 7,
    "adaptune/cli.py": 8, "adaptune/__main__.py": 8,
    "adaptune/__init__.py": 8,  # the package face: only the command line may import it
}
# Sideways arrows that are still forbidden: train builds on tasks, rl on both, never the other way round.
FORBIDDEN: list[tuple[str, str]] = [("adaptune/train/", "adaptune/rl/"), ("adaptune/tasks/", "adaptune/rl/"),
                                    ("adaptune/tasks/", "adaptune/train/")]
EXEMPT = {"adaptune/__init__.py"}  # the package face imports everything on purpose (checked as a target only)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under adaptune/."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest existing module that `target` names (a.b.c -> a.b when c is an attribute of a.b)."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def _constant_import_names(node: ast.Call) -> list[str]:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name not in ("__import__", "import_module") or not node.args:
        return []
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith(PACKAGE):
        return [arg.value]
    return []


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` bodies (imports for annotations only; they never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return inside


def imports_of(name: str, modules: dict[str, Path], runtime_only: bool = False) -> set[str]:
    """The adaptune modules that module `name` imports (anywhere in its body; with `runtime_only`, leaving out the
    imports under `if TYPE_CHECKING:`, which cannot make an import cycle but still make a dependency)."""
    tree = ast.parse(modules[name].read_text(), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    skip = _type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import x` imports the submodule pkg.x when it exists, else the attribute x of pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Call):
            targets = _constant_import_names(node)
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                continue
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                found.add(resolved)
    return found


def import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, modules, runtime_only) for name in modules}


def _rel(name: str, modules: dict[str, Path]) -> str:
    return modules[name].relative_to(ROOT).as_posix()


def layer_of(path: str) -> int:
    matches = [prefix for prefix in LAYERS if path == prefix or (prefix.endswith("/") and path.startswith(prefix))]
    assert matches, f"{path} is in no layer: add it to LAYERS in tests/test_layers.py (and docs/architecture.md)"
    return LAYERS[max(matches, key=len)]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a -> b -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan, iterative over the successors to keep the recursion shallow
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, successors = work[-1]
            advanced = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(component, graph) for component in components]


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    members = set(cycle)
    size = len(_component_of(cycle[0], graph))
    more = f" (one of {size} modules that all reach each other)" if size > len(members) else ""
    return "  " + " -> ".join(cycle) + more


def _component_of(start: str, graph: dict[str, set[str]]) -> set[str]:
    def reach(src: str, edges: dict[str, set[str]]) -> set[str]:
        seen, todo = {src}, [src]
        while todo:
            for w in edges[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    reverse: dict[str, set[str]] = {v: set() for v in graph}
    for v, ws in graph.items():
        for w in ws:
            reverse[w].add(v)
    return reach(start, graph) & reach(start, reverse)


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, staying inside the component."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for w in sorted(graph[node] & members):
                if w == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if w not in parents:
                    parents[w] = node
                    nxt.append(w)
        frontier = nxt
    return component


def test_graph_sees_relative_lazy_and_package_imports():
    """Sanity checks of the parser itself on modules whose imports are known."""
    graph = import_graph()
    assert "adaptune.models" in graph["adaptune.tasks.base"]  # from ..models import LoadedModel
    assert "adaptune.methods.flex_projector" in graph["adaptune.methods"]  # from . import flex_projector
    assert "adaptune.train.runner" in graph["adaptune.eval"]  # an import inside a function
    assert "adaptune.registry" in graph["adaptune.models.families"]
    tree = ast.parse("import typing\nif typing.TYPE_CHECKING:\n    import adaptune.tasks\nelse:\n    x = 1\n")
    assert {type(n) for n in ast.walk(tree) if id(n) in _type_checking_nodes(tree)} >= {ast.Import}


def test_no_import_cycles():
    graph = import_graph(runtime_only=True)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between modules:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_imports_point_down_the_layers():
    modules = module_files()
    graph, runtime = import_graph(), import_graph(runtime_only=True)
    bad = []
    for name, targets in sorted(graph.items()):
        src = _rel(name, modules)
        if src in EXEMPT:
            continue
        for target in sorted(targets):
            dst = _rel(target, modules)
            if layer_of(dst) > layer_of(src):
                hint = " (the package face: import the module that defines the name)" if dst in EXEMPT else ""
                if target not in runtime[name]:
                    hint += " (under TYPE_CHECKING: still a dependency on the layer above)"
                bad.append(f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)}){hint}")
            elif any(src.startswith(a) and dst.startswith(b) for a, b in FORBIDDEN):
                bad.append(f"{src} imports {dst} (forbidden sideways arrow)")
    assert not bad, "imports that point up the layers:\n" + "\n".join("  " + b for b in bad)
