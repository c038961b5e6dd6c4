"""What every family reads the audited system through: paths below the sysroot with symbolic
links followed inside it (never out to the host), globs, and the shared rule loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit.base import Context, Rules, Unreadable, Verdict, unknown
from checks.audit.options import AuditOptions


def context(root: Path) -> Context:
    return Context(root, AuditOptions(), CommandRunner())


def write(root: Path, path: str, text: str = "x\n") -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def link(root: Path, path: str, target: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


@pytest.fixture
def el9(tmp_path: Path) -> Path:
    """EL9's absolute links: the crypto policy back-ends and the CA bundle."""
    write(tmp_path, "/usr/share/crypto-policies/DEFAULT/opensshserver.txt", "Ciphers aes\n")
    link(tmp_path, "/etc/crypto-policies/back-ends/opensshserver.config",
         "/usr/share/crypto-policies/DEFAULT/opensshserver.txt")
    write(tmp_path, "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "BUNDLE\n")
    link(tmp_path, "/etc/pki/tls/cert.pem", "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem")
    return tmp_path


def test_an_absolute_link_resolves_inside_the_sysroot(el9: Path) -> None:
    ctx = context(el9)
    assert ctx.real_path("/etc/pki/tls/cert.pem") == \
        el9 / "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
    assert ctx.read("/etc/pki/tls/cert.pem") == "BUNDLE\n"
    assert ctx.read("/etc/crypto-policies/back-ends/opensshserver.config") == "Ciphers aes\n"
    assert ctx.exists("/etc/pki/tls/cert.pem")
    assert ctx.path("/etc/pki/tls/cert.pem") == el9 / "etc/pki/tls/cert.pem"  # not followed


def test_a_linked_folder_is_followed_inside_the_sysroot(el9: Path) -> None:
    link(el9, "/etc/pki/tls/certs", "/etc/pki/ca-trust/extracted/pem")
    link(el9, "/etc/pki/relative", "ca-trust/extracted/./pem/../pem")
    ctx = context(el9)
    assert ctx.read("/etc/pki/tls/certs/tls-ca-bundle.pem") == "BUNDLE\n"
    assert ctx.read("/etc/pki/relative/tls-ca-bundle.pem") == "BUNDLE\n"
    assert ctx.glob("/etc/pki/tls/certs/*.pem") == ["/etc/pki/tls/certs/tls-ca-bundle.pem"]


def test_dot_dot_and_links_cannot_leave_the_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root, "/etc/passwd", "audited\n")
    write(tmp_path, "/etc/passwd", "outside\n")  # next to the sysroot, never to be read
    link(root, "/etc/up", "../../../../etc")
    link(root, "/etc/host", "/../../etc/passwd")
    ctx = context(root)
    assert ctx.real_path("/../../etc/passwd") == root / "etc/passwd"
    assert ctx.read("/../../../etc/passwd") == "audited\n"
    assert ctx.read("/etc/up/passwd") == "audited\n"
    assert ctx.read("/etc/host") == "audited\n"
    assert ctx.real_path("/etc/up/..") == root


def test_a_link_loop_is_unreadable_and_does_not_exist(tmp_path: Path) -> None:
    link(tmp_path, "/etc/a", "/etc/b")
    link(tmp_path, "/etc/b", "a")
    link(tmp_path, "/etc/self", "/etc/self/x")
    ctx = context(tmp_path)
    for path in ("/etc/a", "/etc/self", "/etc/a/file"):
        with pytest.raises(Unreadable, match="too many levels of symbolic links"):
            ctx.real_path(path)
        with pytest.raises(Unreadable, match="too many levels of symbolic links"):
            ctx.read(path)
        assert not ctx.exists(path)
    assert ctx.glob("/etc/*") == ["/etc/a", "/etc/b", "/etc/self"]  # there, if unreadable
    assert ctx.glob("/etc/a/*") == []


