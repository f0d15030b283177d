"""The package's structure: an acyclic module import graph, no private names across units.

The graph is built statically with ``ast`` over every ``fairvlm_lightning/**/*.py``, counting
top-level AND function-local imports (an import hidden in a function still makes a cycle, it
only defers it to run time) and ``if TYPE_CHECKING:`` imports. An edge goes from the importing
module to the module it names (``from pkg import sub`` names ``pkg.sub`` when that is a module).
The implicit import of a parent package's ``__init__`` is not an edge (every submodule import
has it; it is not a dependency the code chose).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = "fairvlm_lightning"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources(root: Path) -> dict[str, tuple[Path, ast.Module]]:
    return {
        _module_name(p, root): (p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p)))
        for p in sorted(root.rglob("*.py"))
    }


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute module name of ``from <node.module> import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@functools.cache  # the package is parsed once per session
def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """``(edges, private)``: module -> imported package modules, and the underscore imports.

    ``private`` lists ``(importer, source module, name)`` for every ``from M import _name``
    whose ``M`` is another module of the package.
    """
    sources = _sources(root)
    modules = set(sources)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[tuple[str, str, str]] = []
    prefix = root.name
    for module, (path, tree) in sources.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):  # ast.walk: function bodies and TYPE_CHECKING blocks too
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == prefix and alias.name in modules:
                        edges[module].add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_from(module, is_package, node)
                if source.split(".")[0] != prefix:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    target = sub if sub in modules else source
                    if target in modules and target != module:
                        edges[module].add(target)
                    if alias.name.startswith("_") and target == source and source != module:
                        private.append((module, source, alias.name))
    return edges, private


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as ``[a, b, ..., a]``, or ``None`` (iterative DFS)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(edges):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def _unit(module: str) -> str:
    """The unit that may share private helpers: a first-level subpackage, else the module."""
    parts = module.split(".")
    if len(parts) >= 2 and (ROOT / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def test_find_cycle_reference() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_graph_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text(
        "def f():\n    from fairvlm_lightning.b import _g\n    return _g\n"
    )
    (pkg / "b.py").write_text("from fairvlm_lightning.sub import a\n\ndef _g():\n    pass\n")
    edges, private = import_graph(pkg)
    assert edges[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.a"}
    assert edges[f"{PACKAGE}.sub.a"] == {f"{PACKAGE}.b"}
    assert edges[f"{PACKAGE}.b"] == {f"{PACKAGE}.sub.a"}
    assert find_cycle(edges) == [f"{PACKAGE}.b", f"{PACKAGE}.sub.a", f"{PACKAGE}.b"]
    assert private == [(f"{PACKAGE}.sub.a", f"{PACKAGE}.b", "_g")]


def test_package_import_graph_has_no_cycle() -> None:
    edges, _ = import_graph()
    assert len(edges) > 25  # the walk found the package
    assert f"{PACKAGE}.data.transforms" in edges[f"{PACKAGE}.app.synthetic.tiny_model"]
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("schema", "data"),
        ("schema", "metrics"),
        ("metrics", "module"),
        ("sinkhorn", "module"),
        ("mining", "callbacks"),
        ("callbacks", "app"),
        ("module", "app"),
        ("module", "data"),
        ("callbacks", "data"),
        ("data", "app"),
        ("module", "callbacks"),  # DBPM's weights arrive through a registered provider
        ("encoders", "module"),
        ("zeroshot", "module"),
        ("losses", "encoders"),
    ],
)
def test_dependencies_point_one_way(low: str, high: str) -> None:
    """Nothing in a lower layer imports, even indirectly, a higher one."""
    edges, _ = import_graph()
    start = [m for m in edges if m == f"{PACKAGE}.{low}" or m.startswith(f"{PACKAGE}.{low}.")]
    seen, todo = set(start), list(start)
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    bad = sorted(m for m in seen if m == f"{PACKAGE}.{high}" or m.startswith(f"{PACKAGE}.{high}."))
    assert not bad, f"{low} reaches {bad}"


def _reached(edges: dict[str, set[str]], start: list[str]) -> set[str]:
    """Every module reachable from ``start`` (``start`` included)."""
    seen, todo = set(start), list(start)
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _library_units() -> list[str]:
    """The library's top-level modules and subpackages: everything but ``app``."""
    names = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    return sorted(names - {"app"})


