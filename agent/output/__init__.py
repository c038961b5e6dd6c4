"""Renderings of a check report: text for people, JSON for scripts, Nagios and Prometheus."""

from __future__ import annotations

from collections.abc import Callable

from agent.output import jsonout, nagios, prometheus, text
from agent.runner import Report

FORMATS: dict[str, Callable[[Report, str, bool], str]] = {
    "text": text.render,
    "json": jsonout.render,
    "nagios": nagios.render,
    "prometheus": prometheus.render,
}