def test_read_tells_missing_from_unreadable(tmp_path: Path) -> None:
    (tmp_path / "etc/dir").mkdir(parents=True)
    link(tmp_path, "/etc/dangling", "/etc/gone")
    ctx = context(tmp_path)
    assert ctx.read("/etc/gone") is None
    assert ctx.read("/etc/dangling") is None
    with pytest.raises(Unreadable) as e:
        ctx.read("/etc/dir")
    assert str(e.value) == f"{tmp_path}/etc/dir: Is a directory"
    with pytest.raises(Unreadable) as e:
        ctx.text("/etc/dangling")
    assert str(e.value) == f"{tmp_path}/etc/dangling: No such file or directory"


def test_glob_answers_the_audited_systems_paths_sorted(tmp_path: Path) -> None:
    root = tmp_path / "sys[root]*"  # taken literally: wildcards count in the pattern only
    for name in ("b.conf", "a.conf", ".hidden.conf", "c.txt", "sub/d.conf", "sub/deep/e.conf"):
        write(root, f"/etc/x/{name}")
    link(root, "/etc/x/dangling.conf", "/etc/gone.conf")
    link(root, "/etc/linked", "/etc/x")
    ctx = context(root)
    assert ctx.glob("/etc/x/*.conf") == ["/etc/x/a.conf", "/etc/x/b.conf",
                                         "/etc/x/dangling.conf"]
    assert ctx.glob("/etc/linked/*.conf") == ["/etc/linked/a.conf", "/etc/linked/b.conf",
                                              "/etc/linked/dangling.conf"]
    assert ctx.glob("/etc/x/**/*.conf", recursive=True) == [
        "/etc/x/a.conf", "/etc/x/b.conf", "/etc/x/dangling.conf", "/etc/x/sub/d.conf",
        "/etc/x/sub/deep/e.conf"]
    assert ctx.glob("/etc/*/*/d.conf") == ["/etc/linked/sub/d.conf", "/etc/x/sub/d.conf"]
    assert ctx.glob("/etc/x/a.conf") == ["/etc/x/a.conf"]  # no wildcard: itself, if there
    assert ctx.glob("/etc/x/dangling.conf") == ["/etc/x/dangling.conf"]
    assert ctx.glob("/etc/x/none.conf") == []
    assert ctx.glob("/etc/gone/**", recursive=True) == []  # not glob's "gone/"


@pytest.mark.parametrize("pattern", [
    "/etc/*", "/etc/*.conf", "/etc/.*", "/etc/?.conf", "/etc/[ab].conf", "/etc/*/*",
    "/etc/**", "/etc/**/*.conf", "/etc/**/", "/etc/*/", "/etc/sub/**/e.conf", "/e*/s*/d*",
    "/etc/rel/*", "/etc/**/rel/*", "/*"])
@pytest.mark.parametrize("recursive", [False, True])
def test_without_absolute_links_glob_matches_as_pythons_glob_does(tmp_path: Path, pattern: str,
                                                                  recursive: bool) -> None:
    import glob

    for name in ("a.conf", "b.conf", ".hidden.conf", "c.txt", "sub/d.conf", "sub/deep/e.conf",
                 "sub/.hid/f.conf", ".dot/g.conf"):
        write(tmp_path, f"/etc/{name}")
    link(tmp_path, "/etc/rel", "sub/deep")
    root = str(tmp_path)
    theirs = {h[len(root):].rstrip("/") or "/" for h in
              glob.glob(glob.escape(root) + pattern, recursive=recursive)}
    assert context(tmp_path).glob(pattern, recursive=recursive) == sorted(theirs)


def test_recursive_glob_does_not_go_round_a_loop(tmp_path: Path) -> None:
    write(tmp_path, "/etc/sub/a.conf")
    link(tmp_path, "/etc/sub/up", "..")
    link(tmp_path, "/etc/sub/top", "/etc")
    assert context(tmp_path).glob("/etc/**/*.conf", recursive=True) == ["/etc/sub/a.conf"]
    assert context(tmp_path).glob("/etc/sub/up/sub/*.conf") == ["/etc/sub/up/sub/a.conf"]


