/* steward's Cockpit page: the last backup's report, a running backup's progress and the last
 * patch report, as steward backup last / steward patch last give them. Values are text. */
"use strict";

/* A list of lines as a <ul>, or "None." */
function lines(items, none) {
    if (!items || !items.length)
        return el("span", none === undefined ? _("None.") : none, "note");
    const ul = el("ul", undefined, "plain");
    for (const item of items)
        ul.append(el("li", item));
    return ul;
}

function seconds(s) {
    if (s === null || s === undefined)
        return "-";
    s = Math.round(s);
    return s >= 60 ? cockpit.format(_("$0 min $1 s"), Math.floor(s / 60), s % 60) : cockpit.format(_("$0 s"), s);
}

function badgeWith(status, text) {
    const span = el("span");
    span.append(statusBadge(status), el("span", " " + text));
    return span;
}

const BackupReport = {
    /* The progress line of a running backup (hidden when none runs). */
    progress(p) {
        const box = document.getElementById("backup-progress");
        box.hidden = !p;
        if (!p)
            return;
        const bar = document.getElementById("backup-bar");
        if (p.total_bytes) {
            bar.value = Math.min(100, Math.round(100 * p.bytes / p.total_bytes));
        } else {
            bar.removeAttribute("value");  // indeterminate until the walk has planned something
        }
        const phase = { starting: _("starting (hooks, mounting, snapshots)"),
                        writing: _("writing archives"),
                        finishing: _("finishing (commit, retention, unmount)") }[p.phase] || p.phase;
        const where = p.kind === "usb" ? _("to the steward USB drive") : cockpit.format(_("to $0"), p.target);
        note("backup-numbers", cockpit.format(_("Backing up $0 since $1, $2: $3 of ~$4, $5 of ~$6 files so far"),
                                              where, when(p.started), phase, human(p.bytes),
                                              human(p.total_bytes), p.files, p.total_files));
    },

    /* The last report as rows of the #backup-report table. */
    show(rep) {
        if (!rep) {
            fillTable("backup-report", [], _("No backup has finished on this machine yet."));
            return;
        }
        let result;
        if (rep.ok)
            result = badgeWith("OK", _("committed and verified"));
        else if (rep.generation)
            result = badgeWith("WARN", _("committed, with problems"));
        else
            result = badgeWith("CRIT", _("failed: nothing was committed"));
        const where = rep.kind === "usb"
            ? cockpit.format(_("the steward USB drive $0 ($1)"), rep.drive || "-", rep.target || "-")
            : rep.target;
        const size = rep.generation
            ? cockpit.format(_("$0 entries, $1 read, $2 stored ($3 newly written, $4 of $5 archives reused)"),
                             rep.entries, human(rep.bytes), human(rep.stored), human(rep.written),
                             rep.reused_segments, rep.segments)
            : "-";
        const changed = rep.changed.map(c => c.path + ": " + c.how);
        if (rep.changed_count > changed.length)
            changed.push(cockpit.format(_("… and $0 more (see the generation's manifest.json)"),
                                        rep.changed_count - changed.length));
        const rows = [
            [_("Result"), result],
            [_("When"), cockpit.format(_("$0 to $1"), when(rep.started), when(rep.finished))],
            [_("Where"), cockpit.format(_("$0 from $1"), where, rep.source)],
            [_("Generation"), rep.generation || "-"],
            [_("Size"), size],
            [_("Time taken"), seconds(rep.duration_s)],
            [_("Verified"), rep.verified ? _("yes: read back and compared before the commit") : _("no")],
            [_("Files that changed while read"), lines(changed)],
            [_("Errors"), lines(rep.errors)],
        ];
        if (rep.warnings_count)
            rows.push([_("Warnings"), lines(rep.warnings)]);
        if (rep.dropped.length)
            rows.push([_("Deleted by [backup] keep"), rep.dropped.join(", ")]);
        fillTable("backup-report", rows, "");
    },
};

function shift(s) {
    return s.check + ": " + (s.before || _("(new)")) + " → " + (s.after || _("(gone)")) + ": " + s.summary;
}

function health(h) {
    return h ? badgeWith(h.status, cockpit.format(_("$0 ($1 checks in $2)"), h.counts, h.checks, seconds(h.seconds)))
        : el("span", _("not checked"), "note");
}

const PatchReport = {
    show(doc) {
        const rep = doc.report;
        if (!rep) {
            fillTable("patch-report", [], _("No patch run has reported on this machine yet."));
            return;
        }
        const rows = [
            [_("Result"), badgeWith(rep.status, rep.headline)],
            [_("When"), cockpit.format(_("$0 to $1"), when(rep.started), when(rep.finished))],
            [_("Health before"), health(rep.health.before)],
            [_("Health after"), health(rep.health.after)],
            [_("Checks that got worse"), lines(rep.health.worse.map(shift))],
            [_("Checks that got better"), lines(rep.health.better.map(shift))],
            [_("Packages changed"), lines(rep.packages.map(p => p.name + "." + p.arch + ": " +
                                                        (p.from || "-") + " → " + (p.to || "-") + " (" + p.action + ")"),
                                          rep.dry_run ? _("None (dry run).") : _("None."))],
            [_("Services restarted"), lines(rep.restarts.map(r => r.unit + ": " + r.state))],
            [_("Reboot"), rep.reboot],
        ];
        if (rep.rollback)
            rows.push([_("Rollback"), rep.rollback.command + " — " + rep.rollback.done]);
        fillTable("patch-report", rows, "");
    },
};
