"""The page as an administrator reaches it: in a systemd container, cockpit.socket started by
systemd, a real PAM login of a non-root user in group wheel with sudo, Cockpit's superuser
escalation through sudo with the login password; and what a user without it sees. Chromium
runs on the host inside the container's network namespace."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cockpit.cdp import Browser, chromium
from tests.conftest import QUIET, REPO, needs_root
from tests.integration.boxed import install
from tests.integration.nspawn import DEFAULT_PACKAGES, Container, build_rootfs, nspawn_available

pytestmark = [pytest.mark.slow, pytest.mark.root, needs_root()]
PACKAGES = (*DEFAULT_PACKAGES, "cockpit-ws", "cockpit-bridge", "cockpit-system", "sudo")
SHELL = "https://127.0.0.1:9090/"
PAGE = SHELL + "cockpit/@localhost/steward/index.html"


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    why = nspawn_available()
    if why or chromium() is None:
        pytest.skip(why or "needs chromium")
    with Container(build_rootfs(PACKAGES)) as c:
        install(c)
        assert c.root is not None
        shutil.copytree(REPO / "cockpit", c.root / "usr/share/cockpit/steward")
        c.write_file("/etc/steward/steward.toml", QUIET + '[checks.port]\ntargets = '
                     '["127.0.0.1:1"]\ninterval = 2\n', mode=0o600)
        c.write_file("/etc/sudoers.d/wheel", "%wheel ALL=(ALL) ALL\n", mode=0o440)
        c.run(["groupadd", "-f", "wheel"])
        c.run(["useradd", "-m", "-G", "wheel", "-s", "/bin/bash", "admin"])
        c.run(["useradd", "-m", "-s", "/bin/bash", "clerk"])
        c.run(["sh", "-c", "echo admin:Adm1n-pass | chpasswd && echo clerk:Cl3rk-pass | chpasswd"])
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "start", "steward", "cockpit.socket"], timeout=60)
        yield c


def login(box: Container, tmp: Path, user: str, password: str, admin: bool) -> Browser:
    """A PAM login through Cockpit's login page. ``admin``: ask for administrative access,
    as Cockpit remembers it once chosen (localStorage superuser:USER = any): the session's
    superuser bridge then runs sudo with the login password."""
    b = Browser(tmp / f"profile-{user}", prefix=("nsenter", "-t", str(box.pid), "-n"),
                extra=("--ignore-certificate-errors",))
    try:
        b.open(SHELL)
        b.wait("document.getElementById('login-user-input')", timeout=30)
    except BaseException:
        b.close()
        raise
    # The form is in the HTML before login.js binds it: under load a first click can be
    # lost, so submit again while the login page stays.
    for attempt in range(3):
        b.js(f"localStorage.setItem('superuser:{user}', {'any' if admin else 'none'!r});"
             f"document.getElementById('login-user-input').value = {user!r};"
             f"document.getElementById('login-password-input').value = {password!r};"
             "document.getElementById('login-button').click()")
        try:
            # Logged in, the shell replaces the login page (same address).
            b.wait("!document.getElementById('login-user-input')", timeout=15)
            break
        except AssertionError as e:
            if attempt == 2:
                shows = seen(b)
                b.close()  # the caller gets no browser to close
                raise AssertionError(f"{e}; the page shows: {shows}") from None
    return b


def seen(b: Browser) -> str:
    return str(b.js("location.href + ' | ' + document.body.innerText.slice(0, 600)"))


def test_a_wheel_user_logs_in_gets_superuser_and_sees_the_checks(box, tmp_path):
    b = login(box, tmp_path, "admin", "Adm1n-pass", admin=True)
    try:
        b.call("Page.navigate", {"url": PAGE}, session=True)
        try:
            b.wait("document.querySelector('#checks tr[data-check=\"port:127.0.0.1:1\"]')",
                   timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}; the page shows: {seen(b)}\n{box.diagnostics()}") from None
        assert b.js("document.querySelector('#checks tr[data-check=\"port:127.0.0.1:1\"]')"
                    ".children[0].textContent") == "CRIT"
        assert b.js("document.getElementById('banner').hidden")
        b.js("document.getElementById('maint-on').click()")
        b.wait("document.getElementById('maint-state').textContent.includes('whole machine')")
        st = box.run(["steward", "status"]).stdout
        assert "maintenance: whole machine until" in st
    finally:
        b.close()


def test_a_user_without_superuser_is_told_so_not_shown_an_empty_table(box, tmp_path):
    # clerk asks for administrative access too, but is not in wheel: sudo refuses.
    b = login(box, tmp_path, "clerk", "Cl3rk-pass", admin=True)
    try:
        b.call("Page.navigate", {"url": PAGE}, session=True)
        b.wait("document.getElementById('banner').textContent.includes('administrative access')",
               timeout=30)
        assert "administrative access" in b.js(
            "document.querySelector('#checks tbody').textContent")
    finally:
        b.close()
