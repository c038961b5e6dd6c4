"""Fixtures for the dnf tests: the cached repositories, an installroot template per session
and a fresh copy of it per test (see repo.py)."""

from __future__ import annotations

import pytest

from agent.system.commands import CommandRunner
from patch.dnf import Dnf
from tests.patch.repo import Bed, build_repos, copy_bed, make_template, missing_tools


@pytest.fixture(scope="session")
def dnf_template(tmp_path_factory: pytest.TempPathFactory) -> Bed:
    why = missing_tools()
    if why:
        pytest.skip(why)
    repos = build_repos()
    return make_template(tmp_path_factory.mktemp("dnfbed") / "root", repos)


@pytest.fixture
def bed(dnf_template: Bed, tmp_path) -> Bed:
    """An installroot with hello-appl, mailfilter, linux-firmware, postfail, slowpkg and
    cryptopol 1.0 installed; base and updates enabled."""
    return copy_bed(dnf_template, tmp_path / "root")


@pytest.fixture
def dnf(bed: Bed) -> Dnf:
    return Dnf(CommandRunner(), bed.root, timeout=120)
