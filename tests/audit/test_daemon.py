"""Drift under the daemon: a rule that starts failing between two audits is an alert from
``steward run`` (and its recovery another), like any check's."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import start_daemon

FAMILIES_BUT_SECRETS = ["selinux.*", "firewall.*", "sshd.*", "postfix.*", "dovecot.*",
                        "httpd.*", "bind.*", "system.crypto*", "system.listen*",
                        "system.plaintext*", "system.shadow", "system.dkim*", "system.tls*",
                        "system.steward*", "system.security*"]


def _wait_for(path: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = path.read_text(errors="replace") if path.exists() else ""
        if text in seen:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path}:\n{seen[-3000:]}")


def test_a_rule_newly_failing_between_audits_is_alerted_by_the_daemon(tmp_path):
    secret = tmp_path / "sasl_passwd"
    secret.write_text("[relay]:587 user:password\n")
    secret.chmod(0o600)
    skip = ", ".join(f'"{p}"' for p in FAMILIES_BUT_SECRETS)
    proc, log, state = start_daemon(
        tmp_path, "[checks.service]\nenabled = false\n[checks.timesync]\nenabled = false\n"
        "[checks.updates]\nenabled = false\n"
        f"[checks.audit]\ninterval = 1\nskip = [{skip}]\nsecret_files = [\"{secret}\"]\n")
    try:
        _wait_for(state / "status.json", "audit:system.secret_files")
        assert "audit:system.secret_files" not in log.read_text()  # passing: no alert
        secret.chmod(0o644)  # readable by every local user now
        # WARN, not CRIT, when a folder above (pytest's own) keeps others out; it says so
        seen = _wait_for(log, " audit:system.secret_files: ")
        line = next(x for x in seen.splitlines() if " audit:system.secret_files: " in x)
        assert "ALERT" in line and " problem " in line and f"chmod o-rwx {secret}" in line
        secret.chmod(0o600)
        _wait_for(log, "recovery OK audit:system.secret_files")
    finally:
        proc.terminate()
        proc.wait(10)
