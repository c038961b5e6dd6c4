"""Every output format, parsed back: JSON against its schema, Nagios perfdata against the
plugin guidelines' grammar, Prometheus with prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.model import Metric, Result, Status
from agent.output import FORMATS
from agent.runner import Report

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "agent" / "output" /
                     "report.schema.json").read_text())

REPORT = Report((
    Result("disk:/", Status.OK, "22% used", metrics=(
        Metric("used", 22.5, "%", "85", "95", 0, 100), Metric("free", 85e9, "B", min=0))),
    Result("service:postfix", Status.CRIT, "failed (exit-code), 3 restarts",
           details="postfix.service: ...", remedy="journalctl -u postfix.service",
           metrics=(Metric("restarts", 3, "c", min=0),)),
    Result("port:[::1]:25", Status.WARN, "slow | odd 'quote' = sign",
           metrics=(Metric("connect_time", 0.0123456789, "s", "@0.01:1", "", 0),)),
    Result("load", Status.UNKNOWN, 'weird "label" \\ text'),
    Result("memory", Status.OK, "fine", metrics=(Metric("used", -0.5, "%", "~:90", "10:95"),)),
), started=time.time(), duration=0.123)

LABEL = r"'(?:[^'=]|'')+'|[^'= ]+"
NUM = r"-?[0-9]+(?:\.[0-9]+)?"
RANGE = rf"@?(?:~|{NUM})?:?(?:{NUM})?"
PERF = re.compile(rf"^({LABEL})=({NUM})(s|ms|us|%|B|KB|MB|GB|TB|c)?"
                  rf"(?:;({RANGE})?(?:;({RANGE})?(?:;({NUM})?(?:;({NUM})?)?)?)?)?$")


def test_json_matches_its_published_schema():
    doc = json.loads(FORMATS["json"](REPORT, "host1", False))
    jsonschema.validate(doc, SCHEMA)
    assert doc["status"] == "CRIT" and doc["exit_code"] == 2
    assert [r["check"] for r in doc["results"]][:3] == ["service:postfix", "load", "port:[::1]:25"]
    assert doc["counts"] == {"OK": 2, "WARN": 1, "CRIT": 1, "UNKNOWN": 1}


def _perf_items(text: str) -> list[str]:
    # Split on spaces outside quotes.
    return re.findall(r"(?:'(?:[^']|'')*'|[^ '])+", text)


def test_nagios_status_line_and_perfdata_follow_the_plugin_guidelines():
    out = FORMATS["nagios"](REPORT, "host1", False).splitlines()
    head, _, perf = out[0].partition(" | ")
    assert head.startswith("STEWARD CRITICAL - 1 critical, 1 warning, 1 unknown of 5: "
                           "service:postfix failed")
    assert "|" not in head
    items = _perf_items(perf)
    assert len(items) == 5
    parsed = {}
    for item in items:
        m = PERF.match(item)
        assert m, f"bad perfdata {item!r}"
        parsed[m.group(1)] = m.groups()[1:]
    assert parsed["'disk:/ used'"] == ("22.5", "%", "85", "95", "0", "100")
    assert parsed["'disk:/ free'"] == ("85000000000", "B", "", "", "0", None)
    assert parsed["'port:[::1]:25 connect_time'"][:3] == ("0.012346", "s", "@0.01:1")
    assert parsed["'memory used'"][:4] == ("-0.5", "%", "~:90", "10:95")
    assert out[1] == "[CRITICAL] service:postfix: failed (exit-code), 3 restarts"
    assert len(out) == 6 and all("|" not in line for line in out[1:])


def test_prometheus_textfile_parses_with_prometheus_client():
    text = FORMATS["prometheus"](REPORT, "host1", False)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    status = {s.labels["check"]: s.value for s in fams["steward_check_status"].samples}
    assert status == {"disk:/": 0, "service:postfix": 2, "port:[::1]:25": 1, "load": 3,
                      "memory": 0}
    assert fams["steward_disk_used"].samples[0].value == 22.5
    assert fams["steward_service_restarts"].samples[0].labels == {"check": "service:postfix"}
    assert fams["steward_status"].samples[0].value == 2
    assert fams["steward_last_run_duration_seconds"].samples[0].value == pytest.approx(0.123)


def test_text_is_worst_first_with_remedies_and_no_colour_off_a_tty():
    out = FORMATS["text"](REPORT, "host1", False)
    lines = out.splitlines()
    assert lines[0].startswith("CRIT    service:postfix")
    assert "remedy: journalctl -u postfix.service" in out
    assert "\033[" not in out
    assert lines[-1].startswith("host1: CRIT - 5 results: 2 OK, 1 WARN, 1 CRIT, 1 UNKNOWN")
    assert "\033[1;31mCRIT" in FORMATS["text"](REPORT, "host1", True)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_real_run_renders_in_every_format_and_exits_with_the_worst_status(steward, fmt,
                                                                             tmp_path):
    proc = steward("check", "--format", fmt, "--skip", "service", "--skip", "port")
    assert proc.returncode in (0, 1, 2, 3), proc.stderr
    assert "Traceback" not in proc.stderr
    as_json = json.loads(steward("check", "--format", "json", "--skip", "service", "--skip",
                                 "port").stdout)
    jsonschema.validate(as_json, SCHEMA)
    if fmt == "prometheus":
        fams = {f.name for f in text_string_to_metric_families(proc.stdout)}
        assert {"steward_check_status", "steward_disk_used", "steward_memory_used"} <= fams
    if fmt == "nagios":
        word = re.match(r"STEWARD (OK|WARNING|CRITICAL|UNKNOWN) - ", proc.stdout).group(1)
        assert ["OK", "WARNING", "CRITICAL", "UNKNOWN"].index(word) == proc.returncode


def test_output_file_is_written_atomically_and_replaces_the_old_one(steward, tmp_path):
    out = tmp_path / "steward.prom"
    out.write_text("stale\n")
    proc = steward("check", "--format", "prometheus", "--output", str(out), "--only", "memory")
    assert proc.stdout == ""
    assert proc.returncode in (0, 1, 2)
    text = out.read_text()
    assert "stale" not in text
    assert 'steward_check_status{check="memory"}' in text
    assert [p.name for p in tmp_path.iterdir()] == ["steward.prom"], "no temp file left behind"


def test_output_into_a_missing_folder_is_refused_before_running(steward, tmp_path):
    proc = steward("check", "--output", str(tmp_path / "nope" / "x.prom"))
    assert proc.returncode == 2
    assert f"folder {tmp_path / 'nope'} does not exist" in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_only_matching_nothing_is_an_error_not_a_green_run(steward):
    proc = steward("check", "--only", "dsik*")
    assert proc.returncode == 2
    assert "--only dsik*: matches no result of the enabled checks (audit, certrenew, disk, " \
        in proc.stderr
