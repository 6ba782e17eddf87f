"""The feedback-integrity report as one static HTML page: inline SVG charts (reliability diagram, label histogram,
position consistency), the gate's checks, the audit sheet. No scripts, no external assets. The figures are
rlaif.audit.integrity's; this module only draws them."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlaif.audit.integrity import IntegrityReport, ReliabilityBin
from rlaif.data.human_labels import atomic_write_text

_E = html.escape
BLUE, ORANGE, GREY, RED = "#4878a8", "#e08a2c", "#888888", "#c0504d"


def _fmt(x: float | None, pct: bool = False, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.{digits}f}"


def _fmt_ci(x: float | None, ci: Sequence[float] | None, n: int) -> str:
    """A proportion with its 95% interval and n, e.g. "56.2% (95% CI 33.2%-76.9%, n=16)"."""
    if x is None or ci is None:
        return "n/a"
    return f"{x:.1%} (95% CI {ci[0]:.1%}-{ci[1]:.1%}, n={n})"


def _text(x: float, y: float, s: str, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>{_E(s)}</text>'


def _axes(w: int, h: int, ml: int, mt: int, pw: int, ph: int, xlabel: str, ylabel: str, yticks: Sequence[float],
          ymax: float = 1.0, ypct: bool = False) -> list[str]:
    out = [f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = ml + t * pw
        out += [f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="black"/>',
                _text(x, mt + ph + 16, f"{t:g}")]
    for t in yticks:
        y = mt + ph - t / ymax * ph
        out += [f'<line x1="{ml - 4}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" stroke="black"/>',
                _text(ml - 6, y + 4, f"{t:.0%}" if ypct else f"{t:g}", anchor="end")]
    out += [_text(ml + pw / 2, h - 4, xlabel),
            _text(12, mt + ph / 2, ylabel, extra=f' transform="rotate(-90 12 {mt + ph / 2:.1f})"')]
    return out


def _svg(w: int, h: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{_E(title)}"><title>{_E(title)}</title>' + "".join(body) + "</svg>")


def svg_reliability(bins: Sequence[ReliabilityBin], bins_forward: Sequence[ReliabilityBin] = (),
                    title: str = "Reliability diagram") -> str:
    """Bars: observed frequency per bin of the order-averaged label; dots: the single-order label; dashed: ideal."""
    w, h, ml, mt, pw, ph = 380, 320, 50, 24, 310, 250
    body = [_text(ml + pw / 2, 14, title, size=12, extra=' font-weight="bold"')]
    body += _axes(w, h, ml, mt, pw, ph, "predicted P(first better)", "human prefers first",
                  (0.0, 0.25, 0.5, 0.75, 1.0))
    body.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt}" stroke="{GREY}" stroke-dasharray="4 3"/>')
    if not any(b.count for b in bins):
        body.append(_text(ml + pw / 2, mt + ph / 2, "no human-labelled pairs", size=12))
    for b in bins:
        if not b.count:
            continue
        x0, x1 = ml + b.lower * pw + 1, ml + b.upper * pw - 1
        y = mt + ph - b.frequency * ph
        tip = (f"[{b.lower:.2f}, {b.upper:.2f}): n={b.count}, mean p={b.mean_prob:.3f}, "
               f"human frequency={b.frequency:.3f}")
        body.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{mt + ph - y:.1f}" '
                    f'fill="{BLUE}" fill-opacity="0.6"><title>{_E(tip)}</title></rect>')
    for b in bins_forward:
        if b.count:
            cx, cy = ml + b.mean_prob * pw, mt + ph - b.frequency * ph
            body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="none" stroke="{ORANGE}" stroke-width="2">'
                        f'<title>{_E(f"single order: n={b.count}, mean p={b.mean_prob:.3f}")}</title></circle>')
    body += [f'<rect x="{ml + 8}" y="{mt + 6}" width="10" height="10" fill="{BLUE}" fill-opacity="0.6"/>',
             _text(ml + 22, mt + 15, "order-averaged", anchor="start", size=10),
             f'<circle cx="{ml + 13}" cy="{mt + 27}" r="4" fill="none" stroke="{ORANGE}" stroke-width="2"/>',
             _text(ml + 22, mt + 31, "single order (A)", anchor="start", size=10)]
    return _svg(w, h, title, body)


def svg_histogram(hist: Sequence[int], raw_hist: Sequence[int] = (), title: str = "Label distribution") -> str:
    """Share of labels per bin: order-averaged p_first (blue) next to raw per-presentation P(A) (orange)."""
    w, h, ml, mt, pw, ph = 380, 320, 50, 24, 310, 250
    n_bins = len(hist)
    series = [(hist, BLUE, "p_first (order-averaged)")] + ([(raw_hist, ORANGE, "raw P(A) per presentation")]
                                                          if raw_hist and sum(raw_hist) else [])
    fracs = [[c / max(sum(s), 1) for c in s] for s, _, _ in series]
    ymax = max(0.05, max(max(f) for f in fracs))
    ymax = math.ceil(ymax * 10) / 10
    ticks = [t / 10 for t in range(0, int(round(ymax * 10)) + 1)]
    if len(ticks) > 6:
        ticks = ticks[::2]
    body = [_text(ml + pw / 2, 14, title, size=12, extra=' font-weight="bold"')]
    body += _axes(w, h, ml, mt, pw, ph, "label value", "share of labels", ticks, ymax=ymax, ypct=True)
    bw = pw / n_bins / len(series)
    for j, ((counts, color, name), fr) in enumerate(zip(series, fracs)):
        for k, (c, f) in enumerate(zip(counts, fr)):
            x = ml + k * pw / n_bins + j * bw + 1
            y = mt + ph - f / ymax * ph
            tip = f"{name} [{k / n_bins:.2f}, {(k + 1) / n_bins:.2f}): {c} ({f:.1%})"
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" height="{mt + ph - y:.1f}" '
                        f'fill="{color}"><title>{_E(tip)}</title></rect>')
        body += [f'<rect x="{ml + 8}" y="{mt + 6 + 16 * j}" width="10" height="10" fill="{color}"/>',
                 _text(ml + 22, mt + 15 + 16 * j, name, anchor="start", size=10)]
    return _svg(w, h, title, body)


def svg_consistency(position_consistency: float | None, slot_a_rate: float,
                    title: str = "Position consistency and slot bias") -> str:
    """Two stacked bars: pairs whose two orders agree vs disagree; presentations answered A vs B."""
    w, h, ml, pw = 660, 150, 190, 330
    body = [_text(w / 2, 16, title, size=12, extra=' font-weight="bold"')]
    rows = [("pairs: both orders agree", position_consistency, BLUE, RED, "consistent", "inconsistent"),
            ("presentations answered", slot_a_rate, ORANGE, GREY, "(A)", "(B)")]
    for i, (name, frac, c1, c2, l1, l2) in enumerate(rows):
        y = 34 + i * 50
        body.append(_text(ml - 8, y + 18, name, anchor="end"))
        if frac is None:
            body.append(_text(ml + pw / 2, y + 18, "n/a (one order scored)"))
            continue
        x1 = ml + frac * pw
        body += [f'<rect x="{ml}" y="{y}" width="{frac * pw:.1f}" height="26" fill="{c1}">'
                 f'<title>{_E(f"{l1}: {frac:.1%}")}</title></rect>',
                 f'<rect x="{x1:.1f}" y="{y}" width="{(1 - frac) * pw:.1f}" height="26" fill="{c2}">'
                 f'<title>{_E(f"{l2}: {1 - frac:.1%}")}</title></rect>',
                 _text(ml + pw + 8, y + 18, f"{l1} {frac:.1%}", anchor="start")]
    body.append(f'<line x1="{ml + pw / 2}" y1="28" x2="{ml + pw / 2}" y2="{h - 10}" stroke="black" '
                f'stroke-dasharray="3 3"/>')
    return _svg(w, h, title, body)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f2f2f2}
.cell{max-height:12em;overflow:auto;white-space:pre-wrap;min-width:12em}
.fig{display:inline-block;margin:8px 16px 8px 0}
.bad{color:#b00}
"""


