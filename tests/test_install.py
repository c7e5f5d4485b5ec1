"""The README's two commands: where `make` installs (an active environment, else the project's .venv)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(ROOT, "scripts", "install.sh")


def which(python, **env):
    run_env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHON")}
    return subprocess.run(["bash", INSTALL, "--which"], env={**run_env, "PYTHON": python, **env},
                          capture_output=True, text=True, timeout=60)


def base_python():
    """The interpreter this environment was made from: not inside any environment."""
    for name in ("python3", "python"):
        path = os.path.join(sys.base_prefix, "bin", name)
        if os.path.exists(path):
            return path
    pytest.skip("no base interpreter next to this environment")


def test_inside_an_environment_that_environment_is_used():
    if sys.prefix == sys.base_prefix and not os.path.isdir(os.path.join(sys.prefix, "conda-meta")):
        pytest.skip("the suite is not running inside an environment")
    proc = which(sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == sys.executable


def test_outside_an_environment_the_project_venv_is_used(tmp_path):
    proc = which(base_python())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.join(ROOT, ".venv", "bin", "python")
    proc = which(base_python(), VENV=str(tmp_path / "env"))
    assert proc.stdout.strip() == str(tmp_path / "env" / "bin" / "python")


def test_a_venv_folder_that_is_not_a_venv_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHON")}
    proc = subprocess.run(["bash", INSTALL], env={**env, "PYTHON": base_python(), "VENV": str(tmp_path / "mine")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is not a virtual environment" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_missing_python_is_one_sentence():
    proc = which("/nonexistent/python3")
    assert proc.returncode == 2 and proc.stderr.startswith("install.sh: error: no Python at PYTHON=/nonexistent/python3")


def test_make_runs_everything_through_the_chosen_python():
    # Not the variables of a make this suite may run under (`make test PYTHON=... VENV=...` passes them on).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV", "PYTHON")}
    proc = subprocess.run(["make", "-n", "demo", "test", "PYTHON=/usr/bin/python3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)
    if proc.returncode != 0 and "make: not found" in proc.stderr:
        pytest.skip("make is not installed")
    lines = proc.stdout.splitlines()
    assert 'PYTHON="/usr/bin/python3" VENV="' + os.path.join(ROOT, ".venv") + '" bash scripts/install.sh' in lines
    runs = [line for line in lines if " -m preftune orpo" in line or " -m pytest " in line or " -m ruff" in line]
    assert len(runs) == 4 and all(line.startswith('"$(PYTHON="/usr/bin/python3"') and "install.sh --which)" in line
                                  for line in runs)
