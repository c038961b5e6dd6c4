"""The dns check against a real BIND on loopback (tests/dnsserver.py), and its parsers."""

from __future__ import annotations

import subprocess

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.system.commands import CommandRunner
from checks.dnsservice import (
    DnsServiceCheck,
    DnsServiceOptions,
    ZoneDecl,
    parse_checkconf,
    parse_server,
    served_zones,
)
from checks.services import ServiceOptions
from tests.dnsserver import bind_server, named_binary, named_missing, zone_text
from tests.mailserver import free_port

needs_named = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "")

SERIAL = 2026112301
ZONES = {
    "example.test": zone_text("example.test", "www A 127.0.0.1").replace(" 1 3600 ",
                                                                         f" {SERIAL} 3600 "),
    # Served, but one of the built-ins discovery leaves out.
    "localhost": zone_text("localhost", "@ A 127.0.0.1"),
}


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    if named_missing():
        pytest.skip(named_missing())
    d = tmp_path_factory.mktemp("named")
    with bind_server(ZONES, d) as (host, port):
        yield f"{host}:{port}", str(d / "named.conf")


@pytest.fixture(scope="module", params=['version "none";', "version none;"])
def quiet_named(tmp_path_factory, request):
    if named_missing():
        pytest.skip(named_missing())
    d = tmp_path_factory.mktemp("quiet")
    with bind_server({"example.test": ZONES["example.test"]}, d,
                     options=request.param) as (host, port):
        yield f"{host}:{port}", request.param


def env(*units: str) -> Env:
    checks = {"service": ServiceOptions(units=units)} if units else {}
    return Env(Config("<test>", checks=checks))


def run(target: str, e: Env | None = None, **kw) -> list:
    return list(DnsServiceCheck(DnsServiceOptions(**kw), target).run(e or env()))


@needs_named
def test_served_zone_is_ok_with_its_serial(named):
    server, _ = named
    [r] = run("example.test", server=server)
    assert r.status is Status.OK, r.summary
    assert r.check == "dns:example.test"
    assert f"serial {SERIAL}" in r.summary
    metrics = {m.name: m.value for m in r.metrics}
    assert metrics["serial"] == SERIAL and metrics["response_time"] >= 0


@needs_named
def test_zone_the_server_does_not_serve_is_critical_with_a_remedy(named):
    server, conf = named
    [r] = run("nosuch.test", server=server, named_conf=conf)
    assert r.status is Status.CRIT
    assert "REFUSED" in r.summary or "not authoritative" in r.summary
    assert "named-checkzone nosuch.test" in r.remedy and "rndc reload" in r.remedy
    assert r.restartable is False


@needs_named
def test_remedy_names_the_zone_file_from_the_effective_configuration(named):
    server, conf = named
    check = DnsServiceCheck(DnsServiceOptions(server=server, named_conf=conf), "example.test")
    fix = check.zone_fix(env(), "named's log")
    zone_file = conf.replace("named.conf", "example.test.zone")
    assert fix.startswith(f"named-checkzone example.test {zone_file}; ")


def test_server_that_is_down_is_critical_after_the_query_timeout():
    [r] = run("example.test", server=f"127.0.0.1:{free_port()}", query_timeout=0.3)
    assert r.status is Status.CRIT
    assert "no answer" in r.summary and "0.3 s" in r.summary
    assert r.restartable is True  # a hung named is what restarts are for


@needs_named
def test_default_bind_discloses_its_version(named):
    server, _ = named
    [r] = run("version", server=server)
    assert r.status is Status.WARN
    assert r.check == "dns:version"
    real = subprocess.run([str(named_binary()), "-v"], capture_output=True, text=True, check=True,
                          timeout=10).stdout.split()[1]  # "BIND 9.18.x-... (...)"
    assert r.summary == f"named discloses its version ({real})"
    assert 'version "none";' in r.remedy
    assert f"dig @127.0.0.1 -p {server.split(':')[1]} version.bind" in r.details
    assert r.restartable is False
    [crit] = run("version", server=server, version="crit")
    assert crit.status is Status.CRIT


