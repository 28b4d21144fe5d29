"""The repository's shape: packages by concept, no import cycles, no torch in the operator,
modules of reasonable size, and a module tree in docs/layout.md that matches the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import ROOT

PACKAGES = {
    "speedrun_api": ROOT / "api" / "speedrun_api",
    "speedrun_trainer": ROOT / "trainer" / "speedrun_trainer",
    "speedrun_operator": ROOT / "operator" / "speedrun_operator",
}
MAX_MODULE_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of our packages, by dotted name (packages by their __init__)."""
    out = {}
    for name, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `module` imports anywhere in its body (lazy imports in functions count)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != module and not module.startswith(m + ".")}


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {m: imports_of(m, p, set(mods)) for m, p in mods.items()}
    # Package __init__ files hold docstrings only, so an edge into a package is not an edge into
    # its modules; a cycle is one among modules proper.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_package_inits_say_what_they_hold() -> None:
    for path in modules().values():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc) > 40, f"{path.relative_to(ROOT)}: needs a docstring saying what it holds"


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {big}"


def test_operator_and_api_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import speedrun_api.crd, speedrun_api.plan, speedrun_api.trainer_metrics\n"
        "import speedrun_operator.main, speedrun_operator.operator_commands\n"
        "from speedrun_trainer.cli.speedrun import build_parser\n"
        "build_parser()\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not out, f"the operator side imports torch: {out[:5]}"


def test_operator_imports_only_the_api_from_the_trainer_side() -> None:
    mods = modules()
    for m, path in mods.items():
        if m.startswith("speedrun_operator"):
            wrong = {n for n in imports_of(m, path, set(mods)) if n.startswith("speedrun_trainer")}
            assert not wrong, f"{m} imports {wrong}: the operator may import speedrun_api only"


def layout_tree() -> list[Path]:
    """Paths docs/layout.md's module tree names (directories end with '/')."""
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text.split("## The packages", 1)[1].split("```", 2)[1]
    paths: list[Path] = []
    parents: list[tuple[int, Path]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        names = re.match(r"\s*((?:[^\s,]+, )*[^\s,]+)", line).group(1)
        parents = [(i, p) for i, p in parents if i < indent]
        base = parents[-1][1] if parents else Path()
        for name in names.split(", "):
            path = base / name.rstrip(",")
            paths.append(path)
            if name.endswith("/"):
                parents.append((indent, path))
    return paths


def test_layout_tree_matches_the_code() -> None:
    listed = layout_tree()
    missing = [str(p) for p in listed if not (ROOT / p).exists()]
    assert not missing, f"docs/layout.md names files that do not exist: {missing}"
    listed_set = {ROOT / p for p in listed}
    unlisted = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if path.name not in ("__init__.py", "__main__.py") and path not in listed_set
    ]
    assert not unlisted, f"docs/layout.md leaves out (one line per module): {unlisted}"
