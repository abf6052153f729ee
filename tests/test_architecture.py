"""The rules the tree keeps (docs/design.md, section 3), read from the source: the import graph,
who may branch on a method's name, the length of the loop's functions, one list per choice,
and one config resolution per run."""

import ast
import sys
from pathlib import Path

import pytest

from loaders.registry import BACKENDS
from sslight import config as config_mod
from sslight.cli import main
from sslight.config import ConfigError
from sslight.methods import METHODS
from sslight.models import BACKBONES
from sslight.recipes import RECIPES, parse
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sslight", "loaders")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> tuple[set[str], set[str]]:
    """The project modules ``path`` imports: (at its top level, anywhere in it, function bodies
    too). A name imported from a package counts as the submodule where there is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    top, anywhere = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found = {t for t in targets if t in known} - {name}
        anywhere |= found
        if id(node) in top_level:
            top |= found
    return top, anywhere


def parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_closure() -> dict[str, set[str]]:
    """For each module, every project module that using it may run. Using a module may run any of
    its code, so all its imports count; a package that is only imported on the way to one of its
    modules runs its ``__init__``'s top level alone."""
    modules = project_modules()
    imports = {name: imported(path, name, set(modules)) for name, path in modules.items()}
    closure = {}
    for name in modules:
        seen, todo = set(), [(name, True)]
        while todo:
            module, used = todo.pop()
            if (module, used) in seen:
                continue
            seen.add((module, used))
            top, anywhere = imports[module]
            todo += [(dep, True) for dep in (anywhere if used else top)]
            todo += [(parent, False) for parent in parents(module) if parent in modules]
        closure[name] = {module for module, _ in seen} - {name}
    return closure


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_import_graph_is_read():
    """The rules below mean something only if the graph holds the edges that exist."""
    graph = import_closure()
    assert "sslight.eval.knn" in graph["sslight.train.loop"]  # a direct import
    assert "sslight.config" in graph["sslight.methods.dino"]  # through sslight.methods.pair_loss
    assert "loaders.batch" in graph["sslight.train.loop"]  # through `from loaders import ...`
    assert "sslight.train.loop" in graph["sslight.cli"]  # an import inside a function
    assert "sslight.train.loop" not in graph["sslight.config"]  # sslight/__init__ imports it in a function only


@pytest.mark.parametrize("package, forbidden", [
    ("loaders", ("sslight",)),
    ("sslight.methods", ("loaders", "sslight.train", "sslight.eval")),
    ("sslight.eval", ("sslight.train",)),
])
def test_import_rules(package, forbidden):
    broken = sorted(f"{name} -> {dep}" for name, deps in import_closure().items() if under(name, package)
                    for dep in deps if any(under(dep, f) for f in forbidden))
    assert not broken, broken


def method_name_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """Method names used as values to compare with, to match, or as the keys of a literal dict."""
    names = set(METHODS)
    found = []

    def constants(node):
        return [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in names]

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            found += [(c.lineno, c.value) for side in [node.left, *node.comparators] for c in constants(side)]
        elif isinstance(node, ast.MatchValue):
            found += [(c.lineno, c.value) for c in constants(node)]
        elif isinstance(node, ast.Dict):
            found += [(c.lineno, c.value) for key in node.keys if key is not None for c in constants(key)]
    return found


def test_only_methods_and_presets_branch_on_a_method_name():
    allowed = lambda p: p.is_relative_to(ROOT / "sslight" / "methods") or p == ROOT / "sslight" / "recipes.py"  # noqa: E731
    files = [p for d in (*PACKAGES, "benchmarks") for p in sorted((ROOT / d).rglob("*.py")) if not allowed(p)]
    branching = [f"{p.relative_to(ROOT)}:{line} {value!r}" for p in files
                 for line, value in method_name_constants(ast.parse(p.read_text()))]
    assert not branching, branching
    # the check itself sees such a branch
    assert method_name_constants(ast.parse('if cfg.method == "swav": pass')) == [(1, "swav")]


def test_no_function_of_the_training_loop_is_longer_than_60_lines():
    long = [f"{p.relative_to(ROOT)}:{n.name} {n.end_lineno - n.lineno + 1} lines"
            for p in sorted((ROOT / "sslight" / "train").rglob("*.py")) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long


@pytest.mark.parametrize("key, registry, auto", [
    ("model.name", BACKBONES, False), ("method", METHODS, False), ("recipe", RECIPES, False),
    ("data.loader", BACKENDS, True),
])
def test_an_unknown_name_lists_exactly_the_registered_names(key, registry, auto):
    """The registry's names, after 'auto' where the key can be left to the machine."""
    with pytest.raises(ConfigError) as raised:
        parse([f"{key}=nothing-registered"])
    names = ["auto"] * auto + list(registry)
    assert str(raised.value) == f"{key}='nothing-registered' is not one of {', '.join(names)}"


def test_the_config_is_validated_once_per_run(cifar_small, tmp_path, monkeypatch):
    calls = []
    real = config_mod.validate

    def counted(cfg):
        calls.append(cfg)
        return real(cfg)

    # every binding of the function in the project's modules, however it was imported
    for module in [m for n, m in sys.modules.items() if n.split(".")[0] in PACKAGES]:
        if getattr(module, "validate", None) is real:
            monkeypatch.setattr(module, "validate", counted)
    assert main(["train", "--data", str(cifar_small), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch", "8", "eval.every=0", *TINY]) == 0
    assert len(calls) == 1
