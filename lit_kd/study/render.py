"""How the study report is rendered: its blocks (sections of text, tables, figures and code), number formats (of the
report and of the README headline), and the two renderings, Markdown (``report.md``, PNGs beside it) and HTML
(``report.html``, figures embedded). Nothing here reads a manifest: the kinds fill the blocks."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)  # str (a paragraph), Table, Figure, or ("code", text)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


FULL_TEST_SET = 10_000  # CIFAR-10's test split: headline rows measured on fewer images say so


def points(x: float) -> str:
    """A difference of accuracies in the headline's words: ``+1.23 points``."""
    return f"{100 * x:+.2f} points"


def mean_std(mean: float, std: float | None) -> str:
    return pct(mean) if std is None else f"{100 * mean:.2f} ± {100 * std:.2f} %"


def seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def on_images(n: int | None) -> str:
    return "" if n is None or n >= FULL_TEST_SET else f" (on {n:,} test images)"


def to_markdown(title: str, sections: list[Section], out: Path) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                lines += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b.rows]
                lines += ["", f"*{b.caption}*" if b.caption else ""]
            elif isinstance(b, Figure):
                lines += [f"![{b.caption}]({b.path.relative_to(out).as_posix()})", "", f"*{b.caption}*"]
            elif isinstance(b, tuple):
                lines += ["```", b[1], "```"]
            elif b:
                lines.append(b)
            lines.append("")
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;white-space:nowrap}caption{caption-side:bottom;font-style:italic;
font-size:12px;text-align:left;padding-top:3px}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
.wrong{color:#c00;font-weight:600}code{font-size:12px}"""


def to_html(title: str, sections: list[Section]) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in b.rows)
                parts.append(f"<table><caption>{html.escape(b.caption)}</caption><tr>{head}</tr>{body}</table>")
            elif isinstance(b, Figure):
                data = base64.b64encode(b.path.read_bytes()).decode()
                parts.append(
                    f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption><i>{html.escape(b.caption)}</i></figcaption></figure>"
                )
            elif isinstance(b, tuple):
                parts.append(f"<pre>{html.escape(b[1])}</pre>")
            elif b:
                if b.startswith("- "):
                    parts.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in b.splitlines()) + "</ul>")
                else:
                    parts.append(f"<p>{_inline(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline(text: str) -> str:
    """Escaped HTML of a line of Markdown text, with its `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


NUMERIC = re.compile(r"^[-+]?(\d|-$)")  # a number (with its unit) or a lone dash: right-aligned, unwrapped
SHORT = 24  # longer cells that start with a number are sentences ("+1.56 points vs its FP32 start ..."): they wrap


def _cell(text: str) -> str:
    classes = [c for c, on in (("num", NUMERIC.match(text) and len(text) <= SHORT), ("wrong", text.endswith("✗"))) if on]
    cls = f" class='{' '.join(classes)}'" if classes else ""
    return f"<td{cls}>{_inline(text)}</td>"
