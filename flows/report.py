"""Per-index reports: ``grove report INDEX`` -> one page an operator can open or attach.

Sections (all read through the public `Store` API, nothing written to the store):

1. version lineage: id, parent, step note, created, kind, shape, dataset/split, aliases;
2. metrics per version: one row per (version, role, beam, seen kept/filtered), the newest stored
   value of each metric@k (metrics are append-only, so a re-evaluation supersedes older rows);
3. the efficiency-accuracy curve: recall@k against users per second, one point per evaluated
   beam (``steps.evaluate`` records ``users_per_second`` at every beam with seen items kept),
   one line per version (matplotlib Agg, no pyplot state);
4. the current aliases and the alias log (moves, promotions, rejections, rollbacks).

Formats: ``html`` is self-contained (the PNG is embedded as base64); ``md`` writes the PNG
beside the page (``<stem>-curve.png``) and links it by relative name.
"""

from __future__ import annotations

import base64
import html
import io
import json
import pathlib
from dataclasses import dataclass
from datetime import datetime

from grove.indexstore.entities import AliasEvent, MetricRow, VersionInfo, utcnow
from grove.indexstore.errors import GroveError

FORMATS = ("html", "md")
METRIC_ORDER = ("recall", "precision", "ndcg", "ndcg_returned", "f1", "novelty", "fidelity")
MAX_CURVES = 8  # versions drawn on the curve (newest and aliased first)


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, as plain records."""

    index: str
    versions: list[VersionInfo]  # oldest first
    metrics: dict[int, list[MetricRow]]  # version id -> rows in recording order
    aliases: dict[str, int]  # alias -> version
    history: list[AliasEvent]  # oldest first
    generated_at: datetime


def gather(store, index: str) -> ReportData:
    """Read one index's versions, metrics and aliases (NotFoundError for an unknown index)."""
    versions = store.list_versions(index)
    return ReportData(
        index,
        versions,
        {v.id: store.metrics(v.id) for v in versions},
        store.aliases(index),
        store.alias_history(index),
        utcnow(),
    )


# ------------------------------------------------------------------------------- tables
def _aliases_of(data: ReportData) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, vid in sorted(data.aliases.items()):
        out.setdefault(vid, []).append(alias)
    return out


def _shape(shape: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in shape.items())


def lineage_table(data: ReportData) -> tuple[list[str], list[list]]:
    """One row per version, oldest first."""
    aliases = _aliases_of(data)
    rows = [
        [
            v.id,
            v.parent_id,
            v.note or v.config.get("step", ""),
            v.created_at,
            v.kind,
            f"{v.dataset or ''}/{v.split or ''}",
            _shape(v.shape),
            ", ".join(aliases.get(v.id, [])),
        ]
        for v in data.versions
    ]
    return ["id", "parent", "step", "created", "kind", "data/split", "shape", "aliases"], rows


def newest_values(rows: list[MetricRow]) -> dict[tuple, float]:
    """(role, name, k, beam, filtered) -> the newest value (rows come in recording order)."""
    return {
        (r.role, r.name, int(r.k), None if r.beam is None else int(r.beam), bool(r.filtered)): float(r.value)
        for r in rows
    }


def _any_k(vals: dict, role: str, name: str, beam, filtered: bool) -> float | None:
    """A metric stored once per beam (users/s, candidates: k = the largest cut-off)."""
    return next((v for (r, n, _, b, f), v in vals.items() if (r, n, b, f) == (role, name, beam, filtered)), None)


def metrics_table(data: ReportData) -> tuple[list[str], list[list]]:
    """Pivot: a row per (version, role, beam, seen), a column per metric@k, users/s, candidates."""
    per_version = {vid: newest_values(rows) for vid, rows in data.metrics.items()}
    cols = sorted(
        {(name, k) for vals in per_version.values() for (_, name, k, _, _) in vals if name in METRIC_ORDER},
        key=lambda nk: (METRIC_ORDER.index(nk[0]), nk[1]),
    )
    extra = [
        n
        for n in ("users_per_second", "candidates")
        if any(key[1] == n for vals in per_version.values() for key in vals)
    ]
    out = []
    for vid in sorted(per_version):
        vals = per_version[vid]
        groups = sorted(
            {(role, beam, filt) for (role, _, _, beam, filt) in vals},
            key=lambda g: (g[0], g[1] is None, g[1] or 0, g[2]),
        )
        for role, beam, filt in groups:
            row = [vid, role, "exhaustive" if beam is None else beam, "filtered" if filt else "kept"]
            row += [vals.get((role, name, k, beam, filt)) for name, k in cols]
            row += [_any_k(vals, role, x, beam, filt) for x in extra]
            out.append(row)
    header = ["version", "role", "beam", "seen"] + [f"{n}@{k}" for n, k in cols]
    return header + [{"users_per_second": "users/s"}.get(x, x) for x in extra], out


def alias_tables(data: ReportData) -> tuple[tuple[list[str], list[list]], tuple[list[str], list[list]]]:
    """(current aliases, the alias log oldest first)."""
    current = [[a, v] for a, v in sorted(data.aliases.items())]
    log = [[e.id, e.at, e.alias, e.action, e.from_version, e.to_version, e.reason or ""] for e in data.history]
    return (["alias", "version"], current), (["event", "at", "alias", "action", "from", "to", "reason"], log)


# ------------------------------------------------------------------------------- curve
def curve_points(data: ReportData, k: int = 10, role: str = "valid") -> dict[int, list[tuple[int, float, float]]]:
    """version -> [(beam, users/s, recall@k)] sorted by beam, from rows with seen items kept.
    Versions with no beam that has both figures are left out."""
    out = {}
    for vid, rows in data.metrics.items():
        vals = newest_values(rows)
        pts = []
        for (r, name, _, beam, filt), ups in vals.items():
            if r == role and name == "users_per_second" and beam is not None and not filt:
                recall = vals.get((role, "recall", k, beam, False))
                if recall is not None:
                    pts.append((beam, ups, recall))
        if pts:
            out[vid] = sorted(pts)
    return out


