"""The package's shape: data flows one way, entry points stay thin."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "ft_keras"


def module_name(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports():
    """`{module: {ft_keras modules it imports, at any level}}`."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (
                node.module or ""
            ).startswith("ft_keras"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names
                            if a.name.startswith("ft_keras"))
        # A package's __init__ importing its own submodules is not a cycle
        # back into itself.
        graph[name] = {d for d in deps if d != name}
    return graph


def test_no_import_cycle_in_ft_keras():
    graph = imports()
    cycles = []

    def visit(module, path):
        for dep in graph.get(module, ()):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep in graph:
                visit(dep, path + [dep])

    for module in graph:
        visit(module, [module])
    assert not cycles, cycles


def test_entry_points_only_call_cli_main():
    for name in ("train.py", "evaluate.py", "export/__main__.py"):
        tree = ast.parse((ROOT / name).read_text())
        imported = {
            f"{n.module}.{a.name}" for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) for a in n.names
        }
        assert imported == {"ft_keras.cli"}, (name, imported)


def test_distribute_takes_nothing_from_the_gin_module():
    assert "ft_keras.config" not in imports()["ft_keras.distribute"]
