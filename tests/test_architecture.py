"""The package's structure stays as the README's Architecture section describes it: layers that
import only from the ones before them, no import circle (counting imports inside functions and
under TYPE_CHECKING), modules and functions of a readable size, typer and rich only in the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nst_batch"

# Lowest first. A module may import modules of its own layer or of earlier ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "nst_batch.version",
        "nst_batch.errors",
        "nst_batch.images",
        "nst_batch.color",
        "nst_batch.validation",
    ),
    ("nst_batch.demo",),  # generated inputs, for the demo, verify and tests
    ("nst_batch.engine",),
    ("nst_batch.config", "nst_batch.params"),
    (
        "nst_batch.transfer",
        "nst_batch.extras",
        "nst_batch.features",
        "nst_batch.export",
        "nst_batch.video.flow",  # optical flow, warping, consistency
        "nst_batch.video.io",  # PyAV decoding and encoding, folders of frames
    ),
    ("nst_batch.pool",),
    ("nst_batch.jobs", "nst_batch.video.run"),  # a clip's frames, resumably
    ("nst_batch.manifest", "nst_batch.watcher", "nst_batch.metrics", "nst_batch.video.score"),
    ("nst_batch.distributed",),  # a runner for the manifest: above it, not below
    ("nst_batch.cli", "nst_batch.__main__", "nst_batch"),
)
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 90


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The package modules ``name`` imports, anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from a.b import c": the module a.b.c when there is one, else a.b
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
            targets = [t if t in MODULES else node.module for t in targets]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in layer):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and the README")


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_modules_import_only_from_their_layer_or_earlier_ones() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_circles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_manifest_and_watcher_never_import_each_other() -> None:
    for name, targets in GRAPH.items():
        for a, b in (("manifest", "watcher"), ("watcher", "manifest")):
            if name.startswith(f"nst_batch.{a}"):
                assert not any(t.startswith(f"nst_batch.{b}") for t in targets), name


def test_only_the_cli_imports_typer_and_rich() -> None:
    for name, path in MODULES.items():
        if name.startswith("nst_batch.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & {"typer", "rich"}, f"{name} imports {roots}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name: str) -> None:
    source = MODULES[name].read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines (at most {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