def pick_curve(data: ReportData, k: int | None, role: str | None) -> tuple[int, str]:
    """The (k, role) to plot: the asked ones, else recall@10 (or the smallest k) on 'valid' users
    (or the first role that has users/s rows)."""
    rows = [r for rs in data.metrics.values() for r in rs]
    roles = sorted({r.role for r in rows if r.name == "users_per_second"})
    role = role or ("valid" if "valid" in roles or not roles else roles[0])
    ks = sorted({int(r.k) for r in rows if r.name == "recall" and r.role == role and r.beam is not None})
    return (k or (10 if 10 in ks or not ks else ks[0])), role


def plot_curve(
    points: dict[int, list[tuple[int, float, float]]], k: int, role: str, focus: list[int] = ()
) -> bytes | None:
    """PNG bytes of recall@k vs users/s (one line per version, beams annotated); None if empty."""
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [v for v in focus if v in points]
    chosen += [v for v in sorted(points, reverse=True) if v not in chosen]
    chosen = sorted(chosen[:MAX_CURVES])
    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for vid in chosen:
        beams, ups, rec = zip(*points[vid])
        ax.plot(ups, rec, marker="o", label=f"v{vid}")
        for b, x, y in points[vid]:
            ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    xs = [p[1] for v in chosen for p in points[v]]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(f"users per second ({role} users, seen items kept)")
    ax.set_ylabel(f"recall@{k}")
    ax.set_title("efficiency vs accuracy over beam sizes (labels: beam)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------- render
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4f}"
    if isinstance(v, datetime):
        return v.isoformat(sep=" ", timespec="seconds")
    return str(v)


def _html_table(columns: list[str], rows: list[list]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_cell(v) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[str], rows: list[list]) -> str:
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}"
    "table{border-collapse:collapse;font-size:0.85em;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:left}"
    "th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}"
)


def _sections(data: ReportData):
    current, log = alias_tables(data)
    method = data.versions[0].method if data.versions else "?"
    return method, [
        ("Version lineage", lineage_table(data)),
        ("Metrics per version", metrics_table(data)),
        ("Current aliases", current),
        ("Alias history", log),
    ]


def render_html(data: ReportData, png: bytes | None, k: int, role: str) -> str:
    method, sections = _sections(data)
    parts = [
        f"<h1>grove report: index {html.escape(data.index)}</h1>",
        f"<p>{html.escape(method)}, {len(data.versions)} versions; generated {_fmt(data.generated_at)} UTC</p>",
    ]
    for title, (cols, rows) in sections[:2]:
        parts += [f"<h2>{title}</h2>", _html_table(cols, rows)]
    parts.append("<h2>Efficiency vs accuracy</h2>")
    parts.append(
        f'<img alt="recall@{k} vs users per second" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png
        else "<p><em>no version has recall and users/s at a beam yet (run grove eval --beam ...)</em></p>"
    )
    for title, (cols, rows) in sections[2:]:
        parts += [f"<h2>{title}</h2>", _html_table(cols, rows)]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>grove report '
        f"{html.escape(data.index)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def render_markdown(data: ReportData, png_name: str | None, k: int, role: str) -> str:
    method, sections = _sections(data)
    parts = [
        f"# grove report: index `{data.index}`",
        "",
        f"{method}, {len(data.versions)} versions; generated {_fmt(data.generated_at)} UTC",
        "",
    ]
    for title, (cols, rows) in sections[:2]:
        parts += [f"## {title}", "", _md_table(cols, rows), ""]
    parts += [
        "## Efficiency vs accuracy",
        "",
        f"![recall@{k} vs users per second]({png_name})"
        if png_name
        else "_no version has recall and users/s at a beam yet (run grove eval --beam ...)_",
        "",
    ]
    for title, (cols, rows) in sections[2:]:
        parts += [f"## {title}", "", _md_table(cols, rows), ""]
    return "\n".join(parts)


def write_report(
    store,
    index: str,
    out: str | pathlib.Path | None = None,
    fmt: str | None = None,
    k: int | None = None,
    role: str | None = None,
) -> pathlib.Path:
    """Write the report of ``index``; returns the page's path.

    out : the page (default ``grove-report-<index>.<fmt>`` in the working directory).
    fmt : 'html' or 'md'; default from ``out``'s suffix (``.md`` -> md), else html.
    k, role : the curve's recall@k and held-out role (default 10 / 'valid', see `pick_curve`).
    """
    if fmt is None:
        fmt = "md" if out is not None and pathlib.Path(out).suffix.lower() in (".md", ".markdown") else "html"
    if fmt not in FORMATS:
        raise GroveError(f"report format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    data = gather(store, index)
    path = pathlib.Path(out or f"grove-report-{index.replace('/', '_')}.{fmt}")
    if path.is_dir():
        raise GroveError(f"--out {path} is a directory; give a file name")
    if not path.parent.exists():
        raise GroveError(f"--out {path}: directory {path.parent} does not exist")
    k, role = pick_curve(data, k, role)
    png = plot_curve(curve_points(data, k, role), k, role, focus=sorted(set(data.aliases.values())))
    if fmt == "html":
        path.write_text(render_html(data, png, k, role), encoding="utf-8")
    else:
        png_name = None
        if png:
            png_name = f"{path.stem}-curve.png"
            (path.parent / png_name).write_bytes(png)
        path.write_text(render_markdown(data, png_name, k, role), encoding="utf-8")
    return path
