"""The package's architecture, pinned: calls flow down the layers, and no private name leaks.

Data flows one way through the core (backend notices -> engine reaps -> sink records ->
handles learn); the imports must say the same. A module may import, at run time, only the
modules listed before it in LAYERS (imports under ``if TYPE_CHECKING`` name types only and
may go anywhere). And no module reaches into another's private names: ``child._watch`` is
the Child's own business, as ``engine._lock`` is the engine's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zombiereaper"

#: Every module, lowest first: each may import at run time only those before it.
LAYERS = [
    "zombiereaper._version",
    "zombiereaper._errors",
    "zombiereaper._status",
    "zombiereaper._linux",
    "zombiereaper._fds",
    "zombiereaper._registry",
    "zombiereaper._process",
    "zombiereaper._tree",
    "zombiereaper._sighandler",
    "zombiereaper._watch",
    "zombiereaper._backends.loop",
    "zombiereaper._backends.relay_main",
    "zombiereaper._backends.relay",
    "zombiereaper._backends.sentinel",
    "zombiereaper._backends.sigchld",
    "zombiereaper._backends.pidfd",
    "zombiereaper._backends",
    "zombiereaper._owners",
    "zombiereaper._orphans",
    "zombiereaper._engine",
    "zombiereaper._child",
    "zombiereaper._supervise",
    "zombiereaper._detach",
    "zombiereaper._reaper",
    "zombiereaper._zombies",
    "zombiereaper._demo",
    "zombiereaper._init",
    "zombiereaper._cli",
    "zombiereaper.testing",
    "zombiereaper.pytest_plugin",
    "zombiereaper",
    "zombiereaper.__main__",
]

#: Private names of the standard library that the library relies on, each for a reason.
STDLIB_PRIVATE = {
    "_exit": "os._exit in forked children",
    "_getframe": "sys._getframe, to point warnings at the caller",
    "_waitpid_lock": "Popen's reap lock: reaping under it keeps Popen.wait() exact",
    "_popen": "a multiprocessing Process's Popen, where its exit code is stored",
    "_parent_pid": "which process started a multiprocessing Process",
    "_children": "multiprocessing.process._children: the Processes started here",
    "_forkserver": "multiprocessing's fork server, which waits for its own children",
    "_forkserver_pid": "the fork server's pid",
    "_resource_tracker": "multiprocessing's resource tracker, which it waits for",
    "_pid": "the resource tracker's pid",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, ast.Module]:
    return {_module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(sub) for sub in ast.walk(node))
    return inside


def _runtime_imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports outside ``if TYPE_CHECKING``."""
    is_package = name == "zombiereaper" or name.endswith("._backends")
    package = name if is_package else name.rpartition(".")[0]
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            if node.module:
                found.add(target)
            for alias in node.names:  # from . import _engine: the module itself
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    return (found & modules) - {name}


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, attributes set on anything."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _private_crossings(name: str, tree: ast.Module, modules: set[str]) -> list[str]:
    """Where ``name`` uses a private name that another module defines."""
    own = _defined_private_names(tree)
    module_names = {module.rpartition(".")[2] for module in modules}
    crossings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and alias.name not in module_names:
                    crossings.append(f"line {node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Attribute):
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            holder = node.value
            if isinstance(holder, ast.Name) and holder.id in {"self", "cls"}:
                continue
            if attr in own or attr in STDLIB_PRIVATE:
                continue
            crossings.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            attr = node.args[1].value
            if attr.startswith("_") and not attr.startswith("__") and attr not in STDLIB_PRIVATE:
                crossings.append(f"line {node.lineno}: {ast.unparse(node)}")
    return crossings


SOURCES = _sources()


def test_every_module_has_a_layer() -> None:
    """LAYERS lists every module of the package, once."""
    assert sorted(LAYERS) == sorted(SOURCES)
    assert len(set(LAYERS)) == len(LAYERS)


@pytest.mark.parametrize("name", LAYERS)
def test_a_module_imports_only_lower_layers_at_run_time(name: str) -> None:
    """No module imports a module above it, except for type annotations."""
    modules = set(SOURCES)
    below = set(LAYERS[: LAYERS.index(name)])
    upward = sorted(_runtime_imports(name, SOURCES[name], modules) - below)
    assert not upward, f"{name} imports, at run time, modules above it: {upward}"


@pytest.mark.parametrize("name", LAYERS)
def test_no_private_name_crosses_a_module_boundary(name: str) -> None:
    """A module touches only its own private names (and the stdlib's, each one listed)."""
    crossings = _private_crossings(name, SOURCES[name], set(SOURCES))
    assert not crossings, f"{name} uses other modules' private names: {crossings}"


def test_the_checks_catch_what_they_are_for() -> None:
    """The checkers themselves flag an upward import and a reach into a private name."""
    modules = set(SOURCES)
    tree = ast.parse(
        "from . import _reaper\nfrom ._child import _result\ndef f(child):\n"
        "    return child._watch, getattr(child, '_engine')\n"
    )
    assert _runtime_imports("zombiereaper._engine", tree, modules) == {
        "zombiereaper._reaper",
        "zombiereaper._child",
    }
    assert len(_private_crossings("zombiereaper._engine", tree, modules)) == 3
    typed = ast.parse("import typing\nif typing.TYPE_CHECKING:\n    from . import _reaper\n")
    assert _runtime_imports("zombiereaper._engine", typed, modules) == set()
