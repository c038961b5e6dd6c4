"""Config validation: every bad input is one clear error (file, key, value, accepted), exit 2."""

from __future__ import annotations

import os
import re
import string
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import BUILTIN, ConfigError, from_tables, load
from agent.registry import discover

REGISTRY = discover()

# (file text, what stderr must say) — the documented error for each kind of mistake.
BAD = [
    ("[chekcs.disk]\n",
     r"chekcs: unknown table \(accepted: checks, restart, alerts, notify, backup, patch, usb\)"),
    ("[checks.dsk]\nwarn = '80'\n",
     r"checks\.dsk: unknown check \(accepted: audit, certrenew, disk, .*load, .*memory, "),
    ("[checks.disk]\nwran = '80'\n",
     r"checks\.disk\.wran: unknown key \(accepted: enabled, timeout, interval, tolerance, "
     r"depends_on, warn, crit"),
    ("[checks.disk]\nenabled = 'yes'\n",
     r'checks\.disk\.enabled = "yes": not true or false \(accepted: true or false\)'),
    ("[checks.disk]\nwarn = 'abc'\n", r'checks\.disk\.warn = "abc": .*not a number.*accepted: a '
     r"Nagios range"),
    ("[checks.disk]\ncrit = '95:90'\n", r'checks\.disk\.crit = "95:90": range .* starts above'),
    ("[checks.memory]\ntimeout = 0\n",
     r"checks\.memory\.timeout = 0: out of range \(accepted: a number from 0\.1 to 3600\)"),
    ("[checks.service]\nmissing = 'ignore'\n",
     r'checks\.service\.missing = "ignore": .*accepted: "crit", "warn", "skip"'),
    ("[checks.service]\nunits = 'postfix'\n", r'checks\.service\.units = "postfix": not a list'),
    ("[checks.service]\nunits = ['postfix', 3]\n",
     r"checks\.service\.units = \['postfix', 3\]: item 2 \(3\): not a non-empty string"),
    ("[checks.port]\ntargets = ['localhost']\n",
     r'checks\.port\.targets = .*item 1 .*not host:port.*accepted: a list without repeats, '
     r'each item "host:port"'),
    ("[checks.port]\ntargets = ['::1:25']\n", r"IPv6 addresses need brackets"),
    ("[checks.port]\ntargets = ['a:25', 'b:25', 'a:25']\n", r'item 3 \("a:25"\) is listed twice'),
    ("[checks.load]\naverage = 10\n", r"checks\.load\.average = 10: not 1, 5 or 15"),
    ("checks = 5\n", r"checks = 5: must be a table"),
    ("[checks]\ndisk = 3\n", r"checks\.disk = 3: must be a table"),
    ("[checks.disk\n", r"not valid TOML: .*line 1"),
    ("[checks.disk]\nwarn = 80\nwarn = 90\n", r"not valid TOML"),
]


def _write(tmp_path, text, mode=0o600):
    path = tmp_path / "steward.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("text, expected", BAD)
