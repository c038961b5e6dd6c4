from __future__ import annotations

import time

import pytest

from agent.system.commands import (
    CommandError,
    CommandNotFound,
    CommandRunner,
    CommandTimeout,
)


def test_runs_argv_with_c_locale_and_captures_output():
    done = CommandRunner().run(["sh", "-c", 'echo "$LC_ALL"; echo oops >&2'])
    assert done.stdout == "C\n"
    assert done.stderr == "oops\n"
    assert done.returncode == 0


def test_a_command_line_string_is_refused():
    with pytest.raises(TypeError, match="argv"):
        CommandRunner().run("echo hi")  # type: ignore[arg-type]


def test_nonzero_exit_raises_with_argv_code_and_stderr_tail():
    with pytest.raises(CommandError) as err:
        CommandRunner().run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
    assert err.value.returncode == 3
    assert err.value.argv[0] == "sh"
    assert "the real reason" in err.value.stderr_tail
    assert "exited 3" in str(err.value)


def test_exit_codes_that_are_answers_do_not_raise():
    assert CommandRunner().run(["sh", "-c", "exit 100"], ok_codes=(0, 100)).returncode == 100


def test_overrun_is_killed_at_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"timed out after 0\.3 s"):
        CommandRunner().run(["sleep", "10"], timeout=0.3)
    assert time.monotonic() - t0 < 3


def test_missing_program_is_a_typed_error():
    with pytest.raises(CommandNotFound, match="command not found"):
        CommandRunner().run(["steward-no-such-program"])


def test_which_looks_on_the_runners_own_path(tmp_path):
    assert CommandRunner({"PATH": "/usr/bin:/bin"}).which("sh") in ("/usr/bin/sh", "/bin/sh")
    assert CommandRunner({"PATH": str(tmp_path)}).which("sh") is None
