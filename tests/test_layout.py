"""The tree shows the design: no import cycles, and the pure core and protocol never do I/O.

Imports are read from the source with :mod:`ast` (nothing is imported), so a cycle hidden behind a
function-level import is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orbitmesh", "nodes", "broker")
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "aiomqtt", "paho", "docker", "subprocess",
              "amqtt"}
"""What a sans-I/O module must never import."""
SANS_IO = ("orbitmesh.core", "orbitmesh.protocol")
SEAM_MAY_USE = {"orbitmesh.protocol.transport": {"asyncio"}}
"""The transport seam's in-memory fake is asyncio by nature; it still opens no socket."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules (and top-level foreign packages) that ``path`` imports, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from pkg import module`` imports the module itself
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except what sits under ``if TYPE_CHECKING:`` (never imported at run time)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path, name, known):
            # an import of a.b.c depends on the deepest project module it names
            module = target
            while module and module not in known:
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):
                deps.add(module)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(n for n in _modules() if n.startswith(SANS_IO)))
def test_sans_io_modules_do_no_io(name: str) -> None:
    modules = _modules()
    foreign = {i.split(".")[0] for i in _imports(modules[name], name, set(modules))}
    foreign -= SEAM_MAY_USE.get(name, set())
    assert not foreign & IO_MODULES, f"{name} imports {sorted(foreign & IO_MODULES)}"


def test_core_and_protocol_do_not_import_the_shell() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith(SANS_IO):
            shell = {d for d in deps if d.startswith(("orbitmesh.run", "nodes", "broker"))}
            assert not shell, f"{name} imports the I/O shell: {sorted(shell)}"
        if name.startswith("orbitmesh."):
            assert not {d for d in deps if d.startswith("nodes")}, \
                f"{name} imports nodes/: the engine must not depend on the worker runtime"


def test_building_the_cli_parser_imports_no_command_implementation() -> None:
    # Every `orbitmesh` command builds the whole parser first: what the parser imports, contacts
    # and run pay for (cryptography and the netns/scenario stack cost ~0.8 s under load).
    import subprocess
    import sys

    probe = ("import sys; from orbitmesh.run.cli import _parser; _parser(); "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('cryptography', 'pydantic', 'numpy', 'msgpack', 'sgp4') or m in "
             "('orbitmesh.run.launch.netns', 'broker.credentials', 'broker.certs'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == []
