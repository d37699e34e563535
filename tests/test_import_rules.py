"""The package's rooms and the direction of their imports (docs/design.md, "Rooms and the import rule").

Read with the standard library's `ast` from the source, so every import counts:
at module level, inside functions (the lazy ones), and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reconcile"

ROOMS: dict[str, frozenset[str]] = {
    # room: the rooms it may import (always itself too). "" is the top: __init__, __main__, cli.
    "": frozenset({"commands", "sync", "common"}),
    "commands": frozenset({"engine", "vault", "local", "roster", "sync", "common"}),
    "engine": frozenset({"vault", "local", "roster", "sync", "common"}),
    "sync": frozenset({"vault", "common"}),
    "vault": frozenset({"roster", "common"}),
    "local": frozenset({"roster", "common"}),
    "roster": frozenset({"common"}),
    "common": frozenset(),
}
TOP_MODULES = frozenset({"reconcile", "reconcile.__main__", "reconcile.cli"})

VAULT_CLIENT = frozenset(f"reconcile.vault.{name}" for name in (
    "client", "connection", "tokens", "kv", "policies", "roles", "fastpath", "transport", "values", "pipeline", "retry"))
"""The Vault client; the sync may import these and no other module of reconcile.vault."""

THIRD_PARTY_ONLY_IN: dict[str, frozenset[str]] = {
    # one place talks to each outside library
    "hvac": VAULT_CLIENT - {"reconcile.vault.values", "reconcile.vault.pipeline", "reconcile.vault.retry"},
    "requests": VAULT_CLIENT - {"reconcile.vault.values", "reconcile.vault.pipeline", "reconcile.vault.retry"},
    "urllib3": VAULT_CLIENT - {"reconcile.vault.values", "reconcile.vault.pipeline", "reconcile.vault.retry"},
    "yaml": frozenset({"reconcile.roster.loader"}),
    "jsonschema": frozenset({"reconcile.roster.rules"}),
    "jinja2": frozenset({"reconcile.common.templating"}),
}
SYNC_NEVER = frozenset({"yaml", "jsonschema", "jinja2"})
"""The sync starts on every timer tick: none of these, however indirectly."""

MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in TOP_MODULES else ""


def imports_of(path: Path, known: dict[str, Path] | None = None) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file: reconcile's modules resolved, others by top name."""
    known = modules() if known is None else known
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name if alias.name.startswith("reconcile") else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            base = node.module or ""
            if not base.startswith("reconcile"):
                yield node.lineno, base.split(".")[0]
                continue
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def internal_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for _, target in imports_of(path) if target in known and target != name}
            for name, path in known.items()}


def test_every_module_is_in_a_room() -> None:
    stray = [name for name in modules() if room(name) == "" and name not in TOP_MODULES]
    assert not stray, f"modules outside every room (put them in one, or add the room to ROOMS): {stray}"
    unknown = sorted({room(name) for name in modules()} - set(ROOMS))
    assert not unknown, f"rooms without a rule in ROOMS: {unknown}"


def test_imports_point_only_to_the_rooms_allowed() -> None:
    broken = []
    for name, path in modules().items():
        here = room(name)
        for line, target in imports_of(path):
            if not target.startswith("reconcile"):
                continue
            there = room(target)
            if there != here and there not in ROOMS[here]:
                broken.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} ({here or 'top'}) "
                              f"imports {target} ({there or 'top'})")
            if here == "sync" and there == "vault" and target not in VAULT_CLIENT | {"reconcile.vault"}:
                broken.append(f"{path.relative_to(PACKAGE.parent)}:{line}: the sync imports {target}, "
                              "which is not the Vault client")
    assert not broken, "\n".join(broken)


def test_each_outside_library_has_one_place() -> None:
    broken = []
    for name, path in modules().items():
        for line, target in imports_of(path):
            allowed = THIRD_PARTY_ONLY_IN.get(target)
            if allowed is not None and name not in allowed:
                broken.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} imports {target} "
                              f"(only {', '.join(sorted(allowed))} may)")
    assert not broken, "\n".join(broken)


def test_the_sync_reaches_no_roster_or_template_library_however_indirectly() -> None:
    graph, known = internal_graph(), modules()
    heavy = {name: {target for _, target in imports_of(path)} & SYNC_NEVER for name, path in known.items()}
    for start in [name for name in known if room(name) == "sync"]:
        seen, todo = {start}, [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        reached = {name: libs for name, libs in heavy.items() if name in seen and libs}
        assert not reached, f"{start} reaches {reached}"


def test_no_import_cycles() -> None:
    graph = internal_graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_each_room_says_what_it_owns_and_nothing_else() -> None:
    for name, path in modules().items():
        if path.name != "__init__.py" or name == "reconcile":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstring = ast.get_docstring(tree)
        assert docstring and "May import:" in docstring, f"{path}: a docstring saying what it owns and may import"
        assert len(tree.body) == 1, f"{path}: only the docstring (importing a room imports none of its modules)"


def test_no_module_is_longer_than_the_limit() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
