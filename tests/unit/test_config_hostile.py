"""Hostile configs: every one is a short, clear error with exit 2 (or a valid config), never a
traceback, never the whole of a huge value echoed back."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import cli
from agent.config import SECTIONS
from agent.quote import quote
from agent.registry import discover
from tests.conftest import run_steward

MB2 = 2_000_000
LIMIT = 4096  # bytes of output any config error may take


def _secret(path: Path, mode: int = 0o600) -> Path:
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


def _email(pw: str) -> str:
    return ('[notify.email]\nto = ["admin@example.com"]\nrelays = ["smtps://127.0.0.1:465"]\n'
            f'username = "u"\npassword_file = "{pw}"\n')


# (name, a function of tmp_path giving the config's path, what stderr must say)
def _write(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "steward.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


HOSTILE = [
    ("2 MB key", lambda t: _write(t / "c", "[checks.disk]\n" + "k" * MB2 + " = 1\n"),
     r"checks\.disk\.k{60,}…\(2000012 bytes\): unknown key \(accepted: enabled, "),
    ("2 MB table name", lambda t: _write(t / "c", "[" + "t" * MB2 + "]\n"),
     r": t{60,}…\(2000000 bytes\): unknown table"),
    ("2 MB string value", lambda t: _write(t / "c", "[checks.disk]\nmounts = '" + "/" * MB2
                                           + "'\n"),
     r'checks\.disk\.mounts = "/{60,}…\(2000000 bytes\): not a list'),
    ("1000-deep arrays", lambda t: _write(t / "c", "deep = " + "[" * 1000 + "]" * 1000 + "\n"),
     r"steward\.toml: arrays or tables nested more than 16 deep"),
    ("300-deep arrays in a check", lambda t: _write(
        t / "c", "[checks.disk]\nexclude = " + "[" * 300 + "]" * 300 + "\n"),
     r"checks\.disk\.exclude: arrays or tables nested more than 16 deep"),
    ("200 kB range value", lambda t: _write(t / "c", "[checks.disk]\nwarn = '" + "9" * 200_000
                                            + "x'\n"),
     r'checks\.disk\.warn = "9{60,}…\(200001 bytes\): .*is not a number \(accepted: a Nagios'),
    ("200 kB address", lambda t: _write(t / "c", "[checks.maildns]\nsending_ips = ['"
                                        + "1" * 200_000 + "']\n"),
     r"item 1 \(\"1{60,}…\(200000 bytes\)\): not an IP address"),
    ("nonexistent password file", lambda t: _write(t / "c", _email("/nonexistent/secret")),
     r'notify\.email\.password_file = "/nonexistent/secret": no such file; fix: write the '
     r"password into /nonexistent/secret \(chmod 600 /nonexistent/secret\)"),
    ("0644 password file", lambda t: _write(t / "c", _email(str(_secret(t / "pw", 0o644)))),
     r'notify\.email\.password_file = ".*/pw": mode 0644 lets others read the secret \(want '
     r"0600\); fix: chmod 600 .*/pw"),
]


def _fifo(t: Path) -> Path:
    path = t / "steward.toml"
    os.mkfifo(path, 0o600)  # opening it for reading would wait for a writer forever
    return path


HOSTILE.append(("a FIFO", _fifo, r"steward\.toml: not a regular file"))


def _world_writable(t: Path) -> Path:
    path = _write(t / "ww", "[checks.disk]\nwarn = '80'\n")
    (t / "ww").chmod(0o777)
    return path


if os.geteuid() == 0:  # the directory rule applies to a steward running as root
    HOSTILE.append(("world-writable directory", _world_writable,
                    r"steward\.toml: its directory .*/ww has mode 0777: group or others could "
                    r"replace the file; refusing it while running as root \(accepted: chmod "
                    r"go-w .*/ww\)"))


@pytest.mark.parametrize("make, expected", [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_steward_config_check_gives_a_short_clear_error_for_each_hostile_config(
        tmp_path, make, expected):
    path = make(tmp_path)
    proc = run_steward("config", "check", "--config", str(path))
    assert proc.returncode == 2, proc.stderr[:2000]
    assert proc.stdout == ""
    assert len(proc.stderr.encode()) < 1024, proc.stderr[:2000]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"steward: config error: {path}")
    assert re.search(expected, proc.stderr), proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the directory rule applies as root")
def test_a_config_in_a_sticky_directory_owned_by_root_is_accepted(tmp_path):
    # Like /tmp (1777): others cannot rename or remove a file they do not own there.
    folder = tmp_path / "sticky"
    path = _write(folder, "[checks.disk]\nwarn = '80'\n")
    folder.chmod(0o1777)
    proc = run_steward("config", "check", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    os.chown(folder, 65534, -1)  # ... but not one someone else owns
    proc = run_steward("config", "check", "--config", str(path))
    assert proc.returncode == 2
    assert f"its directory {folder} is owned by uid 65534, not root" in proc.stderr


def test_quote_cuts_a_long_value_and_says_how_long_it_was():
    assert quote("abc") == '"abc"'
    assert quote('a"b') == '"a\\"b"'
    assert quote(["x", 3]) == "['x', 3]"
    cut = quote("é" * 1000)
    assert cut == '"' + "é" * 79 + "…(2000 bytes)"
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert quote(deep) == "<list nested too deeply to show>"


# -- the loader fuzzed through the command line's own entry point, in this process ----------

REGISTRY = discover()
OPTION_KEYS = sorted({key for cls in [*(c.Options for c in REGISTRY.checks.values()),
                                       *SECTIONS.values()]
                      for key in (f.metadata.get("key") or f.name
                                  for f in dataclasses.fields(cls))})
TABLES = ["checks", *(f"checks.{n}" for n in sorted(REGISTRY.checks)), *SECTIONS, "notify"]
PLAUSIBLE = ['"80"', '"10:"', '"@1:2"', '"~:5"', "5", "0.5", "true", '"a@b.example"',
             '"smtps://127.0.0.1:465"', '["postfix"]', '"/tmp"', '"Sun 03:00"',
             '"127.0.0.1:25"', '["127.0.0.1:25", "[::1]:993"]', '{ address = "a@b.c" }',
             '[1, 2]', '"crit"', '"/nonexistent/secret"', '"example.com"']


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string (but for lone surrogates, which TOML refuses).
    return json.dumps(text, ensure_ascii=False)


def _huge(n: int, unit: str = "x") -> str:
    return unit * n


# Mostly just over the limit; now and then huge (the 2 MB cases run as subprocesses above).
long_text = st.tuples(st.sampled_from([81, 82, 90, 120, 300, 1000, 3000] * 4 + [200_000]),
                      st.sampled_from("x9é:/@.")).map(
    lambda t: _huge(*t))
keys = st.one_of(st.sampled_from(OPTION_KEYS), st.text(min_size=1, max_size=10), long_text)
scalar = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.integers(-2**70, 2**70).map(str),
    st.floats().map(lambda f: "nan" if f != f else repr(f)),
    st.text(max_size=20).map(_toml_string),
    long_text.map(_toml_string),
)
depth = st.one_of(st.integers(1, 20), st.sampled_from([100, 400, 1000, 1500]))
nested = st.tuples(depth, st.sampled_from(["[", "{ a = "])).map(
    lambda t: ("[" * t[0] + "]" * t[0]) if t[0] and t[1] == "[" else
    "{ a = " * min(t[0], 400) + "1" + " }" * min(t[0], 400))
value = st.one_of(scalar, nested,
                  st.lists(scalar, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                  st.dictionaries(st.sampled_from(OPTION_KEYS), scalar, max_size=3).map(
                      lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }"))
line = st.tuples(keys, value).map(lambda kv: f"{_toml_string(kv[0])} = {kv[1]}")
table = st.tuples(st.one_of(st.sampled_from(TABLES), long_text, st.text(max_size=8)),
                  st.lists(line, max_size=4)).map(
    lambda t: f"[{t[0] if t[0] in TABLES else _toml_string(t[0])}]\n" + "\n".join(t[1]))
documents = st.one_of(
    st.lists(table, max_size=4).map("\n".join),
    st.lists(line, max_size=3).map("\n".join),
    st.text(max_size=200),
)


def _main(argv: list[str]) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: object = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "steward.toml"


# Each example checks its document and 9 cuts of it (a file cut short anywhere: inside a
# string, a header, an array), so 1,000 examples are 10,000 configs at a tenth of hypothesis's
# own cost per config.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
CUTS = 9


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(text=documents, cuts=st.lists(st.integers(0, 2**16), min_size=CUTS, max_size=CUTS))
def test_ten_thousand_generated_configs_each_exit_0_or_2_briefly_without_traceback(
        fuzz_file, text, cuts):
    for config in [text, *(text[:len(text) * c >> 16] for c in cuts)]:
        fuzz_file.write_text(config, encoding="utf-8", errors="surrogatepass")
        fuzz_file.chmod(0o600)
        started = time.monotonic()
        code, out, err = _main(["config", "check", "--config", str(fuzz_file)])
        took = time.monotonic() - started
        assert code in (0, 2), (code, err[:2000])
        assert "Traceback" not in err and "Traceback" not in out
        assert len(out.encode()) + len(err.encode(errors="replace")) < LIMIT, err[:2000]
        if code == 2:
            assert err.startswith(f"steward: config error: {fuzz_file}"), err[:2000]
        # Generous: a config check takes about 2 ms here; this catches a parser gone quadratic.
        assert took < 1.0, (took, config[:200])