@needs_named
def test_hidden_version_is_ok(quiet_named):
    server, setting = quiet_named
    [r] = run("version", server=server)
    assert r.status is Status.OK, r.summary
    # A quoted string is what named says instead; the keyword none leaves the answer empty.
    expected = "hidden behind 'none'" if '"' in setting else "version not disclosed ("
    assert expected in r.summary


@needs_named
def test_zones_are_discovered_from_named_checkconf_without_the_builtins(named):
    _, conf = named
    opts = DnsServiceCheck.resolve(DnsServiceOptions(named_conf=conf), env())
    assert opts.zones == ("example.test",)
    ids = [c.id for c in DnsServiceCheck.instances(opts, env())]
    assert ids == ["dns:example.test", "dns:version"]


@needs_named
def test_local_results_are_linked_to_the_watched_named_unit(named):
    server, _ = named
    for unit in ("named", "named-chroot"):
        [r] = run("example.test", env(unit, "postfix"), server=server)
        assert r.unit == unit and r.depends_on == (f"service:{unit}",)
    [r] = run("example.test", env("postfix"), server=server)
    assert r.unit == "" and r.depends_on == ()


def test_without_named_checkconf_there_are_no_zones_and_the_check_says_so(tmp_path):
    bare = Env(Config("<test>"), commands=CommandRunner({"PATH": str(tmp_path)}))
    opts = DnsServiceCheck.resolve(DnsServiceOptions(), bare)
    assert opts.zones is None
    [r] = DnsServiceCheck(opts, "").run(bare)
    assert r.check == "dns" and r.status is Status.UNKNOWN
    assert "no zones to check: command not found" in r.summary
    assert "[checks.dns] zones" in r.remedy


@needs_named
def test_a_broken_named_conf_means_no_zones_and_says_why(tmp_path):
    conf = tmp_path / "named.conf"
    conf.write_text('zone "x.test" { type primary; file "x"; ')
    [r] = run("", named_conf=str(conf))
    assert r.status is Status.UNKNOWN and "exited 1" in r.summary


def test_no_named_here_and_nothing_configured_plans_nothing(tmp_path):
    bare = Env(Config("<test>"), commands=CommandRunner({"PATH": str(tmp_path)}))
    assert list(DnsServiceCheck.instances(DnsServiceOptions(), bare)) == []
    watched = env("named")
    ids = [c.id for c in DnsServiceCheck.instances(DnsServiceOptions(), watched)]
    assert ids == ["dns", "dns:version"]
    opts = DnsServiceOptions(zones=("a.test", "b.test"), version="skip")
    assert [c.id for c in DnsServiceCheck.instances(opts, bare)] == ["dns:a.test", "dns:b.test"]


CHECKCONF = """options {
\tdirectory "/var/named";
\tversion "none";
};
zone "." IN {
\ttype hint;
\tfile "named.ca";
};
zone "localhost" IN {
\ttype master;
\tfile "named.localhost";
};
zone "0.in-addr.arpa" IN {
\ttype master;
\tfile "named.empty";
};
zone "Example.COM." IN {
\ttype master;
\tfile "example.com.zone";
};
zone "chaos.test" CH {
\ttype master;
\tfile "chaos";
};
view "inside" {
\tzone "inside.test" {
\t\ttype primary;
\t\tfile "/var/named/inside.zone";
\t};
\tzone "copy.test" {
\t\ttype slave;
\t\tfile "slaves/copy.test";
\t\tmasters {
\t\t\t192.0.2.1;
\t\t};
\t};
};
"""


def test_checkconf_output_yields_primary_zones_without_builtins():
    zones, directory = parse_checkconf(CHECKCONF)
    assert directory == "/var/named"
    assert ZoneDecl("example.com", "master", "example.com.zone") in zones
    assert ZoneDecl("copy.test", "slave", "slaves/copy.test") in zones
    assert "chaos.test" not in [z.name for z in zones]
    assert served_zones(zones) == ("example.com", "inside.test")
    assert parse_checkconf("") == ([], "")


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)), ("[::1]:5353", ("::1", 5353)),
])
def test_servers_parse(text, parsed):
    assert parse_server(text) == parsed


@pytest.mark.parametrize("text", ["localhost", "localhost:53", "127.0.0.1:0", "[::1", ""])
def test_bad_servers_are_refused(text):
    with pytest.raises(ValueError):
        parse_server(text)
