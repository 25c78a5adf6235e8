"""The code's shape, which docs/code.md promises: model.py and train.py read in an
evening, the loop on one screen, and imports that run one way only."""

import ast
import glob
import os

from conftest import ROOT

SCRIPTS = {"train", "sample", "bench", "checkpoint"}  # what a learner runs; nothing below them imports them


def lines(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read().splitlines()


def imports():
    """{module: the project's modules it imports, anywhere in it}."""
    names = {path[:-3].replace("/", "."): path for path in glob.glob("*.py", root_dir=ROOT) + glob.glob("machinery/*.py", root_dir=ROOT)}
    graph = {}
    for name, path in names.items():
        graph[name] = set()
        for node in ast.walk(ast.parse("\n".join(lines(path)))):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in names}
            elif isinstance(node, ast.ImportFrom) and node.module == "machinery":
                graph[name] |= {f"machinery.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module in names:
                graph[name].add(node.module)
    return graph


def test_model_and_train_are_an_evenings_reading():
    assert len(lines("model.py")) <= 330
    assert len(lines("model.py")) + len(lines("train.py")) <= 900


def test_the_loop_fits_on_a_screen_and_never_replaces_the_config():
    tree = ast.parse("\n".join(lines("train.py")))
    loop = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train")
    assert loop.end_lineno - loop.lineno + 1 <= 40
    targets = [node for assign in ast.walk(loop) if isinstance(assign, ast.Assign) for target in assign.targets
               for node in ast.walk(target)]
    assert not [ast.unparse(node) for node in targets if isinstance(node, ast.Attribute) and node.attr == "cfg"]


def test_imports_run_one_way():
    graph = imports()
    for name, imported in graph.items():
        if name.startswith("machinery.") or name == "model":
            assert not imported & SCRIPTS, f"{name} imports {imported & SCRIPTS}"
    assert graph["model"] <= {"machinery.huggingface"} and not graph["machinery.huggingface"] & {"model"}
    done, path = set(), []

    def visit(name):  # depth first: a module met again on the path is a cycle
        assert name not in path, f"an import cycle: {' -> '.join(path[path.index(name):] + [name])}"
        if name not in done:
            path.append(name)
            for other in graph[name]:
                visit(other)
            path.pop()
            done.add(name)

    for name in graph:
        visit(name)


def test_the_top_level_holds_what_a_learner_runs_or_reads():
    assert {path[:-3] for path in glob.glob("*.py", root_dir=ROOT)} == {"model"} | SCRIPTS


def test_the_shipped_values_are_configs_defaults():
    """train.SHIPPED is how --size auto tells an edited constant from one it may choose."""
    import train

    assert {name: getattr(train.Config, name) for name in train.SHIPPED} == train.SHIPPED
