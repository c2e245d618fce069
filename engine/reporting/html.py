"""The report as one HTML file: readable offline, no script, no stylesheet, font or image from anywhere else.

Figures are inline ``<svg>`` elements, the style sheet is in the page, long
tables fold with ``<details>`` (HTML, no JavaScript). A Content-Security-Policy
meta tag forbids every fetch but inline styles and ``data:`` images, so even
an edited copy of the page cannot make the browser ask the network for
anything. Standard library only: figures arrive as SVG text.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping

from engine.reporting.model import Report, Section, Table

__all__ = ["CSP", "page"]

#: Nothing may be fetched: styles in the page, images only as data: URIs.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
body { margin: 0; background: #fafafa; color: #1d1d1f;
       font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 40px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #0072B2; }
.sub { color: #555; margin: 0 0 10px; }
nav a { margin-right: 12px; color: #0072B2; text-decoration: none; }
.warning { background: #fff4d6; border-left: 4px solid #E69F00; padding: 6px 10px; margin: 8px 0; }
figure { margin: 16px 0 20px; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: #444; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f2f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pos { color: #007a5a; } td.neg { color: #b34400; }
details { margin: 6px 0 12px; } summary { cursor: pointer; color: #0072B2; }
.note { color: #666; font-size: 12px; }
footer { margin-top: 36px; color: #666; font-size: 12px; border-top: 1px solid #ddd; padding-top: 8px; }
code { font-size: 12px; background: #f3f3f3; padding: 1px 4px; }
"""


def _is_signed(column: str) -> bool:
    """Columns of differences (deltas, gains) show their sign and colour."""
    return column.startswith(("Δ", "delta", "gain", "blend −")) or column == "gain"


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num">—</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else ''}</td>"
    if isinstance(value, float):
        if _is_signed(column):
            cls = "pos" if value > 0 else "neg" if value < 0 else ""
            return f'<td class="num {cls}">{value:+.4f}</td>'
        # Scores, shares and weights (0..1) to 4 decimals; seconds, rates and counts to one.
        text = f"{value:.4f}" if abs(value) <= 1 else f"{value:,.1f}"
        return f'<td class="num">{text}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table_html(table: Table) -> str:
    """A table; a folded one inside ``<details>``."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v, c) for v, c in zip(row, table.columns)) + "</tr>" for row in table.rows)
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    if table.folded:
        return (f"<details><summary>{html.escape(table.title)} ({len(table.rows)} rows)</summary>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}</details>")
    if not table.rows:
        return f"<p><b>{html.escape(table.title)}.</b> {html.escape(table.note)}</p>"
    return (f"<table><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}")


def section_html(section: Section, svgs: Mapping[str, str]) -> str:
    """A section: heading, lines, figures, then tables."""
    parts = [f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>']
    parts += [f"<p>{html.escape(line)}</p>" for line in section.lines]
    for figure in section.figures:
        parts.append(f'<figure class="plot" id="fig-{figure.name}" data-figure="{figure.name}">'
                     f"<figcaption><b>{html.escape(figure.title)}.</b> {html.escape(figure.caption)}</figcaption>"
                     f"{svgs[figure.name]}</figure>")
    parts += [table_html(t) for t in section.tables]
    parts.append("</section>")
    return "\n".join(parts)


def page(report: Report, svgs: Mapping[str, str], *, command: str, database: str, generated: str) -> str:
    """The whole page: header, a link per section, the sections, what is not in the report, where it came from."""
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in report.sections)
    warnings = "".join(f'<p class="warning">Warning: {html.escape(w)}</p>' for w in report.warnings)
    body = [f"<header><h1>{html.escape(report.title)}</h1><p class=\"sub\">{html.escape(report.subtitle)}</p>"
            f"{warnings}<nav>{nav}</nav></header>"]
    body += [section_html(s, svgs) for s in report.sections]
    if report.absent:
        body.append('<section id="absent"><h2>Not in this report</h2><ul>'
                    + "".join(f"<li>{html.escape(a)}</li>" for a in report.absent) + "</ul></section>")
    body.append(f"<footer>Written by <code>{html.escape(command)}</code> on {html.escape(generated)} from "
                f"<code>{html.escape(database)}</code>. Self-contained: no script, nothing fetched.</footer>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"generator\" content=\"fsat report\">\n"
            f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")