def test_glob_never_lists_the_host(tmp_path: Path) -> None:
    write(tmp_path, "/etc/audited")
    link(tmp_path, "/etc/up", "../../../../../../../../etc")  # the host's /etc, if followed
    link(tmp_path, "/abs", "/etc/../../../etc")
    ctx = context(tmp_path)
    assert ctx.glob("/etc/up/*") == ["/etc/up/audited", "/etc/up/up"]
    assert ctx.glob("/abs/pass*") == []
    assert ctx.glob("/etc/up/passwd") == []


def test_listdir_names_a_folders_entries_hidden_ones_too(el9: Path) -> None:
    write(el9, "/etc/d/.b.xml")
    write(el9, "/etc/d/a.xml")
    link(el9, "/etc/linked", "/etc/d")
    ctx = context(el9)
    assert ctx.listdir("/etc/linked") == [".b.xml", "a.xml"]
    assert ctx.listdir("/etc/d/a.xml") == ctx.listdir("/etc/none") == []


def test_enabled_units_are_the_wants_links(tmp_path: Path) -> None:
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "sshd.service").symlink_to("/usr/lib/systemd/system/sshd.service")
    write(tmp_path, "/usr/lib/systemd/system/sockets.target.wants/dbus.socket")
    write(tmp_path, "/etc/systemd/system/other.conf")
    assert context(tmp_path).enabled_units() == {"sshd.service", "dbus.socket"}


def test_unknown_names_its_source_when_given() -> None:
    f = unknown("x.y", "title", Unreadable("/etc/x", "Permission denied"), source="tool -c x")
    assert (f.status, f.found, f.source) == (Status.UNKNOWN, "/etc/x: Permission denied",
                                             "tool -c x")
    assert "source: tool -c x" in f.result().details
    assert unknown("x.y", "title", "why").source == ""


class Loaded(NamedTuple):
    value: str
    source: str = "the source"


RULES: Rules[Loaded] = Rules()


@RULES.rule("t.plain", "a rule", why="because")
def plain(cfg: Loaded) -> Verdict:
    return Verdict(cfg.value == "good", cfg.value, "good", "make it good")


@RULES.rule("t.docstring", "a CRIT rule", Status.CRIT)
def docstring(cfg: Loaded) -> Verdict:
    """Its  docstring is
    the rationale."""
    if cfg.value == "unreadable":
        raise Unreadable("/etc/t", "Permission denied")
    return Verdict(None, "cannot tell", "good", "look", Status.WARN)


def test_rules_are_judged_in_order_or_unknown(tmp_path: Path) -> None:
    found = RULES.audit(context(tmp_path), lambda ctx: Loaded("bad"))
    assert [(f.rule, f.status, f.severity, f.rationale, f.source) for f in found] == [
        ("t.plain", Status.WARN, Status.WARN, "because", "the source"),
        ("t.docstring", Status.UNKNOWN, Status.WARN, "Its docstring is the rationale.",
         "the source")]
    found = RULES.audit(context(tmp_path), lambda ctx: Loaded("unreadable"))
    assert [(f.status, f.found) for f in found] == [
        (Status.WARN, "unreadable"), (Status.UNKNOWN, "/etc/t: Permission denied")]
    assert found[1].severity is Status.CRIT


def test_rules_are_all_unknown_when_the_configuration_cannot_be_loaded(tmp_path: Path) -> None:
    def load(ctx: Context) -> Loaded:
        raise Unreadable(os.fspath(ctx.path("/etc/t.conf")), "Is a directory")

    found = RULES.audit(context(tmp_path), load)
    assert [(f.rule, f.status, f.severity) for f in found] == [
        ("t.plain", Status.UNKNOWN, Status.WARN), ("t.docstring", Status.UNKNOWN, Status.CRIT)]
    assert {f.found for f in found} == {f"{tmp_path}/etc/t.conf: Is a directory"}
