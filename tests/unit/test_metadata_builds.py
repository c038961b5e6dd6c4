"""The same package from EL9-era tooling and from today's: steward built in the bullseye
root by its own pip 20.3 and setuptools 52 (no build isolation, no index: what an EL9 RPM
build does with setuptools 53) against the distribution's libraries, and a wheel built by
this venv's pip and setuptools, have the same name, version and entry points; and the
installed ``steward check --format json`` answers in that root under Python 3.9."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent import __version__
from tests import py39root

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(py39root.unavailable() is not None,
                                 reason=py39root.unavailable() or "")]

REPO = Path(__file__).resolve().parents[2]
# Prints what the installed distribution says about itself, and where its imports come from.
PROBE = """
import importlib.metadata as m, json, jinja2, psutil, requests, dns.version, pyudev, jeepney
import tomli, sys
d = m.distribution("steward")
print(json.dumps({
    "python": list(sys.version_info[:2]), "name": d.metadata["Name"], "version": d.version,
    "entry_points": sorted([e.group, e.name, e.value] for e in d.entry_points),
    "libs": {n: [m.version(n), mod.__file__] for n, mod in [
        ("Jinja2", jinja2), ("psutil", psutil), ("requests", requests), ("pyudev", pyudev),
        ("jeepney", jeepney), ("dnspython", dns.version),
        ("tomli", tomli)]},
}))
"""


@pytest.fixture(scope="module")
def root():
    with py39root.Root(test_tools=False) as r:
        yield r


@pytest.fixture(scope="module")
def modern_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w", str(out),
                    str(REPO)], check=True, timeout=300, capture_output=True)
    (whl,) = out.glob("steward-*.whl")
    with zipfile.ZipFile(whl) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        eps = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    headers = dict(line.split(": ", 1) for line in meta.split("\n\n", 1)[0].splitlines()
                   if ": " in line)
    cp = configparser.ConfigParser(delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(eps)
    entry_points = sorted([g, n, v] for g in cp.sections() for n, v in cp.items(g))
    return headers["Name"], headers["Version"], entry_points


def test_el9_era_build_equals_the_modern_wheel(root, modern_wheel):
    res = root.run(["python3", "-c", PROBE], cwd="/")
    probe = json.loads(res.stdout)
    name, version, entry_points = modern_wheel
    assert probe["python"] == [3, 9]
    assert (probe["name"], probe["version"]) == ("steward", __version__) == (name, version)
    assert probe["entry_points"] == entry_points
    assert ["console_scripts", "steward", "agent.entry:main"] in entry_points
    checks = [e for e in entry_points if e[0] == "steward.checks"]
    assert len(checks) >= 19 and ["steward.checks", "http", "checks.http:HttpCheck"] in checks
    libs = probe["libs"]
    # the distribution's own packages, not wheels ...
    for lib, want in [("Jinja2", "2.11.3"), ("psutil", "5.8.0"), ("requests", "2.25.1"),
                      ("pyudev", "0.22.0"), ("jeepney", "0.6.0")]:
        assert libs[lib][0] == want, lib
        assert libs[lib][1].startswith("/usr/lib/python3/dist-packages/"), libs[lib]
    # ... except what bullseye lacks, at EL9's version
    for lib, want in [("dnspython", "2.1.0"), ("tomli", "2.0.1")]:
        assert libs[lib][0] == want, lib
        assert libs[lib][1].startswith("/usr/local/lib/python3.9/dist-packages/"), libs[lib]


def test_installed_console_script_checks_under_3_9(root):
    res = root.run(["steward", "check", "--format", "json"], cwd="/", check=False)
    assert res.returncode in (0, 1, 2, 3), res.stderr
    assert res.stderr == ""
    report = json.loads(res.stdout)
    assert report["steward_version"] == __version__
    assert report["exit_code"] == res.returncode
    names = {r["check"] for r in report["results"]}
    assert {"memory", "load", "zombies", "audit"} <= names, names  # psutil 5.8 read them
    memory = next(r for r in report["results"] if r["check"] == "memory")
    assert memory["status"] != "UNKNOWN" and memory["metrics"][0]["name"] == "used", memory
