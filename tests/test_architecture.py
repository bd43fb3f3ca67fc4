"""docs/architecture.md's layer table against the imports in the code."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layer_table():
    """{layer: set of layers it may import}, read from the table in docs/architecture.md."""
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        text = f.read()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    allowed = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`\w+`", cells[0]):
            allowed[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[2]))
    return allowed


def files_of(layer):
    if layer == "run":
        return [os.path.join(ROOT, "run.py")]
    folder = os.path.join(ROOT, layer)
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".py")]


def imported_layers(path, layers):
    """The project layers a file imports, at any depth (function-level imports count too)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        found |= {name.split(".")[0] for name in names} & layers
    return found


def test_the_table_names_every_layer_and_only_layers_that_exist():
    allowed = layer_table()
    assert set(allowed) == {"src", "robustness", "envs", "agents", "meta", "commands", "run"}
    for layer, targets in allowed.items():
        assert targets <= set(allowed) - {layer}, (layer, targets)
        assert files_of(layer), layer


@pytest.mark.parametrize("layer", ["src", "robustness", "envs", "agents", "meta", "commands", "run"])
def test_each_layer_imports_only_what_the_table_allows(layer):
    allowed = layer_table()
    for path in files_of(layer):
        extra = imported_layers(path, set(allowed) - {layer}) - allowed[layer]
        assert not extra, f"{os.path.relpath(path, ROOT)} imports {sorted(extra)}; docs/architecture.md allows " \
                          f"{layer} only {sorted(allowed[layer])}"


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from agents import ppo\n    import meta.es\n")
    assert imported_layers(str(bad), {"agents", "meta", "run"}) == {"agents", "meta"}
