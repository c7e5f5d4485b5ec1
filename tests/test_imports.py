"""Every module of the package imports on its own (CI runs this before the suite), and the layout holds:
imports flow one way (see ORDER), so there is no cycle, and no module takes another module's underscore names."""
import ast
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import preftune

PACKAGE_DIR = os.path.dirname(preftune.__file__)
MODULES = sorted(m.name for m in pkgutil.walk_packages(preftune.__path__, "preftune.") if m.name != "preftune.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_losses_import_without_transformers():
    code = "import sys, preftune.losses; sys.exit(1 if 'transformers' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _imports():
    """(importing module, imported module, names) for every `from preftune... import` in the package."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("preftune"):
                found.append((name, node.module, [a.name for a in node.names]))
    return found


def test_no_module_imports_another_modules_underscore_names():
    private = [(a, b, n) for a, b, names in _imports() for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


# Which part of the package may import which (besides itself, `errors`, `files` and the bundled `assets`).
# From the bottom up: losses < data < logps (data's batch types) < models < apps (generation, chat, ui, merge)
# < outputs (eval generations use apps' generation path) < train (writes the outputs) < cli.
ORDER = ["losses", "data", "logps", "models", "apps", "outputs", "train", "cli"]
LAYERS = {part: set(ORDER[:i]) for i, part in enumerate(ORDER)}
SHARED = {"", "errors", "files", "assets"}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_flow_one_way():
    wrong = []
    for importer, imported, _ in _imports():
        a, b = _part(importer), _part(imported)
        if a == b or b in SHARED or a in SHARED:
            continue
        if b not in LAYERS[a]:
            wrong.append(f"{importer} -> {imported}")
    assert wrong == []
