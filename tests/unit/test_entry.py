"""An interpreter older than 3.9 gets one line from ``steward`` / ``python -m agent``, exit 2."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from agent.entry import too_old

REPO = Path(__file__).resolve().parents[2]
OLD = [p for v in ("2.7", "3.6", "3.8")
       for p in sorted((Path.home() / ".pyenv/versions").glob(f"{v}.*/bin/python{v}"))[-1:]]


@pytest.mark.parametrize(("info", "line"), [
    ((3, 8, 18, "final", 0), "steward needs Python 3.9 or newer (this is 3.8)"),
    ((3, 6, 15), "steward needs Python 3.9 or newer (this is 3.6)"),
    ((2, 7, 18), "steward needs Python 3.9 or newer (this is 2.7)"),
    ((3, 9, 2), None), ((3, 11, 7), None), ((4, 0), None),
])
def test_too_old_names_both_versions(info, line):
    assert too_old(info) == line


@pytest.mark.parametrize("name", ["agent/entry.py", "agent/__main__.py", "agent/__init__.py"])
def test_guard_modules_parse_as_python_3_6(name):
    source = (REPO / name).read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == "__future__"]  # "annotations" is 3.7+
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]  # 2.7 lacks them
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                and (n.returns or any(a.annotation for a in n.args.args))]


def test_console_script_and_module_start_at_the_guard():
    cfg = (REPO / "setup.cfg").read_text()
    assert "steward = agent.entry:main" in cfg
    assert "from agent.entry import main" in (REPO / "agent/__main__.py").read_text()


def test_fake_old_version_gets_one_line_and_exit_2():
    code = ("import sys; sys.version_info = (3, 8, 10, 'final', 0)\n"
            "from agent.entry import main; main()")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == "steward needs Python 3.9 or newer (this is 3.8)\n"


def test_this_python_passes_the_guard():
    res = subprocess.run([sys.executable, "-m", "agent", "--version"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("steward ")


@pytest.mark.skipif(not OLD, reason="no Python older than 3.9 under ~/.pyenv/versions")
@pytest.mark.parametrize("python", OLD, ids=lambda p: p.name)
def test_real_old_interpreter_gets_one_line(python):
    res = subprocess.run([str(python), "-m", "agent", "check"], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    version = python.name.removeprefix("python")
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == f"steward needs Python 3.9 or newer (this is {version})\n"
