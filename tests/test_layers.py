"""The layers of agogd, and the directions imports may take between them.

Each package may import only the packages listed for it (and itself). The
list is the architecture: a newcomer reads it (and the README's layout) to
know where code goes and what it may use. Every import counts, including
those under ``TYPE_CHECKING`` and inside functions: a coupling is a coupling.
Modules must not import each other in a circle, inside a package either.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE = "orchestrator.core"
RUNTIME = "orchestrator.runtime"
INBOUND = "orchestrator.inbound"
EMBEDDINGS = "orchestrator.embeddings"
MEMORY = "orchestrator.memory"
ENGINE = "orchestrator.engine"
EMBEDDED = "orchestrator.embedded"
API = "orchestrator.api"
CTL = "orchestrator.ctl"
BACKUP = "orchestrator.backup"
ADAPTERS = "workers.adapters"
BRANCHES = "workers.branches"
INFRA = "workers.infra"
RELEASE = "workers.release"
RUNNER = "workers.runner"
TOP = "orchestrator"  # cli, dev, wiring (the composition root), __main__
WORKERS = "workers"  # the package itself (its docstring)

# Lowest first. A package may import what is listed for it, nothing above.
ALLOWED: dict[str, set[str]] = {
    CORE: set(),
    WORKERS: set(),
    RUNTIME: {CORE},
    INBOUND: {CORE, RUNTIME},
    EMBEDDINGS: {CORE, RUNTIME},
    EMBEDDED: {CORE, RUNTIME},
    MEMORY: {CORE, RUNTIME, INBOUND, EMBEDDINGS},
    ENGINE: {CORE, RUNTIME, INBOUND, MEMORY},
    BACKUP: {CORE, RUNTIME, EMBEDDED},
    ADAPTERS: {CORE, RUNTIME},
    BRANCHES: {CORE, RUNTIME, ADAPTERS},
    INFRA: {CORE, RUNTIME, INBOUND, ENGINE, ADAPTERS},
    RELEASE: {CORE, RUNTIME, INBOUND, ENGINE, ADAPTERS, BRANCHES, INFRA},
    RUNNER: {CORE, RUNTIME, INBOUND, ENGINE, ADAPTERS, BRANCHES, RELEASE},
    API: {CORE, RUNTIME, INBOUND, EMBEDDINGS, MEMORY, ENGINE, BRANCHES, INFRA},
    CTL: {CORE, INFRA, BACKUP},
    TOP: {
        CORE, RUNTIME, INBOUND, EMBEDDINGS, EMBEDDED, MEMORY, ENGINE,
        ADAPTERS, BRANCHES, INFRA, RELEASE, RUNNER, API, CTL, BACKUP,
    },
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The layer a module belongs to: the longest listed package it is in."""
    best = ""
    for package in ALLOWED:
        if (module == package or module.startswith(package + ".")) and len(package) > len(best):
            best = package
    assert best, f"{module} is in no layer: add its package to ALLOWED"
    return best


def modules() -> dict[str, Path]:
    found = {}
    for top in ("orchestrator", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


def parse(path: Path) -> ast.Module:
    """The file's tree. CPython 3.11 now and then raises a spurious
    ``SystemError: AST constructor recursion depth mismatch`` deep in a long
    test session (python/cpython#106905); parsing the same text again is
    the workaround, and a real syntax error still fails."""
    source = path.read_text()
    try:
        return ast.parse(source)
    except SystemError:
        return ast.parse(source)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The agogd modules a file imports (``from pkg import mod`` names mod)."""
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in ("orchestrator", "workers"))
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def test_the_package_only_imports_down_its_layers() -> None:
    upward = []
    for module, deps in sorted(graph().items()):
        layer = package_of(module)
        for dep in sorted(deps):
            target = package_of(dep)
            if target != layer and target not in ALLOWED[layer] and not _is_parent(dep, module):
                upward.append(f"{module} ({layer}) imports {dep} ({target})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def _is_parent(dep: str, module: str) -> bool:
    """``orchestrator.memory.x`` importing the bare package ``orchestrator``
    (its version) is not a layer crossing."""
    return module.startswith(dep + ".") and dep in ("orchestrator", "workers")


def test_no_module_imports_itself_through_a_circle() -> None:
    deps = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(deps.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(deps):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_every_package_is_in_a_layer_and_bench_never_imports_tests() -> None:
    for module in modules():
        package_of(module)  # raises for a module outside every layer
    offenders = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "tests" for a in node.names
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"bench/ imports tests/: {offenders}"


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The rules above can fail: an engine module importing the API is found."""
    fake = {"orchestrator.engine.x": {"orchestrator.api.y"}, "orchestrator.api.y": set()}
    layer, target = package_of("orchestrator.engine.x"), package_of("orchestrator.api.y")
    assert target not in ALLOWED[layer]
    assert fake["orchestrator.engine.x"]
    source = tmp_path / "m.py"
    source.write_text("from orchestrator.api import routes\nimport workers.infra.report\n")
    assert imports_of(source, {"orchestrator.api.routes", "workers.infra.report"}) == {
        "orchestrator.api.routes",
        "workers.infra.report",
    }
