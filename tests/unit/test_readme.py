"""The README's config examples are valid configs: documentation that cannot drift."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

BLOCKS = re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_the_readme_has_config_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_each_readme_config_example_is_valid(n, tmp_path, steward):
    conf = tmp_path / "steward.toml"
    conf.write_text(BLOCKS[n])
    conf.chmod(0o600)
    proc = steward("config", "check", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"OK: {conf} is valid")
