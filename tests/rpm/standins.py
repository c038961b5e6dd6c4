"""Stand-ins for the EL9 packages steward's RPM requires, which cannot exist on this Debian
host: small RPMs with the EL9 package names and versions (and the python3.9dist() names
EL9's packages provide), built by one rpmbuild of STANDIN_SPEC into a createrepo_c repository.

- ``bash`` carries /bin/sh, for the scriptlets rpm runs chrooted into the installroot: the
  host's dash with the two libraries it links (ld.so, libc), copied as they are.
- ``systemd`` carries /usr/lib/systemd/systemd-update-helper, which EL9's %systemd_* macros
  call, doing what v252's does (install-system-units: systemctl --no-reload preset;
  remove-system-units: systemctl --no-reload disable [--now with a running systemd];
  mark-restart-system-units: systemctl set-property UNIT Markers=+needs-restart), and a
  /usr/bin/systemctl that records each call. Both log their argv to LOG in the root.
- ``python3`` carries /usr/bin/python3 (the scripts' interpreter, a file dependency) as a
  script that says it is a stand-in; the libraries are empty packages.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

LOG = "/var/log/el9-standin.log"

# name, version, extra provides (EL9's python3.9dist() names and python(abi)).
PYTHON_LIBS = (
    ("python3", "3.9.18", "python(abi) = 3.9"),
    ("python3-psutil", "5.8.0", "python3.9dist(psutil) = 5.8"),
    ("python3-dns", "2.1.0", "python3.9dist(dnspython) = 2.1"),
    ("python3-requests", "2.25.1", "python3.9dist(requests) = 2.25.1"),
    ("python3-jinja2", "2.11.3", "python3.9dist(jinja2) = 2.11.3"),
    ("python3-pyudev", "0.22.0", "python3.9dist(pyudev) = 0.22"),
    ("python3-tomli", "2.0.1", "python3.9dist(tomli) = 2.0.1"),
    ("python3-setuptools", "53.0.0", "python3.9dist(setuptools) = 53"),
)
NAMES = ("bash", "systemd", *(name for name, _, _ in PYTHON_LIBS))

HELPER = """#!/bin/sh
echo "systemd-update-helper $*" >> LOG
command=$1
shift
case $command in
    install-system-units) systemctl --no-reload preset "$@" ;;
    remove-system-units)
        if [ -d /run/systemd/system ]; then
            systemctl --no-reload disable --now "$@"
        else
            systemctl --no-reload disable "$@"
        fi ;;
    mark-restart-system-units)
        for unit in "$@"; do systemctl set-property "$unit" Markers=+needs-restart; done ;;
esac
""".replace("LOG", LOG)
SYSTEMCTL = f'#!/bin/sh\necho "systemctl $*" >> {LOG}\n'
PYTHON = '#!/bin/sh\necho "python3: a stand-in of the steward RPM test, not an interpreter" >&2\n' \
         'exit 1\n'


def _subpackage(name: str, version: str, provides: str) -> str:
    return (f"%package -n {name}\nVersion: {version}\nSummary: EL9 stand-in for {name}\n"
            "AutoReqProv: no\n"
            f"Provides: {provides}\n%description -n {name}\nStand-in.\n"
            f"%files -n {name}\n" + ("/usr/bin/python3\n" if name == "python3" else ""))


def spec() -> str:
    libs = "".join(_subpackage(*lib) for lib in PYTHON_LIBS)
    return f"""
Name:           el9-standins
Version:        1
Release:        1
Summary:        EL9 stand-ins for the steward RPM test
License:        MIT
AutoReqProv:    no
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}

%description
Stand-ins.

%package -n bash
Version: 5.1.8
AutoReqProv: no
Summary: EL9 stand-in for bash: /bin/sh (the host's dash and its libraries)
%description -n bash
Stand-in.

%package -n systemd
Version: 252
AutoReqProv: no
Summary: EL9 stand-in for systemd: systemd-update-helper and a recording systemctl
%description -n systemd
Stand-in.

{libs}

%install
install -D -m 0755 /bin/dash %{{buildroot}}/bin/sh
install -D -m 0755 /lib64/ld-linux-x86-64.so.2 %{{buildroot}}/lib64/ld-linux-x86-64.so.2
install -D -m 0755 /lib/x86_64-linux-gnu/libc.so.6 %{{buildroot}}/lib/x86_64-linux-gnu/libc.so.6
install -D -m 0755 %{{_sourcedir}}/helper %{{buildroot}}/usr/lib/systemd/systemd-update-helper
install -D -m 0755 %{{_sourcedir}}/systemctl %{{buildroot}}/usr/bin/systemctl
install -D -m 0755 %{{_sourcedir}}/python3 %{{buildroot}}/usr/bin/python3
install -d %{{buildroot}}/var/log

%files -n bash
/bin/sh
/lib64/ld-linux-x86-64.so.2
/lib/x86_64-linux-gnu/libc.so.6

%files -n systemd
/usr/lib/systemd/systemd-update-helper
/usr/bin/systemctl
%dir /var/log
"""


def build(work: Path, timeout: float = 120) -> Path:
    """The stand-ins' repository (a folder of RPMs with createrepo_c metadata)."""
    top, repo = work / "standin-build", work / "standin-repo"
    sources = top / "SOURCES"
    sources.mkdir(parents=True)
    for name, text in (("helper", HELPER), ("systemctl", SYSTEMCTL), ("python3", PYTHON)):
        (sources / name).write_text(text)
    (work / "standins.spec").write_text(spec())
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}",
                    str(work / "standins.spec")], check=True, capture_output=True, text=True,
                   timeout=timeout, stdin=subprocess.DEVNULL)
    repo.mkdir()
    for rpm in top.glob("RPMS/*/*.rpm"):
        rpm.rename(repo / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True, capture_output=True,
                   text=True, timeout=timeout)
    return repo
