"""Reports: text for people, JSON for machines, HTML with an inline-SVG rollout timeline."""

from __future__ import annotations

import html
import json
from typing import Any

from audit.findings import CODES, STEP_NAMES, Report
from audit.names import printable


def _h(value: str) -> str:
    """A value from the log, for HTML: control and invisible characters escaped, then markup."""
    return html.escape(printable(value))


VERIFIER_NAMES = {
    "native": "native strict Ed25519 (native/ed25519, curve25519-dalek)",
    "libsodium": "libsodium strict Ed25519 (the native verifier is not installed)",
}


def text(report: Report, source: str) -> str:
    lines = [
        f"steward-audit: {printable(source)}",
        printable(f"  ledger {report.ledger or '?'} origin {report.origin or '?'}"),
        f"  {report.entries} entries, {report.checkpoints} checkpoints, {report.seconds:.2f} s",
    ]
    if report.verifier:
        lines.append(
            f"  signatures checked by: {VERIFIER_NAMES.get(report.verifier, report.verifier)}"
        )
    for step, name in STEP_NAMES.items():
        status = report.steps_run.get(step, "not run")
        errs = sum(1 for f in report.findings if f.step == step)
        mark = "FAIL" if errs else ("ok" if status == "run" else "--")
        lines.append(
            f"  {step:>2}. {mark:<4} {name}"
            + (f" ({errs} finding(s))" if errs else "")
            + ("" if status == "run" else f" [{status}]")
        )
    if report.verified_checkpoint:
        lines.append(f"  newest verified checkpoint: size {report.verified_size}")
    if report.findings:
        lines.append(f"FINDINGS ({len(report.findings)}):")
        lines += [f"  {f}" for f in report.findings]
        lines.append("RESULT: NOT VERIFIED")
    elif report.pending:
        lines.append(f"PENDING: {pending_text(report.pending)}")
        lines.append(
            f"RESULT: {verified_through(report.pending)}; seq {report.pending[0]}..{report.pending[1]} PENDING"
        )
    else:
        lines.append("RESULT: VERIFIED (no findings)")
    return "\n".join(lines) + "\n"


def pending_text(pending: tuple[int, int]) -> str:
    first, last = pending
    return (
        f"seq {first}..{last} ({last - first + 1} entries) passed every check, but no signed checkpoint "
        "covers them yet: the ledger has not vouched for them"
    )


def verified_through(pending: tuple[int, int]) -> str:
    first = pending[0]
    return (
        f"VERIFIED THROUGH seq {first - 1} (checkpoint {first})"
        if first
        else "NOTHING COVERED BY A CHECKPOINT"
    )


def as_json(report: Report, source: str) -> str:
    doc: dict[str, Any] = {
        "source": source,
        "verified": report.ok,
        "ledger": report.ledger,
        "origin": report.origin,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "verified_checkpoint_size": report.verified_size,
        "steps": {
            str(k): {"name": v, "status": report.steps_run.get(k, "not run")}
            for k, v in STEP_NAMES.items()
        },
        "findings": [f.to_json() for f in report.findings],
        "pending": None
        if report.pending is None
        else {
            "first_seq": report.pending[0],
            "last_seq": report.pending[1],
            "entries": report.pending[1] - report.pending[0] + 1,
        },
        "seconds": round(report.seconds, 3),
        "verifier": report.verifier,
    }
    return json.dumps(doc, indent=2) + "\n"


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]
_MARK = {
    "proposal": ("◆", "#444"),
    "eval": ("●", "#2ca02c"),
    "approval": ("✔", "#1f77b4"),
    "reject": ("✖", "#d62728"),
    "kill": ("■", "#d62728"),
    "release": ("□", "#2ca02c"),
    "pause": ("‖", "#ff7f0e"),
    "resume": ("▶", "#1f77b4"),
}


