"""The package dependency rule: grpo/ (the algorithm) imports none of models/, rewards/, data/, eval/.

Every import statement of every module under grpo/ is parsed (top level and inside functions), and
every importlib.import_module / __import__ call given a literal name, so a local or dynamic import
cannot hide a dependency. models/ may use grpo's primitives; train.py and evaluate.py
are where the packages meet.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"models", "rewards", "data", "eval"}


def _dynamic_import_name(node: ast.AST) -> str | None:
    """The module name of ``importlib.import_module("x.y", ...)``, ``import_module("x.y")`` or
    ``__import__("x.y", ...)`` given as a string literal (first argument or ``name=``), else None."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__"):
        return None
    arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def imported_packages(path: Path) -> set[str]:
    """Top-level packages imported by the module at ``path``: import statements anywhere, and
    import_module / __import__ calls with a literal name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (dynamic := _dynamic_import_name(node)) is not None:
            names.add(dynamic.split(".")[0])
    return names


def test_grpo_imports_no_other_package_of_the_project():
    modules = sorted((ROOT / "grpo").rglob("*.py"))
    assert len(modules) >= 10
    bad = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN) for p in modules}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_check_sees_local_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from models.policy import x\n    import rewards.parse\n")
    assert imported_packages(probe) & FORBIDDEN == {"models", "rewards"}


def test_the_check_sees_dynamic_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\nfrom importlib import import_module\n\n"
        "def f():\n"
        "    importlib.import_module('models.policy')\n"
        "    import_module(name='data')\n"
        "    __import__('eval.metrics', fromlist=['x'])\n"
        "    importlib.import_module('.losses', package='grpo')\n"  # relative: inside grpo
        "    importlib.import_module(some_variable)\n"  # not a literal: cannot be checked
        "    __import__('torch')\n"
    )
    assert imported_packages(probe) == {"importlib", "models", "data", "eval", "torch"}
    assert imported_packages(probe) & FORBIDDEN == {"models", "data", "eval"}


def module_graph() -> dict[str, set[str]]:
    """Edges module -> project modules it imports (top level or local), package __init__s left out."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for pkg in ("grpo", "models", "rewards", "data", "eval") for p in (ROOT / pkg).rglob("*.py")
               if p.name != "__init__.py"}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = deps & modules.keys() - {name}
    return graph


def test_no_module_imports_itself_through_others():
    graph = module_graph()
    cycles = []

    def visit(name, path):
        for dep in sorted(graph[name]):
            if dep == path[0]:
                cycles.append(path + [dep])
            elif dep not in path and dep > path[0]:  # each cycle once, from its smallest module
                visit(dep, path + [dep])

    for start in sorted(graph):
        visit(start, [start])
    assert "models.policy" in graph and "models.rollout" in graph["models.policy"]
    assert cycles == []
