"""The JSON documents the Cockpit page reads, from the real commands, against their published
schemas (agent/output/*.schema.json)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.audit.test_cli import _audit, _system
from tests.conftest import QUIET, REPO, run_steward, start_daemon

SCHEMAS = REPO / "agent" / "output"


def schema(name: str) -> dict[str, Any]:
    doc = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    if name == "status.schema.json":  # the one cross-file $ref, resolved here
        doc["properties"]["maintenance"] = schema("maintenance.schema.json")
    return dict(doc)


def test_status_and_maintenance_of_a_running_daemon_match_their_schemas(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proc, _, state = start_daemon(tmp_path, QUIET + f'[checks.port]\ntargets = '
                                      f'["127.0.0.1:{port}"]\ninterval = 1\n')
        try:
            deadline = time.monotonic() + 20
            while not (state / "status.json").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            on = run_steward("maintenance", "on", "postfix.service", "--for", "5m",
                             "--format", "json", "--state-dir", str(state))
            assert on.returncode == 0, on.stderr
            m = json.loads(on.stdout)
            jsonschema.validate(m, schema("maintenance.schema.json"))
            assert m["active"] and 290 < m["units"]["postfix.service"] - time.time() <= 300
            r = run_steward("status", "--format", "json", "--state-dir", str(state))
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            jsonschema.validate(doc, schema("status.schema.json"))
            assert doc["running"] and doc["checks"][f"port:127.0.0.1:{port}"]["status"] == "OK"
            assert "[--json]" not in run_steward("status", "--help").stdout  # kept, unadvertised
            assert json.loads(run_steward("status", "--json", "--state-dir",
                                          str(state)).stdout)["pid"] == doc["pid"]
        finally:
            proc.terminate()
            proc.wait(10)
    gone = run_steward("status", "--format", "json", "--state-dir", str(state))
    assert gone.returncode == 3 and json.loads(gone.stdout)["running"] is False
    nothing = run_steward("status", "--format", "json", "--state-dir", str(tmp_path / "none"))
    assert nothing.returncode == 3
    jsonschema.validate(json.loads(nothing.stdout), schema("status.schema.json"))


def test_the_outbox_lists_a_mail_no_relay_took_with_its_error(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: the relay refuses
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    conf = tmp_path / "steward.toml"
    conf.write_text(f'[notify.email]\nto = ["admin@example.com"]\nrelays = '
                    f'["smtp://127.0.0.1:{port}"]\ntimeout = 2\nlanguage = "ja"\n')
    conf.chmod(0o600)
    args = ("--config", str(conf), "--state-dir", str(tmp_path / "state"))
    assert run_steward("notify", "test", *args).returncode == 1
    r = run_steward("notify", "outbox", "--format", "json", *args)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema("outbox.schema.json"))
    assert doc["recipients"] == ["admin@example.com"] and doc["language"] == "ja"
    [m] = doc["queued"]
    assert m["attempts"] == 1 and "refused" in m["last_error"].lower() and m["subject"]
    text = run_steward("notify", "outbox", *args).stdout
    assert "1 mail(s) waiting" in text and m["subject"] in text


def test_the_audit_keeps_a_score_history_in_its_schema(tmp_path):
    root = _system(tmp_path / "root")
    docs = [json.loads(_audit(tmp_path, root, "--format", "json").stdout) for _ in range(2)]
    for doc in docs:
        jsonschema.validate(doc["audit"], schema("audit.schema.json")["properties"]["audit"])
        jsonschema.validate({k: v for k, v in doc.items() if k != "audit"},
                            schema("report.schema.json"))
    history = docs[1]["audit"]["history"]
    assert len(history) == 2 and history[-1]["score"] == docs[1]["audit"]["score_percent"]


def test_backup_list_matches_its_schema(tmp_path):
    src, target = tmp_path / "src", tmp_path / "target"
    (src / "etc").mkdir(parents=True)
    target.mkdir()
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    made = run_steward("backup", "create", "--source", str(src), "--target", str(target),
                       "--state-dir", str(tmp_path / "state"), timeout=120)
    if made.returncode != 0:
        pytest.fail(made.stderr)
    r = run_steward("backup", "list", "--format", "json", "--target", str(target))
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema("backup-list.schema.json"))
    assert len(doc["generations"]) == 1 and doc["generations"][0]["verified"] is True


def test_a_bad_mail_language_is_refused_naming_the_key(tmp_path: Path):
    conf = tmp_path / "steward.toml"
    conf.write_text('[notify.email]\nlanguage = "fr"\n')
    conf.chmod(0o600)
    r = run_steward("config", "check", "--config", str(conf))
    assert r.returncode == 2 and "language" in r.stderr and '"ja"' in r.stderr.replace("'", '"')
    assert "Traceback" not in r.stderr


# What each command the page spawns prints with --format json, by its schema; the two the
# page reads as text are named apart.
PAGE_JSON = {
    ("status",): "status.schema.json", ("check",): "report.schema.json",
    ("maintenance",): "maintenance.schema.json", ("audit",): "audit.schema.json",
    ("usb", "list"): "usb-list.schema.json", ("backup", "list"): "backup-list.schema.json",
    ("backup", "last"): "backup-last.schema.json", ("backup", "start"): "backup-start.schema.json",
    ("patch", "check"): "patch-check.schema.json", ("patch", "last"): "patch-last.schema.json",
    ("notify", "outbox"): "outbox.schema.json",
}
PAGE_TEXT = {("reset",), ("notify", "test")}
GROUPS = {"backup", "patch", "usb", "notify"}  # commands with subcommands


def test_every_command_the_page_spawns_has_a_schema_and_a_test_validating_it():
    import re

    spawned = set()
    for js in sorted((REPO / "cockpit").glob("*.js")):
        for first, second in re.findall(r'\[\s*"([a-z]+)"(?:\s*,\s*"([a-z-]+)")?',
                                        js.read_text()):
            if first == "steward":  # util.js: ["steward"].concat(args)
                continue
            spawned.add((first, second) if first in GROUPS else (first,))
    assert spawned == set(PAGE_JSON) | PAGE_TEXT, spawned
    tests = "".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for name in PAGE_JSON.values():
        assert (SCHEMAS / name).exists(), name
        assert re.search(rf'(validate\(|schema\()[^)\n]*"{re.escape(name)}"', tests), \
            f"no test validates real output against {name}"
