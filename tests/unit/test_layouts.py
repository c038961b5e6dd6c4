"""Unit layouts, the fast part: who holds a listening port (this process's real sockets and
/proc), which of a service's names discovery watches, a socket-activated service judged by
its socket. tests/integration/test_layouts_nspawn.py runs them against a real systemd."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Result, Status
from agent.system.listeners import port_owner, unit_of
from agent.system.systemd import UnitState
from checks.http import HttpCheck, HttpOptions
from checks.ports import PortCheck, PortOptions
from checks.probe import ProbeCheck
from checks.services import ServiceCheck, ServiceOptions, canonical, pick


def listener(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"),
                                         (socket.AF_INET6, "::1")])
def test_the_owner_of_a_listening_port_is_this_process(family, host):
    try:
        s = listener(family, host)
    except OSError as e:
        pytest.skip(f"no {host} here: {e}")
    with s:
        port = s.getsockname()[1]
        owner = port_owner(port)
        assert owner is not None and owner.pid == os.getpid()
        assert owner.unit == unit_of(os.getpid())
        assert f"port {port} is held by PID {os.getpid()}" in owner.describe(port)
    assert port_owner(port) is None  # closed: nothing listens


def test_a_connected_socket_is_not_a_listener():
    with listener(socket.AF_INET, "127.0.0.1") as srv:
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as c:
            peer, _ = srv.accept()
            with peer:
                srv.close()  # only the accepted and the client side remain, not listening
                assert c.getsockname()[1] != port
                assert port_owner(port) is None


@pytest.mark.parametrize("text,unit", [
    ("0::/system.slice/postfix@-.service\n", "postfix@-.service"),
    ("0::/machine.slice/machine-x.scope/payload/system.slice/named-chroot.service\n",
     "named-chroot.service"),  # a container's process seen from the host
    ("12:pids:/\n1:name=systemd:/system.slice/sshd.service\n0::/\n", "sshd.service"),
    ("0::/user.slice/user-0.slice/session-3.scope\n", "session-3.scope"),
    ("0::/\n", ""),
])
def test_the_unit_is_the_last_unit_of_the_systemd_cgroup(tmp_path, text, unit):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(text)
    assert unit_of(42, Path(tmp_path)) == unit
    assert unit_of(43, Path(tmp_path)) == ""  # gone


def test_a_failing_probe_says_who_holds_its_port():
    with listener(socket.AF_INET, "127.0.0.1") as s:
        port = s.getsockname()[1]
        failed = Result("smtp:localhost", Status.CRIT, "no greeting", unit="postfix")
        got = ProbeCheck.held_by(failed, port)
        me = unit_of(os.getpid())
        assert f"port {port} is held by PID {os.getpid()}" in got.details
        if me.endswith(".service"):  # another service holds it: that one is restarted
            assert got.unit == me.removesuffix(".service")
        else:  # a scope or no unit: not restartable, the linked unit stays
            assert got.unit == "postfix"
    assert ProbeCheck.held_by(failed, port) == failed


def unit(name, uid=None, active="active", sub="running", files="enabled", load="loaded",
         **kw):
    return UnitState(name, uid or f"{name}.service", load, active, sub, "success", 0, files,
                     **kw)


def test_discovery_prefers_el9_names_and_knows_debian_aliases():
    groups = [("named", "bind9"), ("named-chroot",), ("sshd", "ssh"), ("httpd", "apache2"),
              ("chronyd", "chrony")]
    states = {  # as systemctl show answers them
        "named": unit("named", active="inactive", sub="dead", files="disabled"),
        "bind9": unit("bind9", "named.service", active="inactive", sub="dead",
                      files="disabled"),
        "named-chroot": unit("named-chroot"),
        "sshd": unit("sshd", "ssh.service"),  # Debian: sshd.service is an alias of ssh,
        # watched once, under the EL9 name (the port check knows sshd's port by it)
        "ssh": unit("ssh"),
        "httpd": unit("httpd", load="not-found", active="inactive", sub="dead", files=""),
        "apache2": unit("apache2"),
        "chronyd": unit("chronyd"),
        "chrony": unit("chrony", "chronyd.service"),
    }
    assert pick(groups, states) == ("named-chroot", "sshd", "apache2", "chronyd")
    assert [canonical(n) for n in ("apache2", "ssh", "bind9", "postfix")] == [
        "httpd", "sshd", "named", "postfix"]


def judge(st, *helpers):
    return ServiceCheck(ServiceOptions()).judge_one(st, {h.id: h for h in helpers})


def test_an_inactive_socket_activated_service_is_judged_by_its_socket():
    svc = unit("echod", active="inactive", sub="dead", files="static",
               triggered_by=("echod.socket",))
    ok = judge(svc, unit("echod", "echod.socket", sub="listening"))
    assert (ok.status, ok.check, ok.unit) == (Status.OK, "service:echod", "echod.socket")
    assert ok.summary == "inactive, started on demand by echod.socket (listening)"
    failed = judge(svc, unit("echod", "echod.socket", active="failed", sub="failed"))
    assert (failed.status, failed.unit) == (Status.CRIT, "echod.socket")
    assert "systemctl restart echod.socket" in failed.remedy
    off = judge(svc, unit("echod", "echod.socket", sub="listening", files="disabled"))
    assert off.status is Status.WARN and "systemctl enable echod.socket" in off.remedy
    # running after a connection, or failed itself: the service's own state counts
    running = replace(svc, active_state="active", sub_state="running")
    assert judge(running, unit("echod", "echod.socket")).unit == "echod"
    dead = replace(svc, active_state="failed", sub_state="failed")
    assert judge(dead, unit("echod", "echod.socket")).unit == "echod"


def test_a_template_without_instances_is_reported_by_missing():
    assert ServiceCheck(ServiceOptions(units=("worker@",))).no_instance(
        "worker@")[0].status is Status.CRIT
    assert ServiceCheck(ServiceOptions(missing="warn")).no_instance(
        "worker@")[0].status is Status.WARN
    assert ServiceCheck(ServiceOptions(missing="skip")).no_instance("worker@") == []


def test_a_service_discovered_under_its_debian_name_keeps_its_port_and_url():
    env = Env(Config("<test>", checks={"service": ServiceOptions(units=("apache2", "sshd"))}))
    ports = PortCheck.resolve(PortOptions(), env)
    assert dict(ports.units or {}) == {"localhost:22": "sshd", "localhost:80": "apache2"}
    http = HttpCheck.resolve(HttpOptions(), env)
    assert (http.urls, http.unit) == (("http://localhost/",), "apache2")
    none = HttpCheck.resolve(HttpOptions(), Env(Config("<test>")))
    assert (none.urls, none.unit) == ((), "httpd")
