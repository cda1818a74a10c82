"""The console's pages, as pure functions of plain data to HTML.

No template engine and no JavaScript: each page is a few f-strings, and every value that reaches the
page goes through :func:`esc` (``html.escape`` with quotes), since the dead letters' payloads and
reasons are whatever a sender sent. Forms are plain HTML forms; those that act carry the CSRF token.
The pages can be tested, and their screenshots regenerated, without a broker.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from affluent.console.rates import Rate
from affluent.dlq import Row

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2733;background:#f5f7fa}
header{background:#1d3557;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:center}
header a{color:#fff;text-decoration:none;padding:.2em .5em;border-radius:3px}
header a.on{background:#457b9d} header .who{margin-left:auto;opacity:.9}
header form{margin:0} header button{font-size:12px}
main{padding:1em 1.6em;max-width:1180px}
h1{font-size:20px;margin:.3em 0 .6em} h2{font-size:16px;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d7dde5;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#e9eef4} td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #d7dde5;padding:.7em;overflow:auto;max-height:30em;font-size:12.5px}
.ok{color:#1b7a3a;font-weight:600} .bad{color:#b3261e;font-weight:600} .muted{color:#65717e}
.badge{display:inline-block;padding:.15em .7em;border-radius:1em;color:#fff;font-weight:600}
.badge.ok{background:#1b7a3a;color:#fff} .badge.bad{background:#b3261e;color:#fff}
.note{background:#fff4d6;border:1px solid #e8c766;padding:.6em .8em;margin:.6em 0}
.error{background:#fde7e7;border:1px solid #e3a3a3;padding:.6em .8em;margin:.6em 0}
form.inline label{margin-right:1em} input[type=text],input[type=password]{padding:.25em;min-width:18em}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


def link(path: str, **query: str | None) -> str:
    """A local URL with its query (empty values left out), escaped for an attribute."""
    shown = {k: v for k, v in query.items() if v}
    return esc(path + ("?" + urlencode(shown) if shown else ""))


@dataclass(frozen=True, slots=True)
class Frame:
    """What every page of a logged-in caller shows around its content."""

    who: str
    csrf: str
    can_logout: bool = True  # a session can end; a certificate or a bearer header cannot


def page(title: str, body: str, frame: Frame | None = None, active: str = "") -> str:
    nav = ""
    if frame is not None:
        tabs = "".join(
            f'<a href="{path}"{" class=on" if active == path else ""}>{name}</a>'
            for path, name in (("/", "Health"), ("/dlq", "Dead letters"), ("/trace", "Trace"))
        )
        out = (
            '<form method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{esc(frame.csrf)}"><button>log out</button></form>'
            if frame.can_logout
            else ""
        )
        nav = f'{tabs}<span class="who">{esc(frame.who)}</span>{out}'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · affluent console</title><style>{STYLE}</style></head>"
        f"<body><header><strong>affluent</strong>{nav}</header><main><h1>{esc(title)}</h1>{body}</main>"
        "</body></html>"
    )


def error_page(status: int, line: str, frame: Frame | None = None) -> str:
    return page(f"Error {status}", f'<p class="error">{esc(line)}</p>', frame)


def login_page(next_path: str, problem: str | None = None) -> str:
    note = f'<p class="error">{esc(problem)}</p>' if problem else ""
    body = (
        f"{note}<p>Paste your console token (<code>affluent console token --name NAME</code> makes one).</p>"
        '<form method="post" action="/login" class="inline">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label>token <input type="password" name="token" autocomplete="off" required autofocus></label>'
        "<button>log in</button></form>"
    )
    return page("Log in", body)


# --- health -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    role: str
    pid: int | None
    ready: bool
    restarts: int
    metrics: str | None


@dataclass(frozen=True, slots=True)
class Health:
    supervisor: str  # the /health URL read
    problem: str | None = None  # why it could not be read; None: it was
    ready: bool = False
    children: Sequence[Child] = ()
    rates: Sequence[Rate] = ()
    interval_s: float | None = None  # between the two scrapes the rates come from; None: not yet two
    next_in_s: float = 0.0


def health_page(view: Health, frame: Frame) -> str:
    if view.problem is not None:
        body = (
            f'<p class="error">affluent run is not reachable at {esc(view.supervisor)}: '
            f"{esc(view.problem)}</p>"
            "<p>Start it (<code>affluent run</code>), or point <code>AFFLUENT_CONSOLE__SUPERVISOR_URL</code> "
            "at its /health.</p>"
        )
        return page("Health", body, frame, "/")
    state = '<span class="ok">ready</span>' if view.ready else '<span class="bad">not ready</span>'
    rows = "".join(
        f"<tr><td>{esc(c.name)}</td><td>{esc(c.role)}</td>"
        f"<td>{'<span class=ok>ready</span>' if c.ready else '<span class=bad>not ready</span>'}</td>"
        f'<td class="n">{esc(c.pid) if c.pid else "—"}</td><td class="n">{c.restarts}</td>'
        f'<td class="muted">{esc(c.metrics or "—")}</td></tr>'
        for c in view.children
    )
    body = (
        f"<p>Supervisor <code>{esc(view.supervisor)}</code>: {state}, {len(view.children)} component(s).</p>"
        "<table><tr><th>component</th><th>role</th><th>state</th><th>pid</th><th>restarts</th>"
        f"<th>metrics</th></tr>{rows}</table><h2>Rates</h2>{_rates(view)}"
    )
    return page("Health", body, frame, "/")


def _rates(view: Health) -> str:
    if view.interval_s is None:
        return (
            f'<p class="muted">measuring: the first rates come {view.next_in_s:.0f} s after the next '
            "scrape.</p>"
        )
    if not view.rates:
        return '<p class="muted">no component exports a rated counter.</p>'
    rows = "".join(
        f"<tr><td>{esc(r.component)}</td><td>{esc(r.channel)}</td>"
        f'<td class="n">{r.per_s:.1f}</td><td class="n">{r.total:,.0f}</td></tr>'
        for r in view.rates
    )
    return (
        f'<p class="muted">over the last {view.interval_s:.0f} s</p><table><tr><th>component</th>'
        f"<th>channel</th><th>per second</th><th>total</th></tr>{rows}</table>"
    )


# --- dead letters -------------------------------------------------------------------------------------


def _since_form(action: str, since: datetime, extra: dict[str, str] | None = None) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in (extra or {}).items()
    )
    return (
        f'<form method="get" action="{esc(action)}" class="inline">{hidden}'
        f'<label>since <input type="text" name="since" value="{esc(since.isoformat(timespec="minutes"))}">'
        "</label><button>show</button></form>"
    )


def dlq_page(rows: Sequence[Row], since: datetime, frame: Frame) -> str:
    since_text = since.isoformat(timespec="minutes")

    def ids(r: Row) -> str:
        return link(
            "/dlq/letters",
            topic=r.topic,
            stage=r.stage,
            reason=r.reason_code,
            facility=r.facility,
            since=since_text,
        )

    if not rows:
        table = '<p class="muted">no dead letters in that range.</p>'
    else:
        lines = "".join(
            f"<tr><td>{esc(r.topic)}</td><td>{esc(r.stage)}</td><td>{esc(r.reason_code)}</td>"
            f"<td>{esc(r.facility or '—')}</td>"
            f'<td class="n"><a href="{ids(r)}">{r.count}</a></td>'
            f"<td>{when(r.first)}</td><td>{when(r.last)}</td></tr>"
            for r in rows
        )
        table = (
            "<table><tr><th>topic</th><th>stage</th><th>reason</th><th>facility</th><th>count</th>"
            f"<th>first</th><th>last</th></tr>{lines}</table>"
            f'<p class="muted">{sum(r.count for r in rows)} dead letter(s). Reasons: docs/operations.md.</p>'
        )
    return page("Dead letters by reason", _since_form("/dlq", since) + table, frame, "/dlq")


@dataclass(frozen=True, slots=True)
class Letter:
    raw_id: str | None
    failed_at: datetime
    location: str | None


def letters_page(
    topic: str,
    stage: str,
    reason: str,
    facility: str,
    since: datetime,
    letters: Sequence[Letter],
    frame: Frame,
) -> str:
    since_text = since.isoformat(timespec="minutes")
    rows = "".join(
        "<tr><td>"
        + (
            f'<a href="{link("/dlq/" + x.raw_id, since=since_text)}"><code>{esc(x.raw_id)}</code></a>'
            if x.raw_id
            else '<span class="muted">no raw id (unreadable input)</span>'
        )
        + f"</td><td>{when(x.failed_at)}</td><td>{esc(x.location or '—')}</td></tr>"
        for x in letters
    )
    body = (
        f"<p>{esc(topic)} · stage {esc(stage)} · reason <code>{esc(reason)}</code> · "
        f"facility {esc(facility or '—')} · since {esc(since_text)}</p>"
        f"<table><tr><th>raw id</th><th>failed at</th><th>location</th></tr>{rows}</table>"
        f'<p><a href="{link("/dlq", since=since_text)}">back to the reasons</a></p>'
    )
    return page(f"{len(letters)} dead letter(s)", body, frame, "/dlq")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    raw_id: str
    since: datetime  # the dead-letter window the page was asked for
    trace_since: datetime  # where a trace of it starts: a little before its first dead letter
    records: Sequence[Sequence[str]]  # affluent.dlq.render_record's lines, one list per dead letter
    verdicts: Sequence[str] = ()  # the re-drive dry run's lines
    redrive_problem: str | None = None  # why it cannot be re-driven (a dry run's ConfigError)
    refused_again: bool = False  # for a reason it was refused for: re-driving needs force
    refused_otherwise: bool = False  # for another reason only: it would become another dead letter


def dead_letter_page(view: DeadLetter, frame: Frame) -> str:
    since_text = view.since.isoformat(timespec="minutes")
    shown = "".join(f"<pre>{esc(chr(10).join(lines))}</pre>" for lines in view.records)
    if view.redrive_problem is not None:
        redrive = f'<p class="note">{esc(view.redrive_problem)}</p>'
    else:
        verdicts = "".join(f"<li>{esc(v)}</li>" for v in view.verdicts)
        if view.refused_again:
            badge = '<span class="badge bad">would be refused again</span>'
        elif view.refused_otherwise:
            badge = '<span class="badge bad">would be refused for another reason</span>'
        else:
            badge = '<span class="badge ok">maps now</span>'
        redrive = (
            f"<p>Dry run: {badge}</p><ul>{verdicts}</ul>"
            f'<form method="post" action="{esc("/dlq/" + view.raw_id + "/redrive")}" class="inline" '
            'id="redrive">'
            f'<input type="hidden" name="csrf" value="{esc(frame.csrf)}">'
            f'<input type="hidden" name="since" value="{esc(since_text)}">'
            '<label>why <input type="text" name="why" required maxlength="200" '
            'placeholder="a ticket id, recorded in the audit trail"></label>'
            '<label><input type="checkbox" name="force" value="yes"> force (even if refused again)</label>'
            "<button>re-drive</button></form>"
        )
    body = (
        f"<p>raw id <code>{esc(view.raw_id)}</code> · since {esc(since_text)} · "
        f'<a href="{link("/trace", q=view.raw_id, since=view.trace_since.isoformat(timespec="minutes"))}">'
        "trace it</a></p>"
        '<p class="muted">This page shows the refused payload: reading it is recorded in the audit '
        "trail.</p>"
        f"{shown}<h2>Re-drive</h2>{redrive}"
    )
    return page(f"Dead letter {view.raw_id[:16]}…", body, frame, "/dlq")


def redriven_page(
    raw_id: str, since: datetime, trace_since: datetime, lines: Sequence[str], frame: Frame
) -> str:
    since_text = since.isoformat(timespec="minutes")
    body = (
        f'<p class="ok">Re-driven, and recorded in the audit trail as yours ({esc(frame.who)}).</p>'
        f"<pre>{esc(chr(10).join(lines))}</pre>"
        f'<p><a href="{link("/trace", q=raw_id, since=trace_since.isoformat(timespec="minutes"))}">'
        "trace it</a> · "
        f'<a href="{link("/dlq/" + raw_id, since=since_text)}">back to the dead letter</a></p>'
    )
    return page("Re-driven", body, frame, "/dlq")


def redrive_refused_page(raw_id: str, problem: str, lines: Sequence[str], frame: Frame) -> str:
    said = f"<pre>{esc(chr(10).join(lines))}</pre>" if lines else ""
    body = (
        f'<p class="error">{esc(problem)}</p>{said}'
        f'<p><a href="{link("/dlq/" + raw_id)}">back to the dead letter</a></p>'
    )
    return page("Not re-driven", body, frame, "/dlq")


# --- trace --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traced:
    lines: Sequence[str]
    arrived: bool


def trace_page(
    q: str, sender: str, since: str, frame: Frame, result: Traced | None = None, problem: str | None = None
) -> str:
    form = (
        '<form method="get" action="/trace" class="inline">'
        f'<label>find <input type="text" name="q" value="{esc(q)}" '
        'placeholder="raw id, FACILITY/MSH-10, Type/id, event id"></label>'
        f'<label>sender <input type="text" name="sender" value="{esc(sender)}" '
        'placeholder="for Type/id"></label>'
        f'<label>since <input type="text" name="since" value="{esc(since)}" '
        'placeholder="default: 24 hours ago"></label>'
        "<button>trace</button></form>"
    )
    out = ""
    if problem is not None:
        out = f'<p class="error">{esc(problem)}</p>'
    elif result is not None:
        badge = (
            '<span class="badge ok">arrived</span>'
            if result.arrived
            else '<span class="badge bad">not arrived</span>'
        )
        out = f"<p>{badge}</p><pre>{esc(chr(10).join(result.lines))}</pre>"
    return page("Trace", form + out, frame, "/trace")
