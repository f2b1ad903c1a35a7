"""The house plan holds: two task packages on a task-free base, no import cycles, no empty packages.

Imports are read from the source (ast), function-local ones included, so a lazy import cannot
hide a cycle or a base package reaching into a task. `tunelab.tasks` is the one door from the
base to the tasks: its table names recipes as strings.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"
TASKS = {"classify", "sft"}
SHARED_COMMAND_MODULES = {"tunelab.commands", "tunelab.commands.options"}  # shared flags, not commands
TOP = {"", "cli", "commands", "tasks", "version"}  # may import anything: the package root, the CLI, the table


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("tunelab")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tunelab"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if (SRC.parent / f"{node.module}.{a.name}".replace(".", "/")).exists()
                         or (SRC.parent / (f"{node.module}.{a.name}".replace(".", "/") + ".py")).exists()}
        graph[module_name(path)] = deps
    return graph


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_base_package_imports_a_task_package():
    wrong = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                   if package(m) not in TASKS | TOP and package(d) in TASKS)
    assert wrong == []


def test_task_packages_do_not_import_each_other_or_commands():
    graph = import_graph()
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                   if package(m) in TASKS and package(d) in TASKS and package(d) != package(m))
    wrong += sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if package(d) == "commands" and package(m) not in {"cli", "commands"})
    wrong += sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if package(m) == "commands" and package(d) == "commands" and d not in SHARED_COMMAND_MODULES and m != "tunelab.commands")
    assert wrong == []


def test_no_import_cycles_between_modules_or_packages():
    graph = {m: {d for d in deps if d in import_graph_keys} for m, deps in import_graph().items()} if (import_graph_keys := set(import_graph())) else {}
    cycles = []
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if d == m or d == m.rsplit(".", 1)[0]:
                continue  # a module importing its own package's __init__ (re-exports) is not a cycle
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    packages: dict[str, set[str]] = {}
    for m, deps in graph.items():
        packages.setdefault(package(m), set()).update(package(d) for d in deps if package(d) != package(m))
    pairs = sorted({tuple(sorted((a, b))) for a, bs in packages.items() for b in bs if a and b and a in packages.get(b, ())})
    assert cycles == [] and pairs == []


def test_no_empty_packages():
    empty = [str(p.relative_to(SRC)) for p in SRC.rglob("__init__.py")
             if not [f for f in p.parent.iterdir() if f.suffix == ".py" and f.name != "__init__.py"] and p.parent != SRC]
    assert empty == []


def test_classification_model_choices_are_read_only_in_classify_and_model():
    """`<cfg>.model.pooling` / `.causal_mask` (attribute reads, not docs or YAML) stay in the task."""
    readers = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] in {"classify", "model"} or path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in {"pooling", "causal_mask"} and isinstance(node.value, ast.Attribute) and node.value.attr == "model":
                readers.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert readers == []