def test_each_bad_config_gives_its_documented_error_and_exit_2(tmp_path, steward, text,
                                                                expected):
    path = _write(tmp_path, text)
    proc = steward("config", "check", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert str(path) in proc.stderr
    assert re.search(expected, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_steward_check_refuses_a_bad_config_before_running_anything(tmp_path, steward):
    path = _write(tmp_path, "[checks.disk]\nwarn = 'x'\n")
    proc = steward("check", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "config error" in proc.stderr


@pytest.mark.parametrize("make, expected", [
    (lambda p: p, r"no such file"),
    (lambda p: p.parent, r"is a directory"),
])
def test_an_unreadable_config_path_is_a_clear_error(tmp_path, steward, make, expected):
    proc = steward("config", "check", "--config", str(make(tmp_path / "absent.toml")))
    assert proc.returncode == 2
    assert re.search(expected, proc.stderr)


def test_a_config_that_is_not_utf8_is_a_clear_error(tmp_path, steward):
    path = tmp_path / "steward.toml"
    path.write_bytes(b"[checks.disk]\nwarn = '\xff\xfe'\n")
    path.chmod(0o600)
    proc = steward("config", "check", "--config", str(path))
    assert proc.returncode == 2
    assert "not valid TOML" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal applies when running as root")
@pytest.mark.parametrize("mode, owner, expected", [
    (0o664, 0, r"mode 0664 lets group or others write it.*accepted: chmod go-w"),
    (0o602, 0, r"mode 0602"),
    (0o600, 65534, r"owned by uid 65534, not root.*accepted: chown root:"),
])
def test_as_root_a_config_others_can_change_is_refused(tmp_path, steward, mode, owner,
                                                       expected):
    path = _write(tmp_path, "[checks.disk]\nwarn = '80'\n", mode)
    os.chown(path, owner, -1)
    proc = steward("config", "check", "--config", str(path))
    assert proc.returncode == 2
    assert re.search(expected, proc.stderr), proc.stderr


def test_a_good_config_is_valid_and_shown_with_its_values(tmp_path, steward):
    path = _write(tmp_path, "[checks.disk]\nwarn = '70'\nexclude = ['/boot*']\n"
                  "[checks.zombies]\nenabled = false\n"
                  "[checks.port]\ntargets = ['127.0.0.1:25', '[::1]:993']\n")
    proc = steward("config", "check", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    n = len(REGISTRY.checks)
    assert f"OK: {path} is valid ({n} checks, {n - 1} enabled)" in proc.stdout
    shown = steward("config", "show", "--config", str(path))
    assert shown.returncode == 0
    assert 'warn = "70"' in shown.stdout
    assert 'exclude = ["/boot*"]' in shown.stdout
    assert 'targets = ["127.0.0.1:25", "[::1]:993"]' in shown.stdout
    assert "[checks.zombies]\nenabled = false" in shown.stdout


def test_config_show_output_is_itself_a_valid_config(tmp_path, steward):
    shown = steward("config", "show", "--config", str(_write(tmp_path, "")))
    assert shown.returncode == 0, shown.stderr
    again = _write(tmp_path, shown.stdout)
    proc = steward("config", "check", "--config", str(again))
    assert proc.returncode == 0, proc.stderr


def test_no_file_means_the_builtin_default_with_every_check_enabled():
    cfg = load(None, REGISTRY.checks) if not os.path.exists("/etc/steward/steward.toml") \
        else from_tables({}, BUILTIN, REGISTRY.checks)
    assert cfg.source == BUILTIN
    assert {"service", "disk", "memory", "swap", "load", "zombies", "timesync", "port",
            "notify", "smtp", "imap", "pop3", "http"} <= set(cfg.checks)
    assert all(o.enabled for o in cfg.checks.values())
    assert cfg.checks["disk"].warn.text == "85"


NAMES = ["checks", "disk", "service", "port", "memory", "load", "enabled", "timeout", "warn",
         "crit", "units", "targets", "average", "missing", "exclude", "mounts"]
keys = st.one_of(st.sampled_from(NAMES), st.text(string.ascii_letters + "._-", min_size=1,
                                                 max_size=8))
scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=12), st.sampled_from(["80", "10:", "@1:2", "~:5", "crit",
                                                           "localhost:25", "[::1]:22"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
documents = st.dictionaries(keys, values, max_size=4) | st.fixed_dictionaries(
    {"checks": st.dictionaries(st.sampled_from(NAMES[1:6]) | keys,
                               st.dictionaries(keys, values, max_size=5), max_size=4)})


def _load_text(text):
    """Load ``text`` as a config file; ConfigError is the only failure allowed."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, encoding="utf-8") as fh:
        fh.write(text)
    try:
        os.chmod(fh.name, 0o600)
        load(Path(fh.name), REGISTRY.checks)
    except ConfigError as e:
        assert str(e).startswith(fh.name)
    finally:
        os.unlink(fh.name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_generated_toml_is_either_a_config_or_a_config_error(doc):
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return  # not representable as TOML
    _load_text(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable + "äß€", max_size=200))
def test_arbitrary_text_is_either_a_config_or_a_config_error(text):
    _load_text(text)


def test_only_still_validates_every_table_the_file_has(tmp_path, steward):
    path = _write(tmp_path, "[checks.disk]\nwarn = 'x'\n")
    proc = steward("check", "--config", str(path), "--only", "memory")
    assert proc.returncode == 2
    assert "checks.disk.warn" in proc.stderr
