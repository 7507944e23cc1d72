"""The package layering the design asks for, checked on the source: shardnet is shared and imports
neither node nor coordinator; node and coordinator never import each other; no module-level
import circle; the coordinator runs without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shardnet", "node", "coordinator")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """Project modules imported by `path` (module level only: what runs at import time)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and module_level_only:  # `if TYPE_CHECKING:` imports do not run
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {
        name: {m for m in _imports(path, module_level_only) if m in files and m != name} for name, path in files.items()
    }


def test_no_import_reaches_up_or_across():
    for module, imported in _graph(module_level_only=False).items():
        top = module.split(".")[0]
        for target in imported:
            other = target.split(".")[0]
            if top == "shardnet":
                assert other == "shardnet", f"{module} imports {target}: the shared package imports no agent"
            elif top != other:
                assert other == "shardnet", f"{module} imports {target}: node and coordinator stay apart"


def test_no_module_level_import_circle():
    graph = _graph(module_level_only=True)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            assert state.get(target) != 1, "import circle: " + " -> ".join([*path[path.index(target) :], target])
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_coordinator_runs_without_torch():
    code = (
        "import sys; import coordinator.daemon, coordinator.cli, shardnet.model.manifest; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
