"""A whole EL9 mail-and-web appliance as a sysroot, where every audit rule family has its
configuration: SELinux (config, selinuxfs, kernel command lines, an audit.log), firewalld (the
host package's zones and services, an appliance zone and an admin zone), sshd, Postfix,
Dovecot, httpd, BIND and the system files (crypto policy, accounts, secrets, steward's patch
state), plus the steward config whose [checks.audit] options switch on the rules that need a
site policy (admin networks, site secrets). A few settings are left as EL9 ships them or as a
hurried admin would, so the audit has failures to report as well as passes.

Built by ``bench/audit`` (the audit timed over it, rules judged per second) and by
``tests/audit/test_fulltree.py`` (every rule of every family judged over it). Standard library
only: the bench runs it with the system's python3. Needs root (file owners)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

CONFIG = "/etc/steward/steward.toml"  # in the tree: give it to steward audit --config
ADMIN_NET = "192.0.2.0/28"
OPENDKIM = 990  # uid and gid of opendkim in the tree's passwd

STEWARD_TOML = f"""\
[checks.audit]
admin_sources = ["{ADMIN_NET}"]
secret_files = ["/etc/postfix/sasl_passwd"]
"""

SELINUX = "SELINUX=enforcing\nSELINUXTYPE=targeted\n"
GRUB = ('GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M,4G-64G:256M '
        'resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rhgb quiet"\n'
        "GRUB_ENABLE_BLSCFG=true\n")
BLS = ("title Red Hat Enterprise Linux (5.14.0-427.el9.x86_64) 9.4 (Plow)\n"
       "version 5.14.0-427.el9.x86_64\nlinux /vmlinuz-5.14.0-427.el9.x86_64\n"
       "options root=/dev/mapper/rhel-root ro rhgb quiet\n")
# One httpd denial an hour ago: content in a home directory (selinux.avc.httpd_t fails).
AVC = ("type=AVC msg=audit({t}.204:457): avc:  denied  {{ read }} for  pid=2114 comm=\"httpd\" "
       "name=\"index.html\" dev=\"dm-0\" ino=3412 scontext=system_u:system_r:httpd_t:s0 "
       "tcontext=unconfined_u:object_r:user_home_t:s0 tclass=file permissive=0\n")

APPLIANCE_UNITS = ("firewalld", "sshd", "postfix", "dovecot", "httpd", "named")
ZONE = ('<?xml version="1.0" encoding="utf-8"?>\n<zone{target}>\n  <short>{name}</short>\n'
        "{body}</zone>\n")
# imap (143) is open too: firewall.plaintext.public fails; ssh open to all: firewall.admin fails.
PUBLIC = ("ssh", "dhcpv6-client", "smtp", "smtp-submission", "smtps", "imaps", "pop3s", "imap",
          "http", "https", "dns")

SSHD_CONFIG = ("Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\n"
               "AuthorizedKeysFile .ssh/authorized_keys\n"
               "Subsystem sftp /usr/libexec/openssh/sftp-server\n")
SSHD_REDHAT = ("Include /etc/crypto-policies/back-ends/opensshserver.config\n"
               "SyslogFacility AUTHPRIV\nChallengeResponseAuthentication no\nUsePAM yes\n"
               "X11Forwarding yes\nPrintMotd no\n")  # X11Forwarding as EL9 ships it: fails
SSHD_STEWARD = ("PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPermitEmptyPasswords no\n")

POSTFIX_MAIN = """\
compatibility_level = 3.6
myhostname = mx1.example.com
mydestination = $myhostname, localhost.$mydomain, localhost
alias_maps = hash:/etc/aliases
disable_vrfy_command = yes
smtpd_helo_required = yes
smtpd_helo_restrictions = permit_mynetworks, reject_invalid_helo_hostname,
    reject_non_fqdn_helo_hostname
smtpd_banner = $myhostname ESMTP
smtpd_tls_security_level = may
smtpd_tls_cert_file = /etc/pki/tls/certs/postfix.pem
smtpd_tls_key_file = /etc/pki/tls/private/postfix.key
smtpd_tls_protocols = !SSLv2, !SSLv3
smtpd_tls_mandatory_protocols = !SSLv2, !SSLv3, !TLSv1, !TLSv1.1
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,
    reject_unauth_destination
