"""The package's import graph: no cycles, and the layers of DESIGN.md ("Layers of the code").

Every module of `thinklens` is parsed with `ast` (nothing is imported). Each layer may import only
the layers before it in `LAYERS` (and itself); module-level and function-level imports both count.
Cycles are looked for among module-level imports only: a function-level import runs when the
function is called, not while its module loads, so it cannot leave a module half-initialised.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import thinklens

PACKAGE = Path(thinklens.__file__).parent
# The top-level helper modules first (importable by all), then the subpackages, foundation to top.
LAYERS = ("errors", "files", "progress", "figures", "stats", "placement", "models", "data", "distill", "activations", "sae", "features",
          "steering", "analysis", "distributed", "pipeline", "release", "server", "cli")
HEAVY = ("torch", "transformers", "numpy", "matplotlib", "pydantic", "safetensors", "rich")


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. thinklens.steering.sweep
    imported: str  # the most specific thinklens module (or outside top-level name) it names
    path: Path
    line: int
    module_level: bool  # runs when the importer is imported (not inside a function)

    def where(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The layer of a thinklens module; None for the root package. `cli_*` modules (and `__main__`, which
    runs it) are the CLI's; other top-level modules are `pipeline`."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1].startswith("cli_") or parts[1] == "__main__":
        return "cli"
    return parts[1] if parts[1] in LAYERS else "pipeline"


def package_modules() -> dict[str, list[Path]]:
    """Module name → its files, packages included even without an `__init__.py` (namespace packages).

    A `pipeline.py` beside a `pipeline/` package (while one moves into the other) share a name.
    """
    modules: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for directory in path.relative_to(PACKAGE).parents:
            modules.setdefault(module_name(PACKAGE / directory / "__init__.py"), [])
        modules.setdefault(module_name(path), []).append(path)
    return modules


def imports_of(path: Path, modules: set[str]) -> list[Import]:
    """Every import statement of one file, resolved to the module it names."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found: list[Import] = []

    def resolve(name: str) -> str:
        # `from thinklens.steering import sweep` names the submodule; `from x.y import f` names x.y.
        return name if name in modules or not name.startswith("thinklens") else _known_prefix(name, modules)

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in child.names]
            else:  # a class body runs at import time; a function body only when called
                visit(child, module_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))
                continue
            for name in dict.fromkeys(names):
                found.append(Import(importer, resolve(name), path, child.lineno, module_level))

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def _known_prefix(name: str, modules: set[str]) -> str:
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def all_imports() -> list[Import]:
    modules = package_modules()
    return [found for paths in modules.values() for path in paths for found in imports_of(path, set(modules))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, …, a], or None. Depth-first, in sorted order (deterministic)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return path[path.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layering_violations(imports: list[Import]) -> list[str]:
    """One line per import of a thinklens layer that is not before the importer's own layer."""
    lines = []
    for found in imports:
        mine, theirs = layer(found.importer), layer(found.imported)
        if not found.imported.startswith("thinklens") or theirs is None or mine is None:
            continue  # outside packages, and the root package (which imports nothing, tested below)
        if LAYERS.index(theirs) > LAYERS.index(mine):
            lines.append(f"{found.where()}: {found.importer} imports {found.imported} "
                         f"({theirs} comes after {mine} in the layer order)")
    return lines


def test_cycle_finder_worked_example():
    # a → b → c → a is a cycle; d → a only leads into it; e → e is a self-import.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"e": {"e"}}) == ["e", "e"]
    # A diamond (a → b → d, a → c → d) joins twice but never returns: no cycle.
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}}) is None


def test_layering_check_worked_example():
    # steering importing analysis goes up the order, and so does models importing the CLI inside a
    # function; analysis importing steering, and models importing a top-level helper, go down it.
    up = Import("thinklens.steering.plots", "thinklens.analysis.figures", PACKAGE / "steering/plots.py", 7, True)
    up_late = Import("thinklens.models.loader", "thinklens.cli", PACKAGE / "models/loader.py", 40, False)
    down = Import("thinklens.analysis.prefix", "thinklens.steering.sweep", PACKAGE / "analysis/prefix.py", 3, True)
    helper = Import("thinklens.models.loader", "thinklens.figures", PACKAGE / "models/loader.py", 5, True)
    assert layering_violations([up, up_late, down, helper]) == [
        "thinklens/steering/plots.py:7: thinklens.steering.plots imports thinklens.analysis.figures "
        "(analysis comes after steering in the layer order)",
        "thinklens/models/loader.py:40: thinklens.models.loader imports thinklens.cli "
        "(cli comes after models in the layer order)"]
    # Other top-level modules (report, rundir) belong to the pipeline layer.
    assert layer("thinklens.rundir") == "pipeline" and layer("thinklens.pipeline.stages") == "pipeline"
    assert layer("thinklens.cli_stages") == "cli"


def test_no_import_cycle_among_module_level_imports():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for found in all_imports():
        if found.module_level and found.imported.startswith("thinklens") and found.imported != found.importer:
            graph.setdefault(found.importer, set()).add(found.imported)
            where.setdefault((found.importer, found.imported), found.where())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle) + "\n" + "\n".join(
        f"{where[edge]}: {edge[0]} imports {edge[1]}" for edge in zip(cycle, cycle[1:], strict=False))


def test_each_layer_imports_only_the_layers_before_it():
    violations = layering_violations(all_imports())
    assert not violations, "imports against the layer order of DESIGN.md:\n" + "\n".join(violations)


def test_importing_the_package_loads_nothing_heavy():
    imports = imports_of(PACKAGE / "__init__.py", set(package_modules()))
    outside_stdlib = [f"{i.where()}: {i.imported}" for i in imports if i.imported.split(".")[0] not in sys.stdlib_module_names]
    assert not outside_stdlib, "thinklens/__init__.py imports more than the standard library: " + ", ".join(outside_stdlib)
    # And at run time, in a fresh interpreter: none of the heavy dependencies is loaded.
    probe = f"import sys, thinklens; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"import thinklens loads {loaded}"