def test_library_units_are_found() -> None:
    units = _library_units()
    assert {"data", "metrics", "module", "configs", "schema", "export"} <= set(units)
    assert "app" not in units


@pytest.mark.parametrize("unit", _library_units())
def test_library_never_reaches_the_application(unit: str) -> None:
    """No library module imports, even indirectly or inside a function, ``fairvlm_lightning.app``.

    The package's ``__init__`` is part of the library too (its lazy exports name library
    modules only).
    """
    edges, _ = import_graph()
    app = f"{PACKAGE}.app"
    assert app in edges and f"{app}.synthetic.fairvlmed" in edges  # the application is there
    start = [m for m in edges if m == f"{PACKAGE}.{unit}" or m.startswith(f"{PACKAGE}.{unit}.")]
    assert start, unit
    bad = sorted(m for m in _reached(edges, start) if m == app or m.startswith(f"{app}."))
    assert not bad, f"{unit} reaches {bad}"


def test_top_level_exports_name_library_modules_only() -> None:
    import fairvlm_lightning

    exports = vars(fairvlm_lightning)["_EXPORTS"]
    assert {"ImageTextDataModule", "EncoderSpec", "ZeroShotPrompts"} <= set(exports)
    assert not {"write_synthetic_fairvlmed", "ensure_synthetic_assets"} & set(exports)
    assert not [m for m in exports.values() if m.startswith(f"{PACKAGE}.app")]
    assert set(fairvlm_lightning.__all__) == {"__version__", *exports}
    for name in exports:  # each lazy export resolves
        assert getattr(fairvlm_lightning, name) is not None, name


def test_schema_imports_nothing() -> None:
    tree = ast.parse((ROOT / "schema.py").read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports == []


def test_no_private_name_imported_across_units() -> None:
    """``from M import _name`` only inside one subpackage (e.g. ``metrics``'s own helpers).

    A first-level subpackage (``metrics``, ``data``, ``configs``) is one unit whose modules may
    share underscore helpers (torchmetrics' ``_x_update``/``_x_compute`` convention); a
    top-level module is its own unit.
    """
    _, private = import_graph()
    crossing = [(m, s, n) for m, s, n in private if _unit(m) != _unit(s)]
    assert crossing == []


def _public_names(tree: ast.Module) -> set[str] | None:
    """The module's ``__all__`` (a literal list or tuple of strings), or ``None`` without one."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            if isinstance(value, (ast.List, ast.Tuple)):
                return {e.value for e in value.elts if isinstance(e, ast.Constant)}
    return None


def test_names_imported_across_modules_are_declared_public() -> None:
    """``from M import name`` between two modules of the package: ``name`` is in ``M.__all__``.

    A module's public surface is its ``__all__``; anything else it defines stays inside it.
    Underscore names shared inside one subpackage (torchmetrics' ``_x_update``/``_x_compute``
    convention) are checked by :func:`test_no_private_name_imported_across_units`.
    """
    sources = _sources(ROOT)
    undeclared = []
    for module, (path, tree) in sources.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve_from(module, is_package, node)
            if source not in sources or source == module:
                continue
            public = _public_names(sources[source][1])
            for alias in node.names:
                if f"{source}.{alias.name}" in sources or alias.name.startswith("_"):
                    continue  # a submodule, or a private helper of the unit
                if source.rsplit(".", 1)[-1].startswith("_") and _unit(source) == _unit(module):
                    continue  # a private module shared inside its own unit
                if public is None or alias.name not in public:
                    undeclared.append(f"{module}: {source}.{alias.name}")
    assert undeclared == []
