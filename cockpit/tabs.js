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

const FOLLOW_MS = 1000;  // how often a running backup's progress is read
const FOLLOW_QUIET_S = 60;  // a started backup silent that long (no progress, no report) is lost

const Backups = {
    usbPresent: false,
    timer: null,
    waiting: null,  // a backup this page started, until its report appears
    reading: false,
    load() {
        stewardJSON(withConfig(["usb", "list"])).then(doc => {
            const drives = (doc.disks || []).filter(d => d.steward);
            this.usbPresent = drives.length > 0;
            note("usb", drives.length
                ? cockpit.format(_("The steward USB drive is present: $0"), drives.map(d => d.path).join(", "))
                : _("No steward USB drive is plugged in."));
        }, err => note("usb", err.message));
        if (!this.timer)  // (a running backup's progress is being read already)
            fillTable("backup-report", [], _("Reading the last report…"));
        this.last();
        return this.generations();
    },
    generations() {
        return stewardJSON(withConfig(["backup", "list"])).then(doc => {
            fillTable("generations", (doc.generations || []).map(g => [g.id,
                g.created ? age(g.created) : "-", human(g.bytes),
                g.error ? cockpit.format(_("damaged: $0"), g.error) : (g.verified ? _("verified") : _("not verified"))]),
                      _("No backup generation on the target."));
        }, err => fillTable("generations", [], err.message));
    },
    /* steward backup last: the report, and the progress while a backup runs (whoever started
     * it: this page, the daemon on a drive's insertion or its schedule, a shell). */
    last() {
        if (this.reading)  // the previous read is still on its way (a loaded machine)
            return Promise.resolve();
        this.reading = true;
        return stewardJSON(withConfig(["backup", "last"])).then(doc => {
            BackupReport.progress(doc.progress);
            BackupReport.show(doc.report);
            const finished = doc.report ? doc.report.finished : null;
            if (this.waiting) {
                const w = this.waiting;
                if (doc.progress)
                    w.at = Date.now() / 1000;  // the quiet time counts from the last progress
                if (!doc.progress && finished !== w.before) {
                    this.waiting = null;
                    note("backup-state", doc.report.ok ? _("Backup finished.") : _("The backup did not go well: see its report below."));
                    this.generations();
                } else if (!doc.progress && Date.now() / 1000 - w.at > FOLLOW_QUIET_S) {
                    this.waiting = null;
                    note("backup-state", cockpit.format(_("The backup shows no progress and no report: see journalctl -u $0"), w.unit));
                }
            }
            const running = !!doc.progress || !!this.waiting;
            document.getElementById("backup-now").disabled = running;
            if (running && !this.timer)
                this.timer = window.setInterval(() => this.last(), FOLLOW_MS);
            else if (!running && this.timer) {
                window.clearInterval(this.timer);
                this.timer = null;
            }
        }, err => {
            BackupReport.progress(null);
            fillTable("backup-report", [], err.message);
        }).then(() => { this.reading = false });
    },
    now() {
        const button = document.getElementById("backup-now");
        button.disabled = true;
        note("backup-state", _("Starting the backup…"));
        // The report before this backup, to know when its own has come (a report file that
        // does not parse is said on the tab and does not keep a backup from starting).
        stewardJSON(withConfig(["backup", "last"])).catch(() => ({ report: null })).then(before => {
            const args = ["backup", "start"].concat(this.usbPresent ? ["--usb"] : []);
            return stewardJSON(withConfig(args)).then(doc => {
                if (!doc.started) {
                    note("backup-state", doc.message);
                    button.disabled = false;
                    return;
                }
                note("backup-state", cockpit.format(_("Backup started as $0; it goes on if this page is closed."), doc.unit));
                this.waiting = { before: before.report ? before.report.finished : null, unit: doc.unit,
                                 at: Date.now() / 1000 };
                this.last();
            });
        }).catch(err => {
            showError("backup-state", err);
            button.disabled = false;
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
        fillTable("patch-report", [], _("Reading the last report…"));
        stewardJSON(withConfig(["patch", "last"])).then(doc => PatchReport.show(doc),
                                                         err => fillTable("patch-report", [], err.message));
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
