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
    text = BLOCKS[n]
    # A password_file must exist (mode 0600) when the config loads: give the example one.
    for path in re.findall(r'password_file = "([^"]+)"', text):
        secret = tmp_path / "secret"
        secret.write_text("s3cret\n")
        secret.chmod(0o600)
        text = text.replace(f'"{path}"', f'"{secret}"')
    conf.write_text(text)
    conf.chmod(0o600)
    proc = steward("config", "check", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"OK: {conf} is valid")
