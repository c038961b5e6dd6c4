/* steward's Cockpit page: the overview (polled every 2 s), run-checks-now, maintenance, reset,
 * and the tab switching. */
"use strict";

const POLL_MS = 2000;
let checked = {};  // results of the last "run checks now", by check id, newer than the daemon's

function banner(text, error) {
    const b = document.getElementById("banner");
    b.hidden = !text;
    b.textContent = text || "";
    b.className = "banner" + (error ? " error" : "");
}

function renderOverview(st) {
    const rows = Object.keys(st.checks || {}).map(id => Object.assign({ id }, st.checks[id]));
    for (const id in checked) {
        const r = checked[id];
        const row = rows.find(x => x.id === id);
        // A check run from the page is newer than the daemon's view until the daemon sees a change.
        if (row && row.status === r.status)
            continue;
        if (row)
            Object.assign(row, { status: r.status, summary: r.summary, remedy: r.remedy, since: r.at, checked: true });
        else
            rows.push({ id, status: r.status, summary: r.summary, remedy: r.remedy, since: r.at, checked: true, inhibited_by: "" });
    }
    rows.sort((a, b) => (ORDER[a.status] ?? 1) - (ORDER[b.status] ?? 1) || a.id.localeCompare(b.id));
    fillTable("checks", rows.map(c => {
        const remedy = el("td", c.remedy || "", "remedy");
        const summary = el("td", c.summary);
        if (c.maintenance)
            summary.append(el("span", " " + _("[maintenance]"), "note"));
        if (c.checked)
            summary.append(el("span", " " + _("[checked from this page]"), "note"));
        const tr = [statusBadge(c.status), c.id, when(c.since), summary, remedy];
        return tr;
    }), _("No check has run yet."));
    for (const tr of document.querySelectorAll("#checks tbody tr"))
        tr.setAttribute("data-check", tr.children[1] ? tr.children[1].textContent : "");

    const worst = rows.length ? rows[0].status : null;
    const w = document.getElementById("worst");
    w.replaceChildren();
    if (worst) {
        const since = Math.min(...rows.filter(r => r.status === worst).map(r => r.since || Infinity));
        w.append(statusBadge(worst), el("span", " " + cockpit.format(_("since $0"), when(since))));
    }

    const inh = document.getElementById("inhibited");
    inh.replaceChildren();
    for (const c of rows.filter(r => r.inhibited_by))
        inh.append(el("li", cockpit.format(_("$0: inhibited by $1"), c.id, c.inhibited_by)));
    if (!inh.children.length)
        inh.append(el("li", _("None."), "note"));

    fillTable("units", Object.keys(st.units || {}).map(name => {
        const u = st.units[name];
        const b = el("button", _("Reset"));
        b.addEventListener("click", () => reset(name, b));
        return [name, cockpit.format(_("$0 of $1 in the window"), u.restarts, u.budget), u.last_action || "-",
            u.escalated ? cockpit.format(_("gave up: $0"), u.escalated) : "-", b];
    }), _("steward has not restarted any unit."));

    const m = st.maintenance || {};
    const units = Object.keys(m.units || {});
    let text = _("Maintenance is off: steward restarts and alerts as usual.");
    if (m.active && m.until)
        text = cockpit.format(_("Maintenance is on for the whole machine until $0."), when(m.until));
    else if (m.active && units.length)
        text = cockpit.format(_("Maintenance is on for $0."), units.map(u => u + " (" + when(m.units[u]) + ")").join(", "));
    note("maint-state", text);
}

function refresh() {
    return stewardJSON(["status"]).then(st => {
        window.stewardStatus = st;
        if (st.config && st.config !== "(built-in default)" && st.config.startsWith("/"))
            window.stewardConfig = st.config;
        if (!st.running && !st.checks)
            banner(_("The steward daemon is not running and has left no status. Start it: systemctl enable --now steward"), true);
        else if (!st.running)
            banner(_("The steward daemon is not running: what is shown is its last status. Start it: systemctl start steward"), true);
        else
            banner("");
        renderOverview(st);
    }, err => {
        banner(err.message, true);
        // Never an empty table: without a status to show, the table says why.
        if (!window.stewardStatus || err.kind === "superuser" || err.kind === "missing")
            fillTable("checks", [], err.message);
    });
}

function checkNow() {
    const button = document.getElementById("check-now");
    button.disabled = true;
    note("check-state", _("Running every check…"));
    const at = Date.now() / 1000;
    stewardJSON(withConfig(["check"])).then(doc => {
        checked = {};
        for (const r of doc.results || [])
            checked[r.check] = { status: r.status, summary: r.summary, remedy: r.remedy, at };
        note("check-state", cockpit.format(_("Checked at $0: $1"), when(at), doc.status));
        renderOverview(window.stewardStatus || {});
    }, err => note("check-state", err.message)).then(() => { button.disabled = false });
}

function maintenance(mode) {
    const unit = document.getElementById("maint-unit").value.trim();
    const dur = document.getElementById("maint-for").value.trim() || "1h";
    const args = ["maintenance", mode];
    if (unit)
        args.push(unit);
    if (mode === "on")
        args.push("--for", dur);
    stewardJSON(args).then(() => refresh(), err => note("maint-state", err.message));
}

function reset(unit, button) {
    button.disabled = true;
    steward(["reset", unit]).then(r => note("check-state", r.out.trim()), err => note("check-state", err.message))
        .then(() => refresh());
}

const LOADERS = {
    security: () => Security.load(),
    maildomain: () => MailDomain.load(),
    backups: () => Backups.load(),
    patching: () => Patching.load(),
    notifications: () => Notifications.load(),
};

function show(tab) {
    for (const s of document.querySelectorAll("section.tab"))
        s.hidden = s.id !== tab;
    for (const b of document.querySelectorAll("nav button"))
        b.classList.toggle("active", b.getAttribute("data-tab") === tab);
    if (LOADERS[tab])
        LOADERS[tab]();
}

document.addEventListener("DOMContentLoaded", () => {
    translatePage();
    for (const b of document.querySelectorAll("nav button"))
        b.addEventListener("click", () => show(b.getAttribute("data-tab")));
    document.getElementById("check-now").addEventListener("click", checkNow);
    document.getElementById("maint-on").addEventListener("click", () => maintenance("on"));
    document.getElementById("maint-off").addEventListener("click", () => maintenance("off"));
    document.getElementById("audit-now").addEventListener("click", () => Security.load());
    document.getElementById("maildns-now").addEventListener("click", () => MailDomain.load());
    document.getElementById("backup-now").addEventListener("click", () => Backups.now());
    document.getElementById("patch-check").addEventListener("click", () => Patching.check());
    document.getElementById("test-mail").addEventListener("click", () => Notifications.test());
    show("overview");
    refresh();
    window.setInterval(() => { if (!cockpit.hidden) refresh() }, POLL_MS);
});
