"""steward's EL9 RPM (packaging/steward.spec), built, linted, installed with dnf into an
installroot, verified, upgraded, erased.

Built here with Debian's rpmbuild by packaging/build-rpm --el9-test: tests/rpm/macros.el9
defines the EL9 macros the spec uses (bodies from python-rpm-macros 3.9 and systemd 252), and
the host's python3 (3.11) stands in for EL9's python3.9 at build time, installing into EL9's
paths (tests/rpm/el9-install.cfg); the Python 3.9 root of tests/integration is not used for
the build, since it has no rpm and its Debian setuptools would need the same path override.
The EL9 packages steward requires are stand-ins (tests/rpm/standins.py names them).

The installed steward is run from the installroot's files: the installed /usr/bin/steward
script, with PYTHONPATH set to the root's site-packages, under this test's interpreter (3.11,
whose libraries come from the test venv: there is no python3.9 with EL9's libraries on the
host; tests/integration's 3.9 root runs steward itself).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.patch.repo import DNF_CONF, PLUGINS_OFF
from tests.rpm import standins

pytestmark = [pytest.mark.slow, pytest.mark.root]

TOOLS = ("rpmbuild", "rpm", "dnf", "createrepo_c", "rpmlint", "git")
SITELIB = "usr/lib/python3.9/site-packages"
V1, V2 = "0.1.0", "0.1.1"
UNITS = ("steward.service", "steward-patch.timer")  # the units the scriptlets name


def _missing() -> str | None:
    from tests.patch.repo import missing_tools

    return missing_tools(TOOLS, "apt-get install -y rpm rpmlint dnf createrepo-c")


def run(argv: list[str], timeout: float = 300, check: bool = True,
        env: dict[str, str] | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=cwd,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C",
                                                         **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def _tree(dest: Path) -> Path:
    """This checkout's files as git knows them (tracked and new, not ignored): what
    `git archive` would pack once committed, so uncommitted work is what gets tested."""
    files = run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                 "--exclude-standard"]).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _bump(tree: Path, version: str) -> None:
    """The release procedure for version+1: __version__, the spec's Version and changelog,
    and packaging/steward.toml regenerated with `steward config default`."""
    init = tree / "agent/__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"',
                           init.read_text()))
    spec = tree / "packaging/steward.spec"
    text = re.sub(r"^Version:(\s*)\S+", rf"Version:\g<1>{version}", spec.read_text(),
                  flags=re.M)
    spec.write_text(text.replace("%changelog\n", f"%changelog\n* Mon Dec 07 2026 steward "
                                 f"developers <steward@localhost> - {version}-1\n- Test "
                                 "upgrade.\n\n"))
    out = run([sys.executable, "-m", "agent", "config", "default"],
              env={"PYTHONPATH": str(tree)}, cwd=tree).stdout
    assert f"steward {version}:" in out.splitlines()[0]
    (tree / "packaging/steward.toml").write_text(out)


def _wheels(cache: Path) -> Path:
    """The bundled wheels the spec names, downloaded once into the test cache."""
    dest = cache / "rpm-wheels"
    dest.mkdir(parents=True, exist_ok=True)
    text = (REPO / "packaging/steward.spec").read_text()
    names = re.findall(r"^Source[1-9]\d*:\s*\S+/([^/\s]+)$", text, re.M)
    macros = dict(re.findall(r"^%global\s+(\w+)\s+(\S+)", text, re.M))
    for name in (re.sub(r"%\{(\w+)\}", lambda m: macros[m.group(1)], n) for n in names):
        if not (dest / name).is_file():
            project, version = name.split("-")[:2]
            run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "--python-version", "3.9", "-d", str(dest),
                 f"{project}=={version}"])
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    why = _missing()
    if why:
        pytest.skip(why)
    from tests.patch.repo import cache_dir
    work = tmp_path_factory.mktemp("rpm")
    wheels = _wheels(cache_dir())
    v1 = _tree(work / "src-1")
    v2 = work / "src-2"
    shutil.copytree(v1, v2)
    _bump(v2, V2)
    out = work / "rpms"
    for tree in (v1, v2):
        run([sys.executable, str(REPO / "packaging/build-rpm"), "--el9-test", "--tree",
             str(tree), "--wheels", str(wheels), "--outdir", str(out)])
    return {"rpms": out, "repo": standins.build(work), "v1": v1, "v2": v2}


def test_rpmlint_clean_but_for_the_explained(built):
    pkgs = [str(built["rpms"] / f"steward-{V1}-1.{arch}.rpm") for arch in ("noarch", "src")]
    proc = run(["rpmlint", "-r", str(REPO / "tests/rpm/rpmlintrc"), *pkgs], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Nothing but the filtered findings, and every filter still matches something.
    assert "2 packages and 0 specfiles checked; 0 errors, 0 warnings" in proc.stdout, proc.stdout


def test_the_cockpit_page_is_recommended_not_required(built):
    rpm = str(built["rpms"] / f"steward-{V1}-1.noarch.rpm")
    assert run(["rpm", "-qp", "--recommends", rpm]).stdout.split() == ["cockpit-system"]


def test_requires_only_el9_names(built):
    rpm = str(built["rpms"] / f"steward-{V1}-1.noarch.rpm")
    requires = run(["rpm", "-qp", "--requires", rpm]).stdout.splitlines()
    names = {r.split(" ")[0] for r in requires} - {"config(steward)"}
    names = {n for n in names if not n.startswith("rpmlib(")}
    # Every requirement is met by a stand-in of an EL9 package (python3.9dist() names are
    # what EL9's python3-* packages provide); none names a bundled library.
    assert not [r for r in requires if re.search(r"apscheduler|tzlocal|jeepney", r)], requires
    provided = set(standins.NAMES) | {"/bin/sh", "/usr/bin/python3", "python(abi)"} | {
        p.split(" ")[0] for _, _, p in standins.PYTHON_LIBS}
    assert names <= provided, names - provided
    provides = run(["rpm", "-qp", "--provides", rpm]).stdout
    for lib, version in (("jeepney", "0.6.0"),):
        assert f"bundled(python3dist({lib})) = {version}" in provides


class Root:
    def __init__(self, path: Path, repo: Path):
        self.path = path
        plugins = path / "etc/dnf/plugins"
        plugins.mkdir(parents=True)
        for name in PLUGINS_OFF:
            (plugins / f"{name}.conf").write_text("[main]\nenabled=0\n")
        (path / "etc/dnf/dnf.conf").write_text(DNF_CONF.format(plugins=plugins))
        (path / "etc/yum.repos.d").mkdir()
        (path / "etc/yum.repos.d/el9.repo").write_text(
            f"[el9-standins]\nname=EL9 stand-ins\nbaseurl={repo.as_uri()}\ngpgcheck=0\n")

    def dnf(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["dnf", "-y", f"--installroot={self.path}", "--releasever=9",
                    f"--setopt=reposdir={self.path}/etc/yum.repos.d", "--nogpgcheck", *args])

    def rpm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["rpm", "--root", str(self.path), *args], check=check)

    def log(self) -> list[str]:
        """The stand-in systemd's record since the last call."""
        path = self.path / standins.LOG.lstrip("/")
        lines = path.read_text().splitlines() if path.exists() else []
        path.write_text("")
        return lines

    def steward(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed /usr/bin/steward with the root's modules (see the module doc)."""
        return run([sys.executable, str(self.path / "usr/bin/steward"), *args], check=False,
                   env={"PYTHONPATH": str(self.path / SITELIB)}, cwd=self.path)


def test_install_verify_upgrade_erase(built, tmp_path):
    root = Root(tmp_path / "root", built["repo"])
    rpms = built["rpms"]
    # The README's command: dnf install ./steward-*.noarch.rpm (dependencies from the repo).
    proc = root.dnf("install", str(rpms / f"steward-{V1}-1.noarch.rpm"))
    installed = set(root.rpm("-qa", "--qf", "%{NAME}\n").stdout.split())
    assert {"steward", *standins.NAMES} <= installed, proc.stdout
    # %post on a first install: systemd-update-helper presets the units.
    assert root.log() == [f"systemd-update-helper install-system-units {' '.join(UNITS)}",
                          f"systemctl --no-reload preset {' '.join(UNITS)}"]
    assert root.rpm("-V", "steward").stdout == ""

    # Files where the units and the README say.
    r = root.path
    unit = (r / "usr/lib/systemd/system/steward.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) run$", unit, re.M)
    assert exec_start and exec_start.group(1) == "/usr/bin/steward"
    assert root.rpm("-qf", exec_start.group(1)).stdout.startswith(f"steward-{V1}")
    for name in ("steward.service", "steward-patch.service", "steward-patch.timer"):
        text = (r / "usr/lib/systemd/system" / name).read_text()
        assert text == (REPO / "units" / name).read_text()
        for doc in re.findall(r"^Documentation=file:(\S+)$", text, re.M):
            assert (r / doc.lstrip("/")).is_file(), doc
    patch_exec = re.search(r"^ExecStart=(\S+)", (r / "usr/lib/systemd/system/"
                                                  "steward-patch.service").read_text(), re.M)
    assert patch_exec and patch_exec.group(1) == "/usr/bin/steward"
    conf = r / "etc/steward/steward.toml"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert conf.read_text() == (built["v1"] / "packaging/steward.toml").read_text()
    state = r / "var/lib/steward"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o700
    templates = sorted(p.name for p in (r / SITELIB / "agent/notify/templates").glob("*.j2"))
    assert templates == sorted(p.name for p in (REPO / "agent/notify/templates").glob("*.j2"))
    ja = sorted(p.name for p in (r / SITELIB / "agent/notify/templates/ja").glob("*.j2"))
    assert ja == templates  # every mail template in Japanese too
    page = sorted(p.name for p in (r / "usr/share/cockpit/steward").iterdir())
    assert page == sorted(p.name for p in (REPO / "cockpit").iterdir()), page
    assert "manifest.json" in page and "po.ja.js" in page
    assert (r / "usr/share/licenses/steward/LICENSE").is_file()
    for lib in ("jeepney",):
        assert (r / "usr/share/steward/bundled" / lib / "__init__.py").is_file()

    # The installed code, not the checkout's, answers.
    where = run([sys.executable, "-c", "import agent; print(agent.__file__)"],
                env={"PYTHONPATH": str(r / SITELIB)}, cwd=tmp_path).stdout.strip()
    assert where == str(r / SITELIB / "agent/__init__.py")
    ok = root.steward("--config", str(conf), "config", "check")
    assert ok.returncode == 0 and "is valid" in ok.stdout, ok.stdout + ok.stderr

    # The administrator edits the config, with a mistake; the upgrade keeps their file and
    # leaves the new default beside it as .rpmnew.
    edited = conf.read_text() + '\n[checks.disk]\nwran = "70"\n'
    conf.write_text(edited)
    root.dnf("install", str(rpms / f"steward-{V2}-1.noarch.rpm"))
    assert root.rpm("-q", "steward").stdout.strip() == f"steward-{V2}-1.noarch"
    assert conf.read_text() == edited
    new = r / "etc/steward/steward.toml.rpmnew"
    assert new.read_text() == (built["v2"] / "packaging/steward.toml").read_text()
    assert new.read_text().startswith(f"# steward {V2}:")
    # The old package's %postun ($1 = 1: upgrade) marks the units for a restart; the new
    # one's %post ($1 = 2) presets nothing.
    assert root.log() == [f"systemd-update-helper mark-restart-system-units {' '.join(UNITS)}",
                          *(f"systemctl set-property {u} Markers=+needs-restart" for u in UNITS)]
    # rpm -V names the edited config (size, digest, mtime) and nothing else.
    verify = root.rpm("-V", "steward", check=False)
    assert re.fullmatch(r"S\.5\.\.\.\.T\.  c /etc/steward/steward\.toml\n", verify.stdout), \
        verify.stdout
    # ... and steward says what is wrong with the kept file: exit 2 naming the key.
    for args in (("check",), ("config", "check")):
        bad = root.steward("--config", str(conf), *args)
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert bad.stderr.startswith(f"steward: config error: {conf}: checks.disk.wran: "
                                     "unknown key (accepted: "), bad.stderr
        assert "Traceback" not in bad.stderr

    # Erase: %preun ($1 = 0) disables the units (no running systemd in the root: no --now),
    # the files go, the edited config stays as .rpmsave.
    root.dnf("remove", "steward")
    assert root.log() == [f"systemd-update-helper remove-system-units {' '.join(UNITS)}",
                          f"systemctl --no-reload disable {' '.join(UNITS)}"]
    assert root.rpm("-q", "steward", check=False).returncode == 1
    assert not (r / "usr/bin/steward").exists()
    assert not (r / SITELIB / "agent").exists()
    assert not (r / "usr/lib/systemd/system/steward.service").exists()
    assert not state.exists()
    assert (r / "etc/steward/steward.toml.rpmsave").read_text() == edited
