"""`steward config default` and the file the RPM installs from it (packaging/steward.toml):
every line a comment, so installing it changes nothing; uncommented, the built-in default."""

from __future__ import annotations

import re
import sys

from agent import __version__
from agent.config import BUILTIN, from_tables
from agent.registry import discover
from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SHIPPED = REPO / "packaging/steward.toml"


def test_the_shipped_config_is_what_steward_config_default_prints(steward):
    proc = steward("config", "default")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# steward {__version__}: /etc/steward/steward.toml")
    # A change of version or of a default needs `steward config default >
    # packaging/steward.toml`.
    assert SHIPPED.read_text() == proc.stdout


def test_the_shipped_config_is_valid_and_all_comments(steward, tmp_path):
    conf = tmp_path / "steward.toml"
    conf.write_text(SHIPPED.read_text())
    conf.chmod(0o600)
    proc = steward("config", "check", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"OK: {conf} is valid")
    assert tomllib.loads(SHIPPED.read_text()) == {}


def test_uncommented_it_is_the_builtin_default(steward, tmp_path):
    text = SHIPPED.read_text()
    opened = re.sub(r"^#(\[[\w.]+\]|\w+ = )", r"\1", text, flags=re.M)
    data = tomllib.loads(opened)
    registry = discover()
    assert set(data["checks"]) == set(registry.checks)  # every check has its table
    assert from_tables(data, "x", registry.checks) == from_tables({}, "x", registry.checks)
    conf = tmp_path / "steward.toml"
    conf.write_text(opened)
    conf.chmod(0o600)
    assert steward("config", "check", "--config", str(conf)).returncode == 0
    assert BUILTIN not in text


def test_the_spec_version_is_the_package_version():
    spec = (REPO / "packaging/steward.spec").read_text()
    assert re.search(r"^Version:\s*(\S+)$", spec, re.M).group(1) == __version__