def timeline_svg(report: Report, width: int = 960, height: int = 360) -> str:
    events = report.timeline
    if not events:
        return "<p>No rollout events in this log.</p>"
    t0, t1 = min(e.at for e in events), max(e.at for e in events)
    span = max(t1 - t0, 1)
    left, right, top, bottom = 60, 20, 20, 60

    def x(at: int) -> float:
        return left + (at - t0) / span * (width - left - right)

    def y(w: int) -> float:
        return top + (100 - w) / 100 * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">'
    ]
    for w in (0, 25, 50, 75, 100):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(w):.1f}" y2="{y(w):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(w) + 4:.1f}" text-anchor="end">{w}%</text>'
        )
    proposals = list(dict.fromkeys(e.proposal for e in events if e.proposal is not None))
    color = {p: _COLORS[i % len(_COLORS)] for i, p in enumerate(proposals)}
    for p in proposals:
        steps = [e for e in events if e.proposal == p and e.kind == "step"]
        if not steps:
            continue
        pts, last_w = [], 0
        for e in steps:
            pts.append(f"{x(e.at):.1f},{y(last_w):.1f}")
            last_w = e.weight or 0
            pts.append(f"{x(e.at):.1f},{y(last_w):.1f}")
        pts.append(f"{x(t1):.1f},{y(last_w):.1f}")
        parts.append(
            f'<polyline fill="none" stroke="{color[p]}" stroke-width="2" points="{" ".join(pts)}">'
            f"<title>{_h(report.proposals.get(p.hex(), p.hex()[:16]))}</title></polyline>"
        )
    for e in events:
        if e.kind == "step":
            parts.append(
                f'<circle cx="{x(e.at):.1f}" cy="{y(e.weight or 0):.1f}" r="3" fill="{color.get(e.proposal or b"", "#000")}">'
                f"<title>seq {e.seq}: {_h(e.label)} {e.weight}%</title></circle>"
            )
        else:
            glyph, c = _MARK.get(e.kind, ("?", "#000"))
            parts.append(
                f'<text x="{x(e.at):.1f}" y="{height - bottom + 18}" text-anchor="middle" fill="{c}">{glyph}'
                f"<title>seq {e.seq}: {_h(e.label)}</title></text>"
            )
    legend = "  ".join(f"{g} {k}" for k, (g, _) in _MARK.items())
    parts.append(
        f'<text x="{left}" y="{height - 12}">{html.escape(legend)} — lines: canary weight per proposal</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def as_html(report: Report, source: str) -> str:
    rows = "".join(
        f"<tr><td>{f.seq if f.seq is not None else '-'}{'' if f.record is None else f' (record #{f.record})'}</td><td>{f.step}</td><td><code>{f.code}</code></td>"
        f"<td>{_h(f.message)}</td><td>{_h(f.observed)}</td><td>{_h(f.expected)}</td></tr>"
        for f in report.findings
    )
    steps = "".join(
        f"<li>{html.escape(name)} — {html.escape(report.steps_run.get(k, 'not run'))}"
        f"{' — <b>' + str(n) + ' finding(s)</b>' if (n := sum(1 for f in report.findings if f.step == k)) else ''}</li>"
        for k, name in STEP_NAMES.items()
    )
    verdict = "VERIFIED" if report.ok else f"NOT VERIFIED — {len(report.findings)} finding(s)"
    if report.ok and report.pending:
        verdict = f"{verified_through(report.pending)} — PENDING: {pending_text(report.pending)}"
    legend = "".join(
        f"<tr><td><code>{c}</code></td><td>{s}</td><td>{html.escape(d)}</td></tr>"
        for c, (s, d) in CODES.items()
        if any(f.code == c for f in report.findings)
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>steward-audit report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.ok{{color:#2ca02c}}.bad{{color:#d62728}}</style></head><body>
<h1>steward-audit</h1><p>{_h(source)} — ledger <b>{_h(report.ledger)}</b>, origin {_h(report.origin)},
{report.entries} entries, {report.checkpoints} checkpoints</p>
<h2 class="{"ok" if report.ok else "bad"}">{verdict}</h2>
<h2>Rollout timeline</h2>{timeline_svg(report)}
<h2>Steps</h2><ol>{steps}</ol>
<h2>Findings</h2><table><tr><th>seq</th><th>step</th><th>code</th><th>message</th><th>observed</th><th>expected</th></tr>{rows}</table>
<table>{legend}</table></body></html>
"""
