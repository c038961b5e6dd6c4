"""``steward usb list --format json``, which the Cockpit page reads, against its schema, on
this machine's real disks (here, not in the Python 3.9 root: see tests/py39root.py)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_steward
from tests.schemas import validate


@pytest.mark.parametrize("flag", [(), ("--all",)])
def test_usb_list_matches_its_schema(flag):
    r = run_steward("usb", "list", *flag, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc, "usb-list.schema.json")
    if flag:
        assert doc["disks"], "steward usb list --all found no disk at all"
