"""The package dependency rule: grpo/ (the algorithm) imports none of models/, rewards/, data/, eval/.

Every import statement of every module under grpo/ is parsed (top level and inside functions), so a
local import cannot hide a dependency. models/ may use grpo's primitives; train.py and evaluate.py
are where the packages meet.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"models", "rewards", "data", "eval"}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
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
