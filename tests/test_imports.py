"""Every module of the package imports on its own (CI runs this before the suite)."""
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
