"""Every English text of the Cockpit page has its Japanese translation in po.ja.js, and the page
puts nothing on screen through innerHTML (values are text)."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO

PAGE = REPO / "cockpit"


def _english() -> set[str]:
    found = set(re.findall(r'data-t="([^"]+)"', (PAGE / "index.html").read_text()))
    for js in ("util.js", "reports.js", "tabs.js", "steward.js"):
        found |= set(re.findall(r'_\("((?:[^"\\]|\\.)*)"\)', (PAGE / js).read_text()))
    return found


def _japanese() -> dict[str, str]:
    text = (PAGE / "po.ja.js").read_text()
    pairs = re.findall(r'^ ("(?:[^"\\]|\\.)*"): \[null, ("(?:[^"\\]|\\.)*")\],?$', text, re.M)
    return {json.loads(k): json.loads(v) for k, v in pairs}


def test_every_page_text_is_translated_to_japanese():
    english, ja = _english(), _japanese()
    assert len(english) > 80
    assert sorted(english - set(ja)) == []
    assert sorted(set(ja) - english) == []  # no stale translations either
    # Placeholders survive translation.
    for en, tr in ja.items():
        assert sorted(re.findall(r"\$\d", en)) == sorted(re.findall(r"\$\d", tr)), en


def test_no_script_puts_html_on_the_page():
    for js in PAGE.glob("*.js"):
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write",
                             js.read_text()), js
    assert "<script>" not in (PAGE / "index.html").read_text()  # Cockpit's CSP refuses them
