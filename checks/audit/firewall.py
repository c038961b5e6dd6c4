"""firewalld rules: the daemon runs and starts at boot, and each active zone opens only the
appliance's services (plus the site's allow-list), with management access kept to the
administrators' networks. Read through firewall-cmd when firewalld runs, else from the zone XML."""

from __future__ import annotations

import ipaddress
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.model import Status
from checks.audit.base import Context, Finding, Unreadable, unknown

ORDER = 20  # place in the audit report (steward.audit entry point)

if TYPE_CHECKING:
    from checks.audit.options import AuditOptions

# What each enabled appliance unit legitimately opens, as firewalld service names.
APPLIANCE = {"postfix.service": ("smtp", "smtp-submission", "submission", "smtps"),
             "dovecot.service": ("imaps", "pop3s"), "httpd.service": ("http", "https", "http3"),
             "named.service": ("dns",), "named-chroot.service": ("dns",)}
# ssh is how the box is managed; dhcpv6-client is in EL9's stock public zone and only admits
# DHCPv6 replies to the box's own client.
BASELINE = ("ssh", "dhcpv6-client")
ADMIN: Mapping[str, tuple[str, ...]] = {"ssh": ("22/tcp",), "cockpit": ("9090/tcp",)}
PLAINTEXT: Mapping[str, tuple[str, ...]] = {"imap": ("143/tcp",), "pop3": ("110/tcp",)}
DIRS = ("/usr/lib/firewalld", "/etc/firewalld")  # later wins, as in firewalld


@dataclass
class Zone:
    name: str
    source: str  # the file or command it was read from
    keys: dict[str, list[str]]  # as firewall-cmd --list-all names them

    def __getitem__(self, key: str) -> list[str]:
        return self.keys.get(key, [])


@dataclass(frozen=True)
class Opening:
    """One thing a zone lets in, and the firewall-cmd option that takes it away."""

    label: str
    remove: str
    service: str = ""
    ports: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # a rich rule's source restriction; () means anyone