def render_html(report: IntegrityReport, audit_rows: Sequence[Mapping] = (), title: str = "AI feedback integrity",
                gate: Sequence[tuple[str, bool]] = (), verdict: str = "") -> str:
    """One self-contained HTML page: the trust gate's checks first (`gate`: one line per check and whether it
    passed; `verdict`: the decision), then headline figures, the plots as inline SVG, per-principle and audit
    tables."""
    r = report
    headline = [
        ("Pairs labelled", str(r.n_pairs)),
        ("Pairs scored in both orders", str(r.n_both_orders)),
        ("Human-labelled pairs (ties excluded)", str(r.n_human)),
        ("Agreement with human labels (order-averaged)", _fmt_ci(r.agreement, r.agreement_ci, r.n_human)),
        ("Agreement, single order: first shown as (A)",
         _fmt_ci(r.agreement_forward, r.agreement_forward_ci, r.n_human)),
        ("Agreement, single order: first shown as (B)",
         _fmt_ci(r.agreement_swapped, r.agreement_swapped_ci, r.n_human_swapped)),
        ("Position consistency", _fmt_ci(r.position_consistency, r.position_consistency_ci, r.n_both_orders)),
        ("Mean P(A) over presentations (0.5 = no slot bias)", _fmt(r.p_slot_a_mean)),
        ("Presentations answered (A)", _fmt(r.slot_a_rate, pct=True)),
        ("Mean p_first", _fmt(r.p_first_mean)),
        ("Mean label entropy (nats, max 0.693)", _fmt(r.mean_entropy)),
        (f"ECE vs human labels ({r.n_bins} bins, order-averaged)", _fmt(r.ece)),
        ("ECE vs human labels (single order)", _fmt(r.ece_forward)),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_E(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{_E(title)}</h1>",
    ]
    if gate:
        parts += ["<h2>Trust gate</h2>", f'<p id="verdict"{"" if verdict == "trusted" else " class=bad"}>'
                  f"{_E(verdict.upper())}</p>", '<ul id="gate">']
        parts += [f"<li{'' if ok else ' class=bad'}>{_E(line)}</li>" for line, ok in gate]
        parts.append("</ul>")
    parts += ["<h2>Headline figures</h2>", '<table id="headline">']
    for name, value in headline:
        parts.append(f"<tr><th>{_E(name)}</th><td>{_E(value)}</td></tr>")
    parts += ["</table>", "<h2>Plots</h2>",
              f'<div class="fig">{svg_reliability(r.reliability, r.reliability_forward)}</div>',
              f'<div class="fig">{svg_histogram(r.histogram, r.raw_histogram)}</div>',
              f'<div class="fig">{svg_consistency(r.position_consistency, r.slot_a_rate)}</div>']
    parts += ["<h2>Per principle</h2>", '<table id="principles">',
              "<tr><th>principle</th><th>pairs</th><th>mean p_first</th><th>position consistency</th>"
              "<th>human pairs</th><th>agreement (95% CI)</th></tr>"]
    for name, d in sorted(r.per_principle.items(), key=lambda kv: -kv[1]["n"]):
        parts.append(f'<tr><td><div class="cell">{_E(name or "(none)")}</div></td><td>{d["n"]}</td>'
                     f'<td>{_E(_fmt(d["p_first_mean"]))}</td><td>{_E(_fmt(d["position_consistency"], pct=True))}</td>'
                     f'<td>{d["n_human"]}</td>'
                     f'<td>{_E(_fmt_ci(d["agreement"], d["agreement_ci"], d["n_human"]))}</td></tr>')
    parts.append("</table>")
    if audit_rows:
        crit = any("critique_a" in row or "critique_b" in row for row in audit_rows)
        human = any(row.get("human_p_a") is not None or row.get("human_choice") for row in audit_rows)
        cols = ["#", "id", "prompt", "response A (first)", "response B (second)", "principle", "AI P(A) averaged",
                "first as (A)", "first as (B)", "consistent"]
        cols += ["critique of A", "critique of B"] if crit else []
        cols += ["human"] if human else []
        parts += [f"<h2>Audit sample ({len(audit_rows)} pairs)</h2>", '<table id="audit">',
                  "<tr>" + "".join(f"<th>{_E(c)}</th>" for c in cols) + "</tr>"]
        for row in audit_rows:
            cells = [str(row.get("index", "")), str(row.get("id", "")), row.get("prompt"), row.get("response_a"),
                     row.get("response_b"), row.get("principle"), _fmt(row.get("ai_p_a")),
                     _fmt(row.get("ai_p_a_forward")), _fmt(row.get("ai_p_a_swapped")),
                     "n/a" if row.get("consistent") is None else ("yes" if row["consistent"] else "NO")]
            if crit:
                cells += [row.get("critique_a"), row.get("critique_b")]
            if human:
                h = row.get("human_choice") or ("" if row.get("human_p_a") is None else f"p_a={row['human_p_a']}")
                cells.append(h)
            parts.append("<tr>" + "".join(f'<td><div class="cell">{_E("" if c is None else str(c))}</div></td>'
                                          for c in cells) + "</tr>")
        parts.append("</table>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html_report(path: str | os.PathLike, report: IntegrityReport, audit_rows: Sequence[Mapping] = (),
                      title: str = "AI feedback integrity", gate: Sequence[tuple[str, bool]] = (),
                      verdict: str = "") -> Path:
    """Write the self-contained HTML report atomically (temporary file, then rename)."""
    return atomic_write_text(path, render_html(report, audit_rows, title, gate, verdict))


