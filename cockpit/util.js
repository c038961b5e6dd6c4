/* steward's Cockpit page: helpers shared by the tabs. Every value from steward is put on the
 * page with textContent, never as HTML: check summaries carry hostnames, log lines and DNS TXT. */
"use strict";

const _ = cockpit.gettext;
const ORDER = { CRIT: 0, UNKNOWN: 1, WARN: 2, OK: 3 };

/* An element with text (never HTML) and optional class. */
function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null)
        e.textContent = String(text);
    if (cls)
        e.className = cls;
    return e;
}

function statusBadge(status) {
    const known = Object.prototype.hasOwnProperty.call(ORDER, status);
    return el("span", status, "status s-" + (known ? status : "UNKNOWN"));
}

function fillTable(id, rows, empty) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren();
    if (!rows.length) {
        const tr = el("tr");
        const td = el("td", empty, "note");
        td.colSpan = document.querySelectorAll("#" + id + " th").length;
        tr.append(td);
        body.append(tr);
        return;
    }
    for (const cells of rows) {
        const tr = el("tr");
        for (const c of cells)
            tr.append(c instanceof Node ? wrapCell(c) : el("td", c));
        body.append(tr);
    }
}

function wrapCell(node) {
    if (node.tagName === "TD")
        return node;
    const td = el("td");
    td.append(node);
    return td;
}

function when(t) {
    if (!t)
        return "-";
    const d = new Date(typeof t === "number" ? t * 1000 : t);
    if (isNaN(d.getTime()))
        return String(t);
    const p = n => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
        p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
}

function human(bytes) {
    if (bytes === null || bytes === undefined)
        return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = bytes, i = 0;
    while (v >= 1024 && i < units.length - 1) {
        v /= 1024;
        i++;
    }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
}

function age(t) {
    const s = Date.now() / 1000 - (typeof t === "number" ? t : Date.parse(t) / 1000);
    if (isNaN(s))
        return "-";
    if (s < 3600)
        return cockpit.format(_("$0 min"), Math.max(0, Math.round(s / 60)));
    if (s < 48 * 3600)
        return cockpit.format(_("$0 h"), Math.round(s / 3600));
    return cockpit.format(_("$0 days"), Math.round(s / 86400));
}

/* What went wrong running steward, said so an administrator knows what to do. */
class StewardError extends Error {
    constructor(message, kind) {
        super(message);
        this.kind = kind;
    }
}

function explain(args, ex) {
    const cmd = "steward " + args.join(" ");
    if (ex.problem === "not-found")
        return new StewardError(_("steward is not installed on this machine (the steward command was not found). Install the steward package."), "missing");
    if (ex.problem === "access-denied" || ex.problem === "not-authorized" || ex.problem === "authentication-failed")
        return new StewardError(_("steward's state can only be read with administrative access. Turn on administrative access (the button at the top of Cockpit) to see and change it."), "superuser");
    const msg = (ex.message || String(ex)).trim();
    return new StewardError(cockpit.format(_("$0 failed: $1"), cmd, msg), "failed");
}

/* Run steward ARGS (as root) and resolve with {out, code}; exit codes 1-3 are statuses
 * (WARN, CRIT, UNKNOWN), not failures, so they resolve too. Exit 2 with no output on stdout
 * is steward's usage/config error and rejects with its message. */
function steward(args, opts) {
    opts = opts || {};
    return new Promise((resolve, reject) => {
        let proc;
        try {
            proc = cockpit.spawn(["steward"].concat(args),
                                 { superuser: "require", err: "message", environ: ["LC_ALL=C.UTF-8"] });
        } catch (ex) {
            reject(explain(args, ex));
            return;
        }
        if (opts.stream)
            proc.stream(opts.stream);
        // Both handlers on the spawn promise itself: only there does the failure handler
        // receive the output as its second argument.
        proc.then(out => resolve({ out: out || "", code: 0 }),
                  (ex, out) => {
                const code = ex.exit_status;
                if (typeof code === "number" && code >= 1 && code <= 3 && out && out.trim())
                    resolve({ out, code, message: ex.message });
                else
                    reject(explain(args, ex));
            });
    });
}

/* steward ARGS --format json, parsed; a clear error when the output is not JSON. */
function stewardJSON(args) {
    const full = args.concat(["--format", "json"]);
    return steward(full).then(r => {
        try {
            return JSON.parse(r.out);
        } catch (e) {
            throw new StewardError(cockpit.format(_("steward $0 printed something that is not JSON ($1): $2"),
                                                  full.join(" "), e.message, r.out.slice(0, 200)), "unparsable");
        }
    });
}

/* Translate the static page: every element with data-t gets its translation as text. */
function translatePage() {
    for (const e of document.querySelectorAll("[data-t]"))
        e.textContent = _(e.getAttribute("data-t"));
    document.documentElement.lang = cockpit.language || "en";
}

function note(id, text) {
    document.getElementById(id).textContent = text || "";
}
