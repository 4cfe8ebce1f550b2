"""The code's direction: one namespace, layers without cycles, nested imports only where start-up time needs them (the
CLI's command bodies, LAZY), Prefect only in the wrapper layer, and a command line that starts without torch."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: The layers, top to bottom (docs/layout.md); each imports only those below it.
LAYERS = ("flows", "tasks", "models", "eval", "storage")

#: The CLI's command modules: declarations (typer options, help) at the top, light enough that `maskforge --help`,
#: usage and config errors answer in well under a second. Only their functions may import project modules in the
#: body, and only the modules of LAZY.
CLI_MODULES = {
    f"maskforge.flows.{name}"
    for name in (
        "cli",
        "cli_support",
        "shards_cli",
        "datasets_cli",
        "models_cli",
        "results_cli",
        "runs_cli",
        "learner_cli",
    )
}
#: The only project modules imported inside a function, each with why it may not be imported at the top of a CLI
#: module: it pulls torch and/or Prefect (test_lazy_modules_are_the_heavy_ones checks), which a command needs only once
#: its config validated and it runs.
LAZY = {
    "maskforge.flows.cli_run": "Prefect's log handlers and settings: only a command that runs a flow logs to a file",
    "maskforge.flows.generate": "the generation flow: Prefect, and the diffusion stages' torch",
    "maskforge.flows.serve": "maskforge serve: Prefect's task wrappers (the GPU slot name)",
    "maskforge.flows.learners": "every learner's flows: Prefect and the learners' stages (torch)",
    "maskforge.tasks.preflight": "generate's pre-flight: resolves devices and reads weight headers with torch",
    "maskforge.models.loading": "models check, diffews: diffusers pipelines",
    "maskforge.models.tiny": "models tiny: builds diffusers and transformers models",
    "maskforge.models.toy_train": "toy train-*: the training loops (torch)",
}
#: What the command line must not import before a command runs (each costs 0.1 to 2 s of start-up).
HEAVY = ("torch", "torchvision", "prefect", "prefect_dask", "dask", "diffusers", "transformers", "webdataset", "cv2")


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


def _lazy_name(node: ast.AST, module: str) -> list[str]:
    """Return the modules an import statement names: `from maskforge.flows import gfss` names maskforge.flows.gfss."""
    if isinstance(node, ast.ImportFrom) and module in ("maskforge.flows", "maskforge.tasks", "maskforge.models"):
        return [f"{module}.{alias.name}" for alias in node.names]
    return [module]


def test_every_project_import_sits_at_module_level_and_is_absolute():
    nested, relative, unqualified = [], [], []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        relative += [f"{path}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        for node, module, at_top in _imports(path):
            if module.split(".")[0] in LAYERS:
                unqualified.append(f"{path}:{node.lineno} imports {module}")
            elif module.startswith("maskforge") and not at_top:
                if name not in CLI_MODULES or not set(_lazy_name(node, module)) <= set(LAZY):
                    nested.append(f"{path}:{node.lineno} imports {module} inside a function (not a LAZY import)")
    assert not nested and not relative and not unqualified, nested + relative + unqualified


def test_lazy_modules_are_the_heavy_ones_and_cli_modules_are_light():
    """A LAZY entry is only there because its module reaches torch or Prefect; a CLI module reaches neither at its
    top (grimp's graph of module-level imports, external packages included)."""
    graph = grimp.build_graph("maskforge", include_external_packages=True)
    light = [m for m in LAZY if not any(graph.chain_exists(m, heavy) for heavy in ("torch", "prefect"))]
    assert not light, f"LAZY lists modules that import neither torch nor Prefect: {light}"
    # the graph counts function-level imports too, so the light check of the CLI modules runs the interpreter
    script = f"""
import sys
for name in {sorted(CLI_MODULES)!r}:
    __import__(name)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == "[]", done.stdout


def test_help_usage_and_config_errors_import_no_heavy_package(tmp_path):
    """Every group's and command's --help, a usage error and a config error of every config kind run in one process
    that must end with none of HEAVY imported (the instant-CLI promise: docs/cli.md)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {name: x}\nnot_a_section: 1\n")
    config_commands = [
        ["generate"],
        ["models", "check"],
        ["hsnet", "train"],
        ["hsnet", "eval"],
        ["gfss", "train-base"],
        ["gfss", "train-novel"],
        ["gfss", "eval"],
        ["diffews", "train"],
        ["diffews", "eval"],
        ["maskdiff", "train"],
        ["maskdiff", "eval"],
        ["toy", "train-diffusion"],
        ["toy", "ground"],
        ["toy", "train-controlnet"],
    ]
    script = f"""
import sys
import typer
from maskforge.flows.cli import app

root = typer.main.get_command(app)
calls = [["--help"]]
for group in root.list_commands(None):
    calls.append([group, "--help"])
    command = root.get_command(None, group)
    for sub in getattr(command, "list_commands", lambda ctx: [])(None):
        calls.append([group, sub, "--help"])
calls += [["generate"], ["hsnet", "eval", "--shots", "x", "c.yaml"]]
calls += [argv + [{str(bad)!r}] for argv in {config_commands!r}]
codes = []
for argv in calls:
    try:
        rc = root.main(argv, prog_name="maskforge", standalone_mode=False)  # an Exit's code is returned
        codes.append(rc if isinstance(rc, int) else 0)
    except SystemExit as exit:
        codes.append(exit.code)
    except Exception as err:  # click's usage errors without standalone mode
        codes.append(type(err).__name__)
print(len(calls), codes)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    count, codes = lines[-2].split(" ", 1)
    codes = eval(codes)  # the list the script printed
    assert int(count) > 40 and len(codes) == int(count)
    n_config = len(config_commands)
    assert codes[-n_config:] == [1] * n_config, codes  # every config error: exit 1
    assert codes[-n_config - 2 : -n_config] == ["MissingParameter", "BadParameter"], codes
    assert lines[-1] == "[]", f"imported by help, usage and config errors: {lines[-1]}"


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
    # the import-linter contract covers every package below flows/ whole (a new learner's modules included), the
    # wrapper module its one exception
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (forbidden,) = [c for c in contracts if c["type"] == "forbidden"]
    assert set(forbidden["source_modules"]) == {f"maskforge.{layer}" for layer in LAYERS[1:]}
    assert forbidden["ignore_imports"] == ["maskforge.tasks.wrappers -> prefect"]
    assert [name for name in _modules() if name.startswith("maskforge.tasks") and _is_wrapper(name)] == [
        "maskforge.tasks.wrappers"
    ]


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
    # every module of the layers is packaged: a new subpackage (a new learner's) missing from pyproject's list fails
    missing = sorted(
        f"maskforge/{path.relative_to(ROOT)}"
        for path in _modules().values()
        if f"maskforge/{path.relative_to(ROOT)}" not in names and path != ROOT / "__init__.py"
    )
    assert not missing and "maskforge/__init__.py" in names, missing
    assert "maskforge/eval/splits/fss/test.txt" in names  # package data travels with its package
    assert not any(name.startswith(("maskforge/tests/", "maskforge/bench/", "maskforge/.venv/")) for name in names)
