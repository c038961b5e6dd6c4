"""A dnf test bed: small noarch RPMs (rpmbuild), file:// repositories (createrepo_c) with an
updateinfo.xml (modifyrepo_c), and an installroot with the 1.0 packages installed.

Repositories, enabled unless said otherwise:
- base: hello-appl, mailfilter, linux-firmware (a "core" package), postfail, slowpkg and
  cryptopol (installs /etc/crypto-policies/state/current saying DEFAULT), all 1.0;
- updates: hello-appl 1.1 (security advisory RLSA-2025:0001, Important, CVE-2025-0001,
  issued 2025-01-15, reboot suggested), mailfilter 1.1 (bugfix advisory RLBA-2025:0002);
- broken (disabled): postfail 1.1, whose %post fails;
- slow (disabled): slowpkg 1.1, whose %pre sleeps $STEWARD_TEST_PRE_SLEEP seconds (a real
  dnf transaction that holds the rpmdb lock for as long as a test needs).

Scriptlets are <lua> (run inside rpm), so the installroot needs no /bin/sh. The repositories
are built once per spec text, under $STEWARD_TEST_CACHE or ~/.cache/steward-tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("dnf", "rpm", "rpmbuild", "createrepo_c", "modifyrepo_c")
APT = "apt-get install -y dnf rpm createrepo-c dnf-plugins-core"

SPEC = r"""
Name:           %{pkgname}
Version:        %{ver}
Release:        1
Summary:        steward dnf test package %{pkgname}
License:        MIT
BuildArch:      noarch

%description
A tiny package for steward's dnf tests.

%install
mkdir -p %{buildroot}/usr/share/%{pkgname}
echo %{ver} > %{buildroot}/usr/share/%{pkgname}/VERSION
%if 0%{?policy}
mkdir -p %{buildroot}/etc/crypto-policies/state
echo %{?legacy:LEGACY}%{!?legacy:DEFAULT} > %{buildroot}/etc/crypto-policies/state/current
%endif

%if 0%{?postfail}
%post -p <lua>
io.stderr:write("%{pkgname}: %%post failing on purpose\n")
error("%{pkgname} %%post fails on purpose")
%endif

%if 0%{?slow}
%pre -p <lua>
local s = tonumber(os.getenv("STEWARD_TEST_PRE_SLEEP") or "0")
if s and s > 0 then posix.sleep(s) end
%endif

%files
/usr/share/%{pkgname}/VERSION
%if 0%{?policy}
/etc/crypto-policies/state/current
%endif
"""

# (name, version, flag macros (space-separated) or "", repository)
PACKAGES = (
    ("hello-appl", "1.0", "", "base"), ("mailfilter", "1.0", "", "base"),
    ("linux-firmware", "1.0", "", "base"), ("postfail", "1.0", "", "base"),
    ("slowpkg", "1.0", "", "base"), ("cryptopol", "1.0", "policy", "base"),
    ("hello-appl", "1.1", "", "updates"), ("mailfilter", "1.1", "", "updates"),
    ("postfail", "1.1", "postfail", "broken"), ("slowpkg", "1.1", "slow", "slow"),
    ("cryptopol", "1.1", "policy legacy", "risky"), ("linux-firmware", "1.1", "", "core"),
)
REPOS = {"base": True, "updates": True, "broken": False, "slow": False, "risky": False,
         "core": False}
INSTALLED = ("hello-appl", "mailfilter", "linux-firmware", "postfail", "slowpkg", "cryptopol")

UPDATEINFO = """<?xml version="1.0" encoding="UTF-8"?>
<updates>
  <update from="steward-tests@example.invalid" status="final" type="security" version="2">
    <id>RLSA-2025:0001</id>
    <title>Important: hello-appl security update</title>
    <issued date="2025-01-15 10:00:00"/>
    <updated date="2025-01-16 10:00:00"/>
    <rights>none</rights>
    <release>Test 9</release>
    <severity>Important</severity>
    <summary>An update for hello-appl is now available.</summary>
    <description>Fixes a buffer overflow (CVE-2025-0001).
Second line of the description.</description>
    <references>
      <reference href="https://access.redhat.com/security/cve/CVE-2025-0001" id="CVE-2025-0001"
                 type="cve" title="CVE-2025-0001"/>
      <reference href="https://bugzilla.example.invalid/1" id="1" type="bugzilla"
                 title="hello-appl overflow"/>
    </references>
    <pkglist>
      <collection short="test-9">
        <name>Test 9</name>
        <package name="hello-appl" version="1.1" release="1" epoch="0" arch="noarch"
                 src="hello-appl-1.1-1.src.rpm">
          <filename>hello-appl-1.1-1.noarch.rpm</filename>
          <reboot_suggested>1</reboot_suggested>
        </package>
      </collection>
    </pkglist>
  </update>
  <update from="steward-tests@example.invalid" status="final" type="bugfix" version="2">
    <id>RLBA-2025:0002</id>
    <title>mailfilter bug fix update</title>
    <issued date="2025-02-01 00:00:00"/>
    <updated date="2025-02-01 00:00:00"/>
    <rights>none</rights>
    <release>Test 9</release>
    <severity>None</severity>
    <summary>An update for mailfilter is now available.</summary>
    <description>Fixes a crash.</description>
    <references/>
    <pkglist>
      <collection short="test-9">
        <name>Test 9</name>
        <package name="mailfilter" version="1.1" release="1" epoch="0" arch="noarch"
                 src="mailfilter-1.1-1.src.rpm">
          <filename>mailfilter-1.1-1.noarch.rpm</filename>
        </package>
      </collection>
    </pkglist>
  </update>
