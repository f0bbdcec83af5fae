"""The shape of the house (ARCHITECTURE.md), checked on the AST of every module, lazy imports included:
arrows point one way, test helpers and scripts stay outside the package, functions stay short."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zr_align"
OUTSIDE = ("benchmarks", "tests", "train_t2i", "pipelines", "examples")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path = ROOT) -> list[str]:
    """Every module `path` imports, anywhere in the file, as absolute dotted names (`from . import x` gives
    `package.x`, so that a sub-module import counts as one)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names += [prefix] if node.module else [f"{prefix}.{alias.name}" for alias in node.names]
    return names


def unit(name: str) -> str:
    """The top-level room of a dotted name inside the package: a sub-package or a top-level module."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "zr_align"


def package_graph() -> dict[str, dict[str, list[str]]]:
    """room -> {room it imports -> the modules that do}."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for name in imported_names(path):
            if name == "zr_align" or name.startswith("zr_align."):
                a, b = unit(source), unit(name)
                if a != b and a != "zr_align":  # the package's __init__ re-exports the public names
                    graph.setdefault(a, {}).setdefault(b, []).append(f"{source} -> {name}")
    return graph


def test_nothing_in_the_package_imports_test_helpers_or_scripts():
    wrong = [f"{module_name(path)} imports {name}" for path in sorted(PACKAGE.rglob("*.py"))
             for name in imported_names(path)
             if name.split(".")[0] in OUTSIDE or name == "zr_align.testing" or name.startswith("zr_align.testing.")
             if not module_name(path).startswith("zr_align.testing")]
    assert not wrong, wrong


def test_no_two_rooms_import_each_other_and_no_cycle():
    graph = package_graph()
    mutual = [f"{a} <-> {b}: {graph[a][b][0]}; {graph[b][a][0]}" for a in graph for b in graph[a]
              if a < b and a in graph.get(b, {})]
    assert not mutual, mutual
    # no longer cycle either: a depth-first search finds none
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, {}):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rules above can fail: a relative import inside a function is found and resolved."""
    pkg = tmp_path / "zr_align" / "diffusion"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "trainer.py").write_text("def f():\n    from ..testing import tiny_reward_model\n    from . import losses\n")
    assert imported_names(pkg / "trainer.py", tmp_path) == ["zr_align.testing", "zr_align.diffusion.losses"]
    assert unit("zr_align.testing") == "testing" and unit("zr_align.diffusion.losses") == "diffusion"


def function_lengths(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_functions_are_short_and_the_script_is_thin():
    lengths = [entry for path in sorted(PACKAGE.rglob("*.py")) for entry in function_lengths(path)]
    lengths += function_lengths(ROOT / "train_t2i.py")
    longest = max(lengths)
    assert longest[0] < 80, longest
    assert len((ROOT / "train_t2i.py").read_text().splitlines()) < 100