"""  # smtpd_tls_protocols leaves TLS 1.0/1.1 on: postfix.tls_protocols fails
POSTFIX_MASTER = """\
smtp      inet  n       -       n       -       -       smtpd
submission inet n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
local     unix  -       n       n       -       -       local
"""
ALIASES = "postmaster:\troot\nroot:\tadmin@example.com\n"

DOVECOT = ("protocols = imap pop3 lmtp\nlisten = *\n!include conf.d/*.conf\n"
           "!include_try local.conf\n")
DOVECOT_SSL = ("ssl = yes\nssl_cert = </etc/pki/dovecot/certs/dovecot.pem\n"
               "ssl_key = </etc/pki/dovecot/private/dovecot.pem\nssl_min_protocol = TLSv1.2\n"
               )  # ssl = yes, not required: dovecot.ssl fails
DOVECOT_AUTH = "disable_plaintext_auth = yes\nauth_mechanisms = plain login\n"

HTTPD = ('ServerRoot "/etc/httpd"\nListen 80\nInclude conf.modules.d/*.conf\nUser apache\n'
         "Group apache\n<Directory />\n    AllowOverride none\n    Require all denied\n"
         "</Directory>\nDocumentRoot \"/var/www/html\"\n"
         "<IfModule mime_module>\n    TypesConfig /etc/mime.types\n</IfModule>\n"
         "IncludeOptional conf.d/*.conf\n")
HTTPD_LOCAL = "ServerTokens Prod\nServerSignature Off\nTraceEnable Off\n"
HTTPD_SSL = ("Listen 443 https\n<VirtualHost _default_:443>\n    ServerName www.example.com\n"
             "    SSLEngine on\n    SSLProtocol all -SSLv3\n"  # TLS 1.0/1.1 on: fails
             "    SSLCertificateFile /etc/pki/tls/certs/localhost.crt\n"
             "    SSLCertificateKeyFile /etc/pki/tls/private/localhost.key\n</VirtualHost>\n")

NAMED = """\
options {
\tlisten-on port 53 { any; };
\tlisten-on-v6 port 53 { any; };
\tdirectory "/var/named";
\tversion "none";
\tallow-query { any; };
\tallow-transfer { none; };
\trecursion yes;
\tallow-recursion { localnets; localhost; };
\tallow-query-cache { localnets; localhost; };
\tdnssec-validation yes;
};
include "/etc/named.rfc1912.zones";
zone "example.com" IN { type primary; file "example.com.zone"; allow-transfer { 198.51.100.53; }; };
"""
NAMED_ZONES = ('zone "localhost" IN { type primary; file "named.localhost"; allow-update '
               "{ none; }; };\n")

PASSWD = ("root:x:0:0:root:/root:/bin/bash\npostfix:x:89:89::/var/spool/postfix:/sbin/nologin\n"
          f"opendkim:x:{OPENDKIM}:{OPENDKIM}:OpenDKIM:/run/opendkim:/sbin/nologin\n")
GROUP = f"root:x:0:\npostfix:x:89:\nmail:x:12:postfix\nopendkim:x:{OPENDKIM}:\n"
PEM = "-----BEGIN DUMMY-----\n"


def write(root: Path, path: str, text: str, mode: int = 0o644, owner: int = 0,
          group: int = 0) -> Path:
    """``text`` at ``path`` under ``root`` (folders made), with mode and owner:group."""
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.chown(p, owner, group)
    p.chmod(mode)
    return p


def host_ready() -> None:
    """What the host's tools need to judge the tree: Debian's sshd -T, run as root, insists on
    its privilege separation directory, which ssh.service makes at start (EL9 packages its
    /usr/share/empty.sshd)."""
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755)


def build(root: Path, now: float | None = None) -> Path:
    """Write the appliance below ``root`` (made if missing); ``now`` dates the audit.log."""
    t = int(time.time() if now is None else now)
    _selinux(root, t)
    _firewall(root)
    _sshd(root)
    _postfix(root)
    write(root, "/etc/dovecot/dovecot.conf", DOVECOT)
    write(root, "/etc/dovecot/conf.d/10-ssl.conf", DOVECOT_SSL)
    write(root, "/etc/dovecot/conf.d/10-auth.conf", DOVECOT_AUTH)
    for f in ("certs/dovecot.pem", "private/dovecot.pem"):
        write(root, f"/etc/pki/dovecot/{f}", PEM, 0o600)
    write(root, "/etc/httpd/conf/httpd.conf", HTTPD)
    write(root, "/etc/httpd/conf.modules.d/00-base.conf",
          "LoadModule mime_module modules/mod_mime.so\n")
    write(root, "/etc/httpd/conf.modules.d/00-ssl.conf",
          "LoadModule ssl_module modules/mod_ssl.so\n")
    write(root, "/etc/httpd/conf.d/00-local.conf", HTTPD_LOCAL)
    write(root, "/etc/httpd/conf.d/ssl.conf", HTTPD_SSL)
    write(root, "/etc/pki/tls/certs/localhost.crt", PEM)
    write(root, "/etc/pki/tls/private/localhost.key", PEM, 0o600)
    write(root, "/etc/named.conf", NAMED, 0o640)
    write(root, "/etc/named.rfc1912.zones", NAMED_ZONES, 0o640)
    (root / "var/named").mkdir(parents=True, exist_ok=True)
    _system(root, t)
    return root


def _selinux(root: Path, t: int) -> None:
    write(root, "/etc/selinux/config", SELINUX)
    write(root, "/sys/fs/selinux/enforce", "1")
    write(root, "/etc/default/grub", GRUB)
    write(root, "/etc/kernel/cmdline", "root=/dev/mapper/rhel-root ro rhgb quiet\n")
    write(root, "/boot/loader/entries/0123abcd-5.14.0-427.el9.x86_64.conf", BLS)
    write(root, "/var/log/audit/audit.log", AVC.format(t=t - 3600), 0o600)


def _firewall(root: Path) -> None:
    # a copy of the host package's definitions: a link would be followed inside the sysroot
    for kind in ("zones", "services"):
        dest = root / f"usr/lib/firewalld/{kind}"
        if not dest.exists():
            shutil.copytree(f"/usr/lib/firewalld/{kind}", dest)
    write(root, "/etc/firewalld/firewalld.conf", "DefaultZone=public\nFirewallBackend=nftables\n")
    public = "".join(f'  <service name="{s}"/>\n' for s in PUBLIC)
    write(root, "/etc/firewalld/zones/public.xml",
          ZONE.format(target="", name="Public", body=public))
    write(root, "/etc/firewalld/zones/admin.xml", ZONE.format(
        target=' target="default"', name="Admin", body=f'  <source address="{ADMIN_NET}"/>\n'
        '  <service name="ssh"/>\n  <service name="cockpit"/>\n'))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in APPLIANCE_UNITS:
        link = wants / f"{unit}.service"
        if not link.is_symlink():
            link.symlink_to(f"/usr/lib/systemd/system/{unit}.service")


def _sshd(root: Path) -> None:
    write(root, "/etc/ssh/sshd_config", SSHD_CONFIG, 0o600)
    write(root, "/etc/ssh/sshd_config.d/01-steward.conf", SSHD_STEWARD, 0o600)
    write(root, "/etc/ssh/sshd_config.d/50-redhat.conf", SSHD_REDHAT, 0o600)
    write(root, "/usr/share/crypto-policies/DEFAULT/opensshserver.txt",
          "Ciphers aes256-gcm@openssh.com,chacha20-poly1305@openssh.com\n")
    link = root / "etc/crypto-policies/back-ends/opensshserver.config"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to("/usr/share/crypto-policies/DEFAULT/opensshserver.txt")


def _postfix(root: Path) -> None:
    write(root, "/etc/postfix/main.cf", POSTFIX_MAIN)
    write(root, "/etc/postfix/master.cf", POSTFIX_MASTER)
    write(root, "/etc/postfix/sasl_passwd", "[relay.example.net]:587 mx1:secret\n",
          0o644)  # readable by everyone: system.secret_files fails
    write(root, "/etc/aliases", ALIASES)
    write(root, "/etc/pki/tls/certs/postfix.pem", PEM)
    write(root, "/etc/pki/tls/private/postfix.key", PEM, 0o600)
    # postconf waits until a main.cf changed within the last second is a second old
    for f in (root / "etc/postfix").iterdir():
        os.utime(f, (f.stat().st_atime - 10, f.stat().st_mtime - 10))


def _system(root: Path, t: int) -> None:
    write(root, "/etc/crypto-policies/state/current", "DEFAULT\n")
    write(root, "/etc/crypto-policies/config", "DEFAULT\n")
    write(root, "/etc/passwd", PASSWD)
    write(root, "/etc/group", GROUP)
    for f in ("shadow", "gshadow", "shadow-", "gshadow-"):
        write(root, f"/etc/{f}", "root:!::0:99999:7:::\n", 0)
    write(root, "/etc/opendkim/keys/example.com/default.private", PEM, 0o600, OPENDKIM,
          OPENDKIM)
    write(root, "/etc/opendkim/KeyTable",
          "default._domainkey.example.com example.com:default:"
          "/etc/opendkim/keys/example.com/default.private\n")
    (root / "etc/steward").mkdir(parents=True, exist_ok=True)
    (root / "etc/steward").chmod(0o700)
    write(root, CONFIG, STEWARD_TOML, 0o600)
    write(root, "/var/lib/steward/patch/pending.json",
          json.dumps({"security": 0, "other": 4, "checked": t - 1800}) + "\n", 0o600)
