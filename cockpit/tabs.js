/* steward's Cockpit page: the tabs besides the overview. Each loads when opened. */
"use strict";

/* The config the daemon runs with (from steward status), passed to every other command. */
function withConfig(args) {
    return window.stewardConfig ? args.concat(["--config", window.stewardConfig]) : args;
}

/* Say what went wrong in the tab's note and in its table, so no panel stays blank. */
function showError(id, err, table) {
    note(id, "");
    if (table)
        fillTable(table, [], err.message || String(err));
    else
        note(id, err.message || String(err));
}

const Security = {
    load() {
        note("audit-state", _("Auditing…"));
        return stewardJSON(withConfig(["audit"])).then(doc => {
            note("audit-state", cockpit.format(_("Audited at $0"), when(Date.now() / 1000)));
            const a = doc.audit || {};
            note("score", a.score_percent === null || a.score_percent === undefined
                ? _("No hardening score (no rule could be judged).")
                : cockpit.format(_("Hardening score: $0 % ($1 rules)"), a.score_percent, a.rules));
            this.chart(a.history || []);
            const newly = document.getElementById("newly");
            newly.replaceChildren();
            for (const rule of a.newly_failing || [])
                newly.append(el("li", rule));
            if (!newly.children.length)
                newly.append(el("li", _("None."), "note"));
            const failing = (doc.results || []).filter(r => r.check !== "audit" && r.status !== "OK")
                .sort((x, y) => ORDER[x.status] - ORDER[y.status] || x.check.localeCompare(y.check));
            fillTable("rules", failing.map(r => [statusBadge(r.status), r.check, r.summary, r.details,
                el("td", r.remedy, "remedy")]), _("Every rule passes."));
        }, err => showError("audit-state", err, "rules"));
    },
    chart(history) {
        const svg = document.getElementById("score-chart");
        svg.replaceChildren();
        const ns = "http://www.w3.org/2000/svg";
        const W = 480, H = 120, pad = 24;
        const mk = (tag, attrs, text) => {
            const e = document.createElementNS(ns, tag);
            for (const k in attrs)
                e.setAttribute(k, attrs[k]);
            if (text !== undefined)
                e.textContent = text;
            svg.append(e);
            return e;
        };
        mk("line", { x1: pad, y1: H - pad, x2: W - 4, y2: H - pad, class: "axis" });
        mk("line", { x1: pad, y1: 4, x2: pad, y2: H - pad, class: "axis" });
        mk("text", { x: 0, y: 12 }, "100");
        mk("text", { x: 8, y: H - pad }, "0");
        const pts = history.filter(h => typeof h.score === "number");
        if (!pts.length) {
            mk("text", { x: pad + 10, y: H / 2 }, _("No score history yet."));
            return;
        }
        const step = pts.length > 1 ? (W - pad - 10) / (pts.length - 1) : 0;
        const xy = pts.map((h, i) => [pad + 4 + i * step, 4 + (H - pad - 4) * (1 - h.score / 100)]);
        mk("polyline", { points: xy.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "), class: "line" });
        for (const p of xy)
            mk("circle", { cx: p[0], cy: p[1], r: 3, fill: "#06c" });
        mk("text", { x: pad + 4, y: H - 6 }, when(pts[0].at));
        if (pts.length > 1)
            mk("text", { x: W - 120, y: H - 6 }, when(pts[pts.length - 1].at));
    },
};

const MailDomain = {
    load() {
        note("maildns-state", _("Checking the mail domains…"));
        return stewardJSON(withConfig(["check", "--only", "maildns"])).then(doc => {
            note("maildns-state", cockpit.format(_("Checked at $0"), when(Date.now() / 1000)));
            const rows = (doc.results || []).map(r => {
                const parts = r.check.split(":");  // maildns:DOMAIN:KIND
                return [parts[1] || "", parts.slice(2).join(":") || r.check, statusBadge(r.status),
                    r.summary, el("td", r.remedy, "remedy")];
            }).sort((x, y) => String(x[0]).localeCompare(String(y[0])));
            fillTable("maildns", rows, _("No mail domain is checked here."));
        }, err => {
            if (/matches no result/.test(err.message))  // no [checks.maildns] domain configured
                err = new StewardError(_("No mail domain is checked here."), "empty");
            showError("maildns-state", err, "maildns");
        });
    },
};

const Backups = {
    load() {
        stewardJSON(withConfig(["usb", "list"])).then(doc => {
            const drives = (doc.disks || []).filter(d => d.steward);
            note("usb", drives.length
                ? cockpit.format(_("The steward USB drive is present: $0"), drives.map(d => d.device).join(", "))
                : _("No steward USB drive is plugged in."));
        }, err => note("usb", err.message));
        return stewardJSON(withConfig(["backup", "list"])).then(doc => {
            fillTable("generations", (doc.generations || []).map(g => [g.id,
                g.created ? age(g.created) : "-", human(g.bytes),
                g.error ? cockpit.format(_("damaged: $0"), g.error) : (g.verified ? _("verified") : _("not verified"))]),
                      _("No backup generation on the target."));
        }, err => fillTable("generations", [], err.message));
    },
    now() {
        const out = document.getElementById("backup-progress");
        out.hidden = false;
        out.textContent = "";
        document.getElementById("backup-now").disabled = true;
        note("backup-state", _("Backing up…"));
        steward(withConfig(["backup", "create", "--usb"]), { stream: data => { out.textContent += data } })
            .then(r => note("backup-state", r.code === 0 ? _("Backup finished.") : cockpit.format(_("Backup ended with exit code $0."), r.code)),
                  err => showError("backup-state", err))
            .then(() => {
                document.getElementById("backup-now").disabled = false;
                this.load();
            });
    },
};

const Patching = {
    load() {
        const p = (window.stewardStatus && window.stewardStatus.patch) || {};
        note("patch-window", p.schedule
            ? cockpit.format(_("Patch window: $0; next start $1"), p.schedule, p.next_start || "-")
            : _("No patch window is configured ([patch] schedule)."));
        const last = p.last;
        note("patch-last", last && last.outcome
            ? cockpit.format(_("Last window: $0, $1$2"), when(last.window), last.outcome,
                             last.detail ? " (" + last.detail + ")" : "")
            : _("No patch window has run yet."));
        return this.check();
    },
    check() {
        note("patch-state", _("Asking dnf for pending updates…"));
        return stewardJSON(withConfig(["patch", "check"])).then(doc => {
            note("patch-state", cockpit.format(_("Checked at $0"), when(Date.now() / 1000)));
            const adv = {};
            for (const a of doc.advisories || [])
                adv[a.id] = a;
            const ups = doc.updates || [];
            note("patch-summary", cockpit.format(_("$0 updates pending, $1 advisories."), ups.length, (doc.advisories || []).length));
            fillTable("updates", ups.map(u => [u.name + "." + u.arch, u.evr, (u.advisories || []).join(", "),
                (u.advisories || []).map(id => (adv[id] && adv[id].severity) || "").filter(Boolean).join(", ")]),
                      _("The system is up to date."));
        }, err => {
            note("patch-summary", _("Pending updates are not known:"));
            showError("patch-state", err, "updates");
        });
    },
};

const Notifications = {
    load() {
        return stewardJSON(withConfig(["notify", "outbox"])).then(doc => {
            note("recipients", doc.recipients.length
                ? cockpit.format(_("Recipients: $0"), doc.recipients.join(", "))
                : _("No recipients are configured: alerts reach only the journal."));
            note("relays", cockpit.format(_("Relays: $0"), (doc.relays || []).join(", ") || "-"));
            fillTable("outbox", (doc.queued || []).map(m => [when(m.queued_at), m.subject, String(m.attempts), m.last_error]),
                      _("The outbox is empty: every mail was delivered."));
        }, err => fillTable("outbox", [], err.message));
    },
    test() {
        const out = document.getElementById("test-output");
        note("mail-state", _("Sending…"));
        steward(withConfig(["notify", "test"])).then(r => {
            out.hidden = false;
            out.textContent = r.out;
            note("mail-state", r.code === 0 ? _("The test mail was delivered.") : _("The test mail was not delivered; it stays queued."));
        }, err => showError("mail-state", err)).then(() => this.load());
    },
};
