"""The package's layers, read from its source: every import statement (module-level and inside functions,
plus ``importlib.import_module``/``__import__`` of a literal name) becomes an arrow between our modules.

Rules (README, "Architecture"): no import loop anywhere; ``core`` and ``banks`` never import ``webui`` or
``bench`` (imports run webui -> banks -> core, and ``bench`` sits on top); ``core`` imports nothing of ours
outside ``core`` but the package's face (which imports nothing) and no third-party package but torch; and
only ``webui/host.py`` imports the WebUI's ``modules``. The checks run on the package as it is and on small
planted trees, so a check that could not fail would show here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "lib_safedenoise"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
HOST_ADAPTER = f"{PACKAGE}.webui.host"
LOWER_LAYERS = ("core", "banks")
UPPER_LAYERS = ("webui", "bench")
CORE_THIRD_PARTY = {"torch"}


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file (a package is its ``__init__``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import ``from <level dots><target> import ...`` made in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """Every import made anywhere in ``module`` as ``(source, names, line)``: ``import a.b`` is ``("a.b", (),
    line)``, ``from a import b, c`` (relative forms made absolute) ``("a", ("b", "c"), line)``, and a call of
    ``importlib.import_module``/``__import__`` with a literal name is like ``import`` of that name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node.level, node.module)
            found.append((source, tuple(alias.name for alias in node.names), node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            found.append((node.args[0].value, (), node.lineno))
    return found


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, tuple[str, ...], int]]]]:
    """Arrows between our modules (``from a import b`` points at ``a.b`` when that is a module of ours, else
    at ``a``), and every module's imports as ``imports_of`` lists them (for the rules on other packages)."""
    names = module_names(root)
    graph, raw = {}, {}
    for module, path in names.items():
        raw[module] = imports_of(module, path)
        targets = set()
        for source, members, _ in raw[module]:
            submodules = [f"{source}.{member}" for member in members if f"{source}.{member}" in names]
            targets.update(submodules)
            if len(submodules) < len(members) or not members:
                targets.add(source)
        graph[module] = {target for target in targets if target in names and target != module}
    return graph, raw


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} imports {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer(module) in LOWER_LAYERS and layer(target) in UPPER_LAYERS
            or layer(module) == "core" and layer(target) not in ("core", None)]


def core_third_party(raw) -> list[str]:
    """Imports in ``core`` of anything but the standard library, torch and the package itself."""
    allowed = sys.stdlib_module_names | CORE_THIRD_PARTY | {PACKAGE}
    return [f"{module}:{line} imports {source}" for module, found in sorted(raw.items()) if layer(module) == "core"
            for source, _, line in found if source.split(".")[0] not in allowed]


def webui_imports_outside_host(raw) -> list[str]:
    """Imports of the WebUI's ``modules`` (or anything under it) by any module but the host adapter."""
    return [f"{module}:{line} imports {source}" for module, found in sorted(raw.items()) if module != HOST_ADAPTER
            for source, _, line in found if source.split(".")[0] == "modules"]


# ---- the package ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def package():
    return import_graph(ROOT)


def test_every_module_is_read_and_the_layers_exist(package):
    graph, _ = package
    assert {layer(module) for module in graph} >= {"core", "banks", "webui", "bench"}
    assert len(graph) == len(list(ROOT.rglob("*.py")))
    # the adapter imports ``modules`` only inside functions: those imports are read too
    assert HOST_ADAPTER in graph


def test_the_package_has_no_import_loop(package):
    assert find_cycle(package[0]) is None


def test_core_and_banks_never_import_webui_or_bench_and_core_stays_alone(package):
    graph, raw = package
    assert layer_violations(graph) == []
    assert core_third_party(raw) == []
    assert graph[PACKAGE] == set()  # the package's face (its version) may be read by core: it imports nothing


def test_only_the_host_adapter_imports_the_webuis_modules(package):
    _, raw = package
    assert webui_imports_outside_host(raw) == []
    assert any(source.split(".")[0] == "modules" for source, _, _ in raw[HOST_ADAPTER])


# ---- the checks catch what they are for (planted trees) ------------------------------------------------

def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for relative in ["__init__.py", "core/__init__.py", "banks/__init__.py", "webui/__init__.py",
                     "bench/__init__.py", *files]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files.get(relative, ""), encoding="utf-8")
    return root


def test_a_loop_through_a_function_level_import_is_found(tmp_path):
    graph, _ = import_graph(plant(tmp_path, {
        "banks/store.py": "from . import fileformat\n",
        "banks/fileformat.py": "def load():\n    from .store import Store\n",
    }))
    assert find_cycle(graph) == [f"{PACKAGE}.banks.fileformat", f"{PACKAGE}.banks.store",
                                 f"{PACKAGE}.banks.fileformat"]


def test_a_loop_through_an_absolute_import_module_call_is_found(tmp_path):
    graph, _ = import_graph(plant(tmp_path, {
        "webui/a.py": "import importlib\nimportlib.import_module('lib_safedenoise.webui.b')\n",
        "webui/b.py": "from lib_safedenoise.webui import a\n",
    }))
    assert find_cycle(graph) is not None


def test_lower_layers_importing_upper_ones_are_found(tmp_path):
    graph, raw = import_graph(plant(tmp_path, {
        "core/modes.py": "def f():\n    from ..banks import spaces\n",
        "banks/spaces.py": "",
        "banks/encoders.py": "from lib_safedenoise.bench.digits import model\n",
        "bench/digits/__init__.py": "", "bench/digits/model.py": "",
        "banks/store.py": "from ..webui import server\n", "webui/server.py": "from ..banks import store\n",
        "core/kernel.py": "import numpy\nimport math\nimport torch\n",
    }))
    assert layer_violations(graph) == [
        f"{PACKAGE}.banks.encoders imports {PACKAGE}.bench.digits.model",
        f"{PACKAGE}.banks.store imports {PACKAGE}.webui.server",
        f"{PACKAGE}.core.modes imports {PACKAGE}.banks.spaces",
    ]
    assert core_third_party(raw) == [f"{PACKAGE}.core.kernel:1 imports numpy"]


def test_modules_imported_outside_the_adapter_is_found(tmp_path):
    _, raw = import_graph(plant(tmp_path, {
        "webui/host.py": "def f():\n    from modules import shared\n",
        "webui/tab.py": "def g():\n    import modules.shared\n",
        "banks/store.py": "from modules.paths import models_path\n",
    }))
    assert webui_imports_outside_host(raw) == [
        f"{PACKAGE}.banks.store:1 imports modules.paths",
        f"{PACKAGE}.webui.tab:2 imports modules.shared",
    ]