</updates>
"""
SECURITY_ISSUED = 1736935200.0  # 2025-01-15 10:00:00 UTC
BUGFIX_ISSUED = 1738368000.0  # 2025-02-01 00:00:00 UTC

# RHEL 9's dnf.conf defaults. Plugins read their config from inside the root, so that
# Debian's dnf-plugins-core (whose "local" plugin is enabled and would copy every package
# into the host's /var/lib/dnf/plugins/local) stays out; needs-restarting stays in.
DNF_CONF = """[main]
gpgcheck=1
installonly_limit=3
clean_requirements_on_remove=True
best=True
skip_if_unavailable=False
pluginconfpath={plugins}
"""
PLUGINS_OFF = ("local", "versionlock", "post-transaction-actions", "debuginfo-install",
               "copr", "show-leaves")


def missing_tools(tools: tuple[str, ...] = TOOLS, apt: str = APT) -> str | None:
    """Why the bed (or another rpm test needing ``tools``) cannot be built here, or None."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get: {apt})"
    if os.geteuid() != 0:
        return "rpm transactions in an installroot need root (scriptlets run chrooted)"
    return None


def cache_dir() -> Path:
    env = os.environ.get("STEWARD_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "steward-tests"


def _run(argv: Sequence[str], timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "LC_ALL": "C", **(env or {})}
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=full, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}"
                           f"\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:  # concurrent test runs build once
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_repos(cache: Path | None = None) -> Path:
    """The folder holding repos/<name> (each a createrepo_c repository), built unless a
    build of the same spec text is cached."""
    text = repr((SPEC, PACKAGES, UPDATEINFO)).encode()
    key = hashlib.sha256(text).hexdigest()[:12]
    root = cache or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"patch-{key}"
    if (dest / "done").exists():
        return dest
    with _locked(root / f"patch-{key}.lock"):
        if (dest / "done").exists():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"patch-{key}.", dir=root))
        try:
            _build(work)
            work.rename(dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        (dest / "done").touch()
    return dest


def _build(work: Path) -> None:
    spec = work / "test.spec"
    spec.write_text(SPEC)
    top = work / "rpmbuild"
    for name, version, flag, repo in PACKAGES:
        argv = ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}",
                "--define", f"pkgname {name}", "--define", f"ver {version}"]
        for macro in flag.split():
            argv += ["--define", f"{macro} 1"]
        _run([*argv, str(spec)])
        built = top / "RPMS/noarch" / f"{name}-{version}-1.noarch.rpm"
        (work / "repos" / repo).mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, work / "repos" / repo / built.name)
    for repo in REPOS:
        _run(["createrepo_c", "--quiet", str(work / "repos" / repo)])
    info = work / "updateinfo.xml"
    info.write_text(UPDATEINFO)
    _run(["modifyrepo_c", "--mdtype=updateinfo", str(info),
          str(work / "repos/updates/repodata")])
    shutil.rmtree(top)


@dataclass
class Bed:
    """One installroot wired to the cached repositories."""

    root: Path
    repos: Path  # the cached folder holding repos/<name>

    @property
    def repo_file(self) -> Path:
        return self.root / "etc/yum.repos.d/steward-test.repo"

    def configure(self, enabled: dict[str, bool] | None = None,
                  extra: dict[str, str] | None = None) -> None:
        """(Re)write dnf.conf, plugin settings and the repo file; ``extra`` adds
        repositories by id -> baseurl (e.g. unreachable ones)."""
        plugins = self.root / "etc/dnf/plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        for name in PLUGINS_OFF:
            (plugins / f"{name}.conf").write_text("[main]\nenabled=0\n")
        (self.root / "etc/dnf/dnf.conf").write_text(DNF_CONF.format(plugins=plugins))
        want = {**REPOS, **(enabled or {})}
        urls = {r: (self.repos / "repos" / r).as_uri() for r in REPOS}
        urls.update(extra or {})
        self.repo_file.parent.mkdir(parents=True, exist_ok=True)
        self.repo_file.write_text("".join(
            f"[{r}]\nname=steward test {r}\nbaseurl={url}\ngpgcheck=0\n"
            f"enabled={int(want.get(r, True))}\n\n"
            for r, url in urls.items()))

    def enable(self, *names: str) -> None:
        self.configure({n: True for n in names})

    def dnf_argv(self) -> list[str]:
        return ["dnf", f"--installroot={self.root}", "--releasever=9",
                f"--setopt=reposdir={self.root}/etc/yum.repos.d"]

    def install(self, names: Sequence[str]) -> None:
        _run([*self.dnf_argv(), "-y", "-q", "install", *names])

    def versions(self) -> dict[str, str]:
        """name -> version-release installed in the root (rpm -q --root)."""
        out = _run(["rpm", "-qa", "--root", str(self.root), "--qf",
                    "%{NAME} %{VERSION}-%{RELEASE}\n"]).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def make_template(where: Path, repos: Path) -> Bed:
    """An installroot with the 1.0 packages installed (history: transaction 1)."""
    bed = Bed(where, repos)
    bed.configure()
    bed.install([f"{name}-1.0" for name in INSTALLED])
    return bed


def copy_bed(template: Bed, where: Path) -> Bed:
    shutil.copytree(template.root, where, symlinks=True)
    bed = Bed(where, template.repos)
    bed.configure()  # dnf.conf names its own plugin folder
    return bed