def audit(ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    running = _running(ctx, findings)
    units = ctx.enabled_units()
    installed = running or any(ctx.exists(d) for d in DIRS)
    findings.append(Finding(
        "firewall.enabled", "firewalld starts at boot", "firewalld.service" in units,
        "firewalld.service enabled" if "firewalld.service" in units else
        "firewalld.service not enabled" if installed else "firewalld not installed",
        "firewalld.service enabled", "dnf install firewalld && systemctl enable --now firewalld",
        "Without the firewall every listening socket, including ones opened by mistake, is "
        "reachable from the network.", Status.CRIT, "/etc/systemd/system/*.wants"))
    if not installed:
        return findings
    try:
        default, zones = _from_daemon(ctx) if running else _from_files(ctx, findings)
    except Unreadable as e:
        return [*findings, unknown("firewall.config", "firewalld configuration readable", e)]
    # a broken service definition leaves that service judged by name only: not reported
    services = {name: tuple(f"{p.get('port')}/{p.get('protocol')}" for p in root.iter("port"))
                for name, (_, root) in _load(ctx, "service", []).items()}
    policy = _Policy(ctx.options, default, zones, units, services)
    for zone in zones:
        findings.extend(_judge(zone, policy))
    return findings


def _running(ctx: Context, findings: list[Finding]) -> bool:
    if not ctx.live:
        return False
    tool = ctx.tool("firewall-cmd")
    try:  # 252: NOT_RUNNING; 36: no D-Bus, so no firewalld either
        state = ctx.run([tool, "--state"], ok_codes=(0, 252, 36)) if tool else None
    except Unreadable as e:
        findings.append(unknown("firewall.running", "firewalld running", e,
                                severity=Status.CRIT))
        return False
    found = "firewall-cmd not installed" if state is None else "firewall-cmd --state: " + (
        (state.stdout + state.stderr).strip().splitlines() or [f"exit {state.returncode}"])[-1]
    ok = state is not None and state.returncode == 0
    findings.append(Finding(
        "firewall.running", "firewalld running", ok, found, "running",
        "systemctl enable --now firewalld",
        "An appliance on a network needs its packet filter up; without it every listening "
        "port is open.", Status.CRIT, "firewall-cmd --state"))
    return ok


def _from_daemon(ctx: Context) -> tuple[str, list[Zone]]:
    def cmd(*args: str) -> str:
        return ctx.run([str(ctx.tool("firewall-cmd")), *args]).stdout

    default = cmd("--get-default-zone").strip()
    names = [line.split()[0] for line in cmd("--get-active-zones").splitlines()
             if line.strip() and not line[0].isspace()]
    return default, [parse_list_all(cmd(f"--zone={n}", "--list-all"),
                                    f"firewall-cmd --zone={n} --list-all")
                     for n in dict.fromkeys([default, *names])]


def parse_list_all(text: str, source: str) -> Zone:
    """``firewall-cmd --zone=Z --list-all`` output: values on the key's line, or on
    tab-indented lines below it (rich rules, forward ports)."""
    lines = text.splitlines()
    keys: dict[str, list[str]] = {}
    key = ""
    for line in lines[1:]:
        if line.startswith("\t") and key:
            keys[key].append(line.strip())
        elif ":" in line:
            key, _, rest = line.strip().partition(":")
            keys[key] = rest.split()
    if not lines or not lines[0].strip() or "target" not in keys:
        raise Unreadable(source, f"not a zone listing: {text[:80]!r}")
    return Zone(lines[0].split()[0], source, keys)


def _load(ctx: Context, kind: str, broken: list[str]) -> dict[str, tuple[str, ET.Element]]:
    """name -> (path, root) of each zone or service definition, /etc overriding /usr/lib; why
    a file cannot be used goes to ``broken``."""
    paths: dict[str, str] = {}
    for d in DIRS:  # every *.xml, hidden ones too, as firewalld reads them
        for name in ctx.listdir(f"{d}/{kind}s"):
            if name.endswith(".xml"):
                paths[name[:-len(".xml")]] = f"{d}/{kind}s/{name}"
    found: dict[str, tuple[str, ET.Element]] = {}
    for name, path in paths.items():
        try:
            text = ctx.read(path) or ""
            try:
                root = ET.fromstring(text)  # noqa: S314 (root's own configuration files)
            except ET.ParseError as e:
                raise Unreadable(str(ctx.path(path)), f"not valid XML: {e}") from None
            if root.tag != kind:
                raise Unreadable(str(ctx.path(path)), f"<{root.tag}>, not a <{kind}>")
            found[name] = (path, root)
        except Unreadable as e:
            broken.append(str(e))
    return found


def _from_files(ctx: Context, findings: list[Finding]) -> tuple[str, list[Zone]]:
    conf = ctx.read("/etc/firewalld/firewalld.conf") or ""
    default = next((v.strip() for k, _, v in (x.strip().partition("=") for x in conf.splitlines())
                    if k == "DefaultZone" and v.strip()), "public")  # firewalld's fallback
    broken: list[str] = []
    zones = [zone_from_xml(n, p, r) for n, (p, r) in _load(ctx, "zone", broken).items()]
    if broken:
        findings.append(unknown("firewall.config", "firewalld configuration readable",
                                "; ".join(broken)))
    for iface, name in _manager_bindings(ctx).items():
        for z in zones:
            if z.name == name and iface not in z["interfaces"]:
                z.keys.setdefault("interfaces", []).append(iface)
    if default not in {z.name for z in zones}:
        raise Unreadable(str(ctx.path("/etc/firewalld/firewalld.conf")),
                         f"default zone {default!r} has no zone file")
    return default, [z for z in zones if z.name == default or z["interfaces"] or z["sources"]]


def _manager_bindings(ctx: Context) -> dict[str, str]:
    """interface -> zone from NetworkManager keyfiles: where EL9 binds interfaces (both keys
    exist only in the [connection] section)."""
    out: dict[str, str] = {}
    for path in ctx.glob("/etc/NetworkManager/system-connections/*.nmconnection"):
        try:
            text = ctx.text(path)
        except Unreadable:
            continue  # not this family's file to judge; it only lends zone bindings
        keys = dict(re.findall(r"(?m)^\s*(interface-name|zone)\s*=\s*(\S+)", text))
        if "interface-name" in keys and "zone" in keys:
            out[keys["interface-name"]] = keys["zone"]
    return out


def zone_from_xml(name: str, path: str, root: ET.Element) -> Zone:
    keys: dict[str, list[str]] = {"target": [root.get("target", "default")]}
    for el in root:
        a = el.attrib
        port = f"{a.get('port')}/{a.get('protocol')}"
        value = {"service": a.get("name"), "interface": a.get("name"), "port": port,
                 "protocol": a.get("value"), "source-port": port, "masquerade": "yes",
                 "forward-port": f"port={a.get('port')}:proto={a.get('protocol')}:"
                                 f"toport={a.get('to-port', '')}:toaddr={a.get('to-addr', '')}",
                 "source": a.get("address") or a.get("mac") or f"ipset:{a.get('ipset')}",
                 }.get(el.tag) if el.tag != "rule" else rich_rule_text(el)
        if value is not None:
            key = {"rule": "rich rules", "masquerade": "masquerade"}.get(el.tag, el.tag + "s")
            keys.setdefault(key, []).append(value)
    return Zone(name, path, keys)


def rich_rule_text(rule: ET.Element) -> str:
    """A <rule> element in firewall-cmd's rich rule language (what --remove-rich-rule takes)."""
    words = ["rule"] + [f'{k}="{rule.get(k)}"' for k in ("family", "priority") if rule.get(k)]
    for el in rule:
        words.append(el.tag)
        if el.tag in ("source", "destination") and el.get("invert", "").lower() in ("true", "1"):
            words.append("NOT")
        words += [f'{k}="{v}"' for k, v in el.attrib.items() if k != "invert"]
        words += [f'limit value="{x.get("value")}"' for x in el if x.tag == "limit"]
    return " ".join(words)


def _rich_opening(text: str) -> Opening | None:
    """What an accepting rich rule opens (None for drop/reject/log-only rules)."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    element, attrs, sources, negated = "", {}, [], False
    for w in words:
        k, eq, v = w.partition("=")
        if eq:
            attrs[f"{element}.{k}"] = v
            sources += [v] if element == "source" and k == "address" else []
        elif w == "NOT":
            negated = True
        else:
            element = w
    label, remove = f"rich rule '{text}'", f"--remove-rich-rule={shlex.quote(text)}"
    limited = () if negated else tuple(sources)
    if "masquerade" in words:
        return Opening(f"{label} (masquerade)", remove)
    if "forward-port" in words:
        return Opening(label, remove, "", (f"{attrs.get('forward-port.port')}/"
                                           f"{attrs.get('forward-port.protocol')}",), limited)
    if "accept" not in words:
        return None
    if "service.name" in attrs:
        return Opening(label, remove, attrs["service.name"], sources=limited)
    port = (f"{attrs['port.port']}/{attrs.get('port.protocol')}",) if "port.port" in attrs \
        else ()  # no port and no service: everything (from its source) is accepted
    return Opening(label, remove, "", port, limited)


def _openings(z: Zone, services: Mapping[str, tuple[str, ...]]) -> list[Opening]:
    """Sorted within each kind, as firewall-cmd lists them, so both sources read the same."""
    out = [Opening(f"{s} ({', '.join(services.get(s, ())) or 'ports unknown'})",
                   f"--remove-service={s}", s, services.get(s, ()))
           for s in sorted(z["services"])]
    out += [Opening(f"port {p}", f"--remove-port={p}", "", (p,)) for p in sorted(z["ports"])]
    out += [Opening(f"protocol {p}", f"--remove-protocol={p}")
            for p in sorted(z["protocols"])]
    out += [Opening(f"source port {p} (any destination port)", f"--remove-source-port={p}")
            for p in sorted(z["source-ports"])]
    for f in sorted(z["forward-ports"]):
        kv = dict(x.partition("=")[::2] for x in f.split(":", 3))  # toaddr may be IPv6
        spec = ":".join(f"{k}={v}" for k, v in kv.items() if v)
        out.append(Opening(f"forward-port {spec}", f"--remove-forward-port={spec}", "",
                           (f"{kv.get('port')}/{kv.get('proto')}",)))
    if z["masquerade"] == ["yes"]:
        out.append(Opening("masquerade (routing for other hosts)", "--remove-masquerade"))
    return out + [o for o in map(_rich_opening, sorted(z["rich rules"])) if o]


def _covered(ports: Iterable[str], allowed: Iterable[str]) -> bool:
    """Every port (range) of ``ports`` lies inside one of the ``allowed`` ones."""
    def span(spec: str) -> tuple[int, int, str]:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?/(\w+)", spec)
        return (int(m[1]), int(m[2] or m[1]), m[3]) if m else (1, 0, "")  # (1, 0): nothing

    have = [span(a) for a in allowed]
    want = [span(p) for p in ports]
    return bool(want) and all(w[0] <= w[1] and any(a <= w[0] and w[1] <= b and w[2] == q
                                                   for a, b, q in have) for w in want)


def _within(sources: Iterable[str], nets: Iterable[str]) -> bool:
    admin = [ipaddress.ip_network(n, strict=False) for n in nets]
    try:
        found = [ipaddress.ip_network(s, strict=False) for s in sources]
    except ValueError:  # ipset: or MAC sources: not provably the admin network
        return False
    return bool(found) and all(any(f.version == a.version and f.subnet_of(a)  # type: ignore[arg-type]
                                   for a in admin) for f in found)


@dataclass(frozen=True)
class _Policy:
    """What may be open: BASELINE, the enabled units' services and [checks.audit]."""

    options: AuditOptions
    default: str
    zones: list[Zone]
    units: frozenset[str]
    services: dict[str, tuple[str, ...]]

    @property
    def names(self) -> set[str]:
        return set(BASELINE) | set(self.options.allow_services) | {
            s for unit, svcs in APPLIANCE.items() if unit in self.units for s in svcs}

    @property
    def admin(self) -> tuple[str, ...]:
        return self.options.admin_sources + self.options.admin_interfaces

    def admin_zone(self, zone: Zone) -> bool:
        """Every way into the zone is an administrators' network (never the default zone:
        it takes every interface bound nowhere else)."""
        return zone.name != self.default and bool(zone["sources"] or zone["interfaces"]) \
            and (not zone["sources"] or _within(zone["sources"], self.options.admin_sources)) \
            and all(i in self.options.admin_interfaces for i in zone["interfaces"])

    def sort(self, z: Zone) -> dict[str, list[Opening]]:
        """The zone's openings by the rule that reports them: open, plaintext, admin."""
        names = self.names
        allowed = [p for s in names for p in self.services.get(s, ())] + \
            list(self.options.allow_ports)

        def kind(o: Opening, table: Mapping[str, tuple[str, ...]]) -> bool:
            return o.service in table or _covered(o.ports, sum(table.values(), ()))

        out: dict[str, list[Opening]] = {"open": [], "plaintext": [], "admin": []}
        for o in _openings(z, self.services):
            if self.admin and kind(o, ADMIN):
                if not (self.admin_zone(z) or _within(o.sources, self.options.admin_sources)):
                    out["admin"].append(o)
            elif "dovecot.service" in self.units and kind(o, PLAINTEXT):
                out["plaintext"].append(o)
            elif not (o.service in names or _covered(o.ports, allowed)):
                out["open"].append(o)
        return out


def _judge(z: Zone, policy: _Policy) -> list[Finding]:
    bad = policy.sort(z)
    cmd = f"firewall-cmd --permanent --zone={z.name}"
    where = "zone {} ({})".format(z.name, ", ".join(
        z["interfaces"] + z["sources"] + ["default"] * (z.name == policy.default)))
    target = (z["target"] or ["default"])[0]
    out = [Finding(f"firewall.target.{z.name}", f"Zone {z.name} filters (target not ACCEPT)",
                   target.upper() != "ACCEPT", f"{where}: target {target}", "target default",
                   f"{cmd} --set-target=default && firewall-cmd --reload (or bind its "
                   "interfaces to the public zone)", "A zone whose target is ACCEPT lets every "
                   "packet in: the firewall is off for it.", Status.CRIT, z.source)]
    allow = " and " + ", ".join(policy.options.allow_ports) if policy.options.allow_ports else ""
    rules = [("open", "opens only the appliance's services", "nothing unexpected", "only "
              + ", ".join(sorted(policy.names | (set(ADMIN) if policy.admin else set()))) + allow,
              "Every open service is attack surface; only what the appliance serves should be "
              "reachable.")]
    if "dovecot.service" in policy.units:
        rules.append(("plaintext", "opens no plaintext mail access", "imaps/pop3s only",
                      "imaps, pop3s", "IMAP on 143 and POP3 on 110 carry passwords in the clear "
                      "unless Dovecot has ssl = required (STARTTLS mandatory); clients can use "
                      "993 and 995."))
    if policy.admin:
        rules.append(("admin", "keeps management to admin networks", "no management access "
                      "outside the admin networks", "ssh/cockpit only from "
                      + ", ".join(policy.admin), "Management services reachable from "
                      "everywhere invite password guessing and exploits; the site limits them "
                      "to its administrators' networks."))
    for rule, title, fine, expected, why in rules:
        items = bad[rule]
        remedy = " && ".join([*(f"{cmd} {o.remove}" for o in items), "firewall-cmd --reload"])
        if rule == "open":
            remedy += "; or, if it must stay open, add it to allow_services / allow_ports in " \
                "[checks.audit]"
        elif rule == "admin":
            remedy = _admin_first(policy) + remedy
        out.append(Finding(f"firewall.{rule}.{z.name}", f"Zone {z.name} {title}", not items,
                           f"{where} opens " + ", ".join(o.label for o in items) if items
                           else f"{where}: {fine}", expected, remedy, why, source=z.source))
    return out


def _admin_first(policy: _Policy) -> str:
    """Let the administrators in through their own zone before closing the other way in."""
    home = next((x.name for x in policy.zones if policy.admin_zone(x)), "")
    steps = [] if home else ["--new-zone=admin"] + [
        f"--zone=admin --add-source={s}" for s in policy.options.admin_sources] + [
        f"--zone=admin --add-interface={i}" for i in policy.options.admin_interfaces]
    steps.append(f"--zone={home or 'admin'} --add-service=ssh")
    return "".join(f"firewall-cmd --permanent {s} && " for s in steps)
