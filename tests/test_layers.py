"""The code's direction: one namespace, layers without cycles, no nested imports, Prefect only in the wrapper layer."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: The layers, top to bottom (README, "Layers"); each imports only those below it.
LAYERS = ("flows", "tasks", "models", "eval", "storage")


def _modules() -> dict[str, Path]:
    """Return {dotted name: file} of every module of the maskforge package (the layer folders and the root)."""
    out = {"maskforge": ROOT / "__init__.py"}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(("maskforge",) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return out


def _is_wrapper(name: str) -> bool:
    """Whether a module belongs to the layer that may import Prefect: flows/, and tasks' wrappers.py modules."""
    return name.startswith("maskforge.flows") or name.endswith(".wrappers")


def _imports(path: Path) -> list[tuple[ast.AST, str, bool]]:
    """Return (node, imported module, at module level) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    top = set(tree.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node, node.module, node in top))
        elif isinstance(node, ast.Import):
            found += [(node, alias.name, node in top) for alias in node.names]
    return found


def test_every_project_import_sits_at_module_level_and_is_absolute():
    nested, relative, unqualified = [], [], []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        relative += [f"{path}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        for node, module, at_top in _imports(path):
            if module.split(".")[0] in LAYERS:
                unqualified.append(f"{path}:{node.lineno} imports {module}")
            elif module.startswith("maskforge") and not at_top:
                nested.append(f"{path}:{node.lineno} imports {module} inside a function")
    assert not nested and not relative and not unqualified, nested + relative + unqualified


def test_the_import_graph_has_no_cycle():
    graph = grimp.build_graph("maskforge")
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m)} for m in graph.modules}
    # iterative depth-first search: a back edge to a module on the current path is a cycle
    state, cycles = {}, []
    for start in sorted(edges):
        if start in state:
            continue
        path, stack = [], [(start, iter(sorted(edges[start])))]
        state[start] = "open"
        path.append(start)
        while stack:
            module, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[module] = "done"
                path.pop()
                stack.pop()
            elif state.get(child) == "open":
                cycles.append(path[path.index(child) :] + [child])
            elif child not in state:
                state[child] = "open"
                path.append(child)
                stack.append((child, iter(sorted(edges[child]))))
    assert not cycles, cycles


def test_layers_import_only_downwards():
    """The import-linter contract's rule, checked here too so a failing pytest run names the import."""
    upward = []
    for name, path in _modules().items():
        if name == "maskforge":
            continue
        rank = LAYERS.index(name.split(".")[1])
        for node, module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] == "maskforge" and len(parts) > 1 and LAYERS.index(parts[1]) < rank:
                upward.append(f"{path}:{node.lineno} ({LAYERS[rank]}) imports {module}")
    assert not upward, upward


def test_only_flows_and_wrapper_modules_import_prefect():
    offenders = [
        f"{path}:{node.lineno} imports {module}"
        for name, path in _modules().items()
        if not _is_wrapper(name)
        for node, module, _ in _imports(path)
        if module.split(".")[0] in ("prefect", "prefect_dask")
    ]
    assert not offenders, offenders
    # the import-linter contract names the same stage modules: a new stage module must be added there too
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (forbidden,) = [c for c in contracts if c["type"] == "forbidden"]
    listed = set(forbidden["source_modules"])
    uncovered = [
        name
        for name, path in _modules().items()
        if name.startswith("maskforge.tasks.") and path.name != "__init__.py" and not _is_wrapper(name)
        if name not in listed
    ]
    assert not uncovered, uncovered


def test_every_stage_module_imports_with_prefect_blocked():
    names = sorted(name for name in _modules() if not _is_wrapper(name))
    script = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prefect", "prefect_dask"):
            raise ImportError("prefect is blocked: " + name)
sys.meta_path.insert(0, Block())
for name in {names!r}:
    importlib.import_module(name)
print(len({names!r}), "modules", "prefect" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "False" and int(done.stdout.split()[0]) > 60


def test_pyproject_lists_every_package_under_the_one_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"maskforge": "."}
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert set(setuptools["packages"]) == packages
    assert config["project"]["scripts"]["maskforge"] == "maskforge.flows.cli:app"


def test_the_wheel_holds_only_the_maskforge_package(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("maskforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"maskforge", "maskforge-0.1.0.dist-info"}, tops
    for module in ("maskforge/__init__.py", "maskforge/tasks/wrappers.py", "maskforge/tasks/hsnet/train.py"):
        assert module in names
    assert "maskforge/eval/splits/fss/test.txt" in names  # package data travels with its package
    assert not any(name.startswith(("maskforge/tests/", "maskforge/bench/", "maskforge/.venv/")) for name in names)
