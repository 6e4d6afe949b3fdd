"""The package's layout: layers, no import cycles, a light command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "virnuc_dask"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use virnuc_dask.<package>.<module>")
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    return {
        name: {
            m
            for m in _imports(path, top_level_only=top_level_only)
            if m in MODULES and m != name and m != "virnuc_dask"
        }
        for name, path in MODULES.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "all"])
def test_the_import_graph_has_no_cycles(top_level_only):
    assert _cycle(_graph(top_level_only=top_level_only)) is None


def test_a_cycle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# The layers, lowest first: a package or top-level module imports only from lower ranks
# (worker and cluster side by side, and the four commands' packages side by side, none
# importing from another).
RANKS = {
    "errors": 0,
    "files": 0,
    "rundir": 0,
    "formatting": 0,
    "config": 1,
    "runlock": 1,
    "core": 2,
    "models": 3,
    "partition_result": 4,
    "events": 5,
    "worker": 6,
    "cluster": 6,
    "dataflow": 7,
    "train": 8,
    "doctor": 9,
    "bench": 9,
    "validate": 9,
    "report": 9,
    "api": 10,
    "cli": 10,
    "__main__": 11,
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if _layer(name) is not None
        and _layer(name) != _layer(target)
        and RANKS[_layer(target)] >= RANKS[_layer(name)]
    )


def test_layers_import_only_downwards():
    assert {_layer(m) for m in MODULES} - {None} == set(RANKS)
    assert _upward(_graph(top_level_only=False)) == []


def test_an_upward_import_would_be_found():
    graph = {
        "virnuc_dask.worker.task": {"virnuc_dask.dataflow.store", "virnuc_dask.core.plan"},
        "virnuc_dask.worker.plugin": {"virnuc_dask.cluster.workers"},
    }
    assert _upward(graph) == [
        "virnuc_dask.worker.plugin imports virnuc_dask.cluster.workers",
        "virnuc_dask.worker.task imports virnuc_dask.dataflow.store",
    ]


def test_core_is_pure():
    """Biology and batching import neither torch nor Dask, nor any other layer."""
    for name, path in MODULES.items():
        if name.startswith("virnuc_dask.core."):
            heavy = {m.split(".")[0] for m in _imports(path, top_level_only=False)} & {
                "torch",
                "dask",
                "distributed",
                "zarr",
                "esm",
                "tokenizers",
            }
            assert not heavy, f"{name} imports {heavy}"
            inner = {
                m
                for m in _imports(path, top_level_only=False)
                if m.startswith("virnuc_dask.") and m in MODULES
            }
            assert inner <= {m for m in MODULES if m.startswith("virnuc_dask.core")} | {
                "virnuc_dask.errors",
                "virnuc_dask.files",
            }, f"{name} imports {inner}"


def test_argparse_and_print_only_in_cli():
    for name, path in MODULES.items():
        if name.startswith("virnuc_dask.cli") or name == "virnuc_dask.__main__":
            continue
        tree = ast.parse(path.read_text())
        assert (
            "argparse"
            not in {
                m.split(".")[0]
                for m in _imports(path, top_level_only=False)
                if m != "argparse.Namespace"
            }
            or name in ALLOWED_ARGPARSE
        ), name
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert not calls, f"{name} prints (line {calls[0].lineno})" if calls else ""


# fair-esm checkpoints pickle an argparse.Namespace of the model's options: building one is
# writing the model format, not parsing a command line.
ALLOWED_ARGPARSE = {
    "virnuc_dask.models.demo",
    "virnuc_dask.models.esm2",
    "virnuc_dask.models.flops",
    "virnuc_dask.models.safeload",
}


def test_help_does_not_import_torch_or_distributed():
    code = (
        "import sys\nfrom virnuc_dask.cli.main import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('torch', 'distributed', 'dask', 'numpy', 'zarr') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    root = PACKAGE.parent
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _private_imports(root: Path) -> list[str]:
    """``from x import _name`` of a module of this project, outside the module itself."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("virnuc_dask"):
                found.extend(
                    f"{path.relative_to(root)}:{node.lineno} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                )
    return found


def test_no_private_name_is_imported_across_modules():
    assert _private_imports(PACKAGE.parent) == []


def test_a_private_import_would_be_found(tmp_path):
    (tmp_path / "a.py").write_text("from virnuc_dask.core.fasta import _read_plain, Record\n")
    assert _private_imports(tmp_path) == ["a.py:1 imports virnuc_dask.core.fasta._read_plain"]


MAX_LINES = 400


def test_no_module_is_longer_than_the_limit():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_tests_do_not_print():
    """Tests say what they found in assertion messages or the log, not on stdout."""
    tests = Path(__file__).resolve().parent
    printing = [
        f"{path.relative_to(tests)}:{node.lineno}"
        for path in sorted(tests.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    ]
    assert printing == []
