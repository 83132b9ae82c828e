"""The HTML report of a re-verification job: one self-contained file a reviewer opens.

```python
state = job_state("results.jsonl", manifest="pairs.csv")
write_report("report.html", state, compare_results("results.jsonl", "last_year.csv"),
             settings={"plan": "growth", "reserve": "25%", "base URL": "https://..."})
```

No network, no script: inline CSS and SVG only, so it opens offline, in a mail client's
preview, or archived for an audit years later. It holds the job's state against the manifest,
what changed since the earlier decisions, confidence histograms (this run and the earlier
one), errors by kind and latency percentiles, and the run's settings as given. Settings
whose name says secret, password, token or key are left out, and a password in a URL is
masked: a report is shared more widely than a log.

Every figure is in an element with a ``data-figure`` attribute (the histograms' bars have
``data-bin`` and ``data-count``), so that a test or a script can read the figures back.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from facematch_async._version import __version__
from facematch_async.batch._compare import Comparison, label
from facematch_async.batch._records import FORMAT_VERSION
from facematch_async.batch._state import JobState
from facematch_async.batch._summary import ConfidenceHistogram

__all__ = ["write_report"]

_SECRET_NAME = re.compile(r"(?i)secret|password|passwd|token|api[_ -]?key|credential")
_COLOURS = {"match": "#1f6fb4", "no_match": "#e07b10"}  # blue and orange: told apart by all
_PERCENTILES = (0.5, 0.9, 0.95, 0.99)

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1d2430; margin: 0; background: #f5f6f8; }
main { max-width: 980px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #d9dde3; padding-bottom: 4px; }
.meta { color: #5b6472; font-size: 13px; margin: 0 0 18px; }
.banner { border-radius: 8px; padding: 12px 16px; margin: 14px 0 6px; font-weight: 600; }
.ok { background: #e3f4e8; color: #17612f; border: 1px solid #a7d8b5; }
.warn { background: #fff4de; color: #7a4b00; border: 1px solid #f0cf8a; }
.bad { background: #fde7e7; color: #8a1c1c; border: 1px solid #efb0b0; }
.advice { margin: 4px 0 0 0; padding-left: 18px; color: #3b4350; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr));
  gap: 10px; margin: 14px 0; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 10px 12px; }
.card .n { font-size: 22px; font-weight: 650; }
.card .k { font-size: 12px; color: #5b6472; text-transform: uppercase; letter-spacing: .03em; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #dde1e6; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eceef1;
  vertical-align: top; }
th { background: #eef0f3; font-size: 13px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.change td { background: #fffaf0; }
tr.flip td { background: #fdecec; font-weight: 600; }
table.settings th { width: 220px; }
.ids { color: #5b6472; font-size: 12px; word-break: break-all; }
.charts { display: grid; grid-template-columns: 1fr; gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #dde1e6; border-radius: 8px;
  padding: 10px 12px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
.legend i { display: inline-block; width: 11px; height: 11px; margin-right: 5px;
  vertical-align: -1px; border-radius: 2px; }
footer { margin-top: 36px; color: #7a8290; font-size: 12px; }
.empty { color: #7a8290; font-style: italic; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _mask_url(text: str) -> str:
    """A password in a URL's user info, or a ``password=`` parameter, as ``***``."""
    text = re.sub(r"(?i)((?:password|secret|token)=)[^&\s]*", r"\1***", text)
    return re.sub(
        r"://([^/@\s:]*)(:[^/@\s]*)?@",
        lambda m: f"://{m.group(1)}:***@" if m.group(2) else "://***@",
        text,
    )


def safe_settings(settings: Mapping[str, object]) -> dict[str, str]:
    """``settings`` fit for a report: secret-named ones left out, URL passwords masked."""
    return {
        str(name): _mask_url(str(value))
        for name, value in settings.items()
        if value is not None and not _SECRET_NAME.search(str(name))
    }


def _figure(name: str, value: int | None, caption: str) -> str:
    return (
        f'<div class="card"><div class="n" data-figure="{_e(name)}">{_n(value)}</div>'
        f'<div class="k">{_e(caption)}</div></div>'
    )


def _banner(state: JobState) -> str:
    code = state.exit_code
    if code == 69:
        kind, text = "bad", f"Incomplete: {state.to_run:,} pair(s) still to run"
    elif code == 1:
        kind, text = "warn", f"Final errors: {state.final_errors:,} pair(s) need their input fixed"
    else:
        kind, text = "ok", "Complete: every pair has a decision"
    advice = "".join(f"<li>{_e(line)}</li>" for line in state.advice())
    return (
        f'<div class="banner {kind}" data-figure="exit_code" data-value="{code}">'
        f"{_e(text)} (exit code {code})</div>"
        + (f'<ul class="advice">{advice}</ul>' if advice else "")
    )


def _cards(state: JobState) -> str:
    statuses = state.statuses
    cards = [
        _figure("pairs", state.pairs, "pairs with a line"),
        _figure("decided", state.decided, "decided"),
        _figure("match", statuses.get("match", 0), "match"),
        _figure("no_match", statuses.get("no_match", 0), "no match"),
        _figure("no_face", statuses.get("no_face", 0), "no face found"),
        _figure("final_errors", state.final_errors, "final errors"),
        _figure("retryable", state.retryable, "transient errors"),
        _figure("missing", state.missing, "without a line"),
    ]
    if state.manifest_pairs is not None:
        cards.insert(0, _figure("manifest_pairs", state.manifest_pairs, "pairs in the manifest"))
    if state.not_in_manifest:
        cards.append(_figure("not_in_manifest", state.not_in_manifest, "not in the manifest"))
    if state.duplicated:
        cards.append(_figure("duplicated", state.duplicated, "in two files"))
    if state.unreadable:
        cards.append(_figure("unreadable", state.unreadable, "lines not results"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _table(head: list[str], rows: list[str], numeric: set[int]) -> str:
    cells = "".join(
        f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(head)
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _settings(settings: Mapping[str, object] | None, sources: Mapping[str, object]) -> str:
    shown = {**safe_settings(sources), **safe_settings(settings or {})}
    if not shown:
        return ""
    rows = [
        f'<tr><th>{_e(name)}</th><td data-setting="{_e(name)}">{_e(value)}</td></tr>'
        for name, value in shown.items()
    ]
    return "<h2>Run</h2>" + f'<table class="settings"><tbody>{"".join(rows)}</tbody></table>'


def _transitions(comparison: Comparison) -> str:
    total = sum(comparison.transitions.values()) or 1
    rows = []
    for before, after, count in comparison.rows():
        examples = ", ".join(comparison.examples.get((before, after), []))
        rows.append(
            f'<tr class="{_row_class(before, after)}" '
            f'data-before="{_e(before)}" data-after="{_e(after)}">'
            f"<td>{_e(label(before, after))}</td>"
            f'<td class="num" data-figure="transition">{count:,}</td>'
            f'<td class="num">{100 * count / total:.1f}%</td>'
            f'<td class="ids">{_e(examples)}</td></tr>'
        )
    kind = "an earlier results file" if comparison.previous_kind == "results" else "an export"
    intro = (
        f"<p>Against <b>{_e(comparison.previous)}</b> ({kind}, "
        f'<span data-figure="previous_pairs">{comparison.previous_pairs:,}</span> pairs): '
        f'<b data-figure="changed">{comparison.changed:,}</b> changed, '
        f'<span data-figure="unchanged">{comparison.unchanged:,}</span> unchanged.'
    )
    if comparison.previous_unreadable:
        intro += (
            f' <span data-figure="previous_unreadable">{comparison.previous_unreadable:,}'
            "</span> row(s) without a pair_id or a readable decision were skipped."
        )
    table = _table(["transition", "pairs", "share", "first pairs"], rows, {1, 2})
    return "<h2>What changed</h2>" + intro + "</p>" + table


def _row_class(before: str, after: str) -> str:
    """Flipped decisions stand out; other changes are shaded."""
    decided = ("match", "no_match", "no_face")
    if before == after:
        return "same"
    return "flip" if before in decided and after in decided else "change"


def _histogram(histogram: ConfidenceHistogram, title: str, name: str) -> str:
    width, height, left, bottom, top = 640, 220, 44, 28, 12
    plot_w, plot_h = width - left - 12, height - bottom - top
    statuses = [status for status in ("match", "no_match") if status in histogram.counts]
    totals = [
        sum(histogram.counts[status][i] for status in statuses) for i in range(histogram.bins)
    ]
    peak = max(totals, default=0)
    bar_w = plot_w / histogram.bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{_e(title)}" data-histogram="{_e(name)}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#8a929e"/>',
    ]
    for i in range(histogram.bins):
        y = float(top + plot_h)
        for status in statuses:
            count = histogram.counts[status][i]
            if not count:
                continue
            h = plot_h * count / peak
            y -= h
            low = 100 * i / histogram.bins
            high = 100 * (i + 1) / histogram.bins
            parts.append(
                f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{h:.1f}" fill="{_COLOURS[status]}" data-bin="{i}" '
                f'data-status="{status}" data-count="{count}">'
                f"<title>{status} {low:g}-{high:g}: {count:,}</title></rect>"
            )
    for tick in range(0, 101, 10):
        x = left + plot_w * tick / 100
        parts.append(
            f'<text x="{x:.1f}" y="{height - 8}" font-size="11" text-anchor="middle" '
            f'fill="#5b6472">{tick}</text>'
        )
    parts.append(
        f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end" '
        f'fill="#5b6472">{peak:,}</text>'
        f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end" '
        'fill="#5b6472">0</text></svg>'
    )
    legend = "".join(
        f'<span><i style="background:{_COLOURS[status]}"></i>{status}: '
        f"{sum(histogram.counts[status]):,}</span>"
        for status in statuses
    )
    if histogram.unknown:
        legend += f"<span>without a confidence: {histogram.unknown:,}</span>"
    body = "".join(parts) if peak else '<p class="empty">no confidences</p>'
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>{body}"
        f'<div class="legend">{legend}</div></figure>'
    )


def _errors(state: JobState) -> str:
    if not state.error_kinds and not state.codes:
        return '<h2>Errors by kind</h2><p class="empty">none</p>'
    rows = [
        f"<tr><td>{_e(code)}</td><td>{'transient: --resume' if kind == 'retryable' else 'final: fix, then --retry-failed'}</td>"  # noqa: E501
        f'<td class="num" data-figure="error_kind" data-code="{_e(code)}">{count:,}</td></tr>'
        for (kind, code), count in sorted(state.error_kinds.items(), key=lambda kv: -kv[1])
    ]
    rows += [
        f"<tr><td>{_e(code)}</td><td>no face found (a decision)</td>"
        f'<td class="num" data-figure="no_face_kind" data-code="{_e(code)}">{count:,}</td></tr>'
        for (status, code), count in sorted(state.codes.items(), key=lambda kv: -kv[1])
        if status == "no_face"
    ]
    return "<h2>Errors by kind</h2>" + _table(["kind", "what to do", "pairs"], rows, {2})


def _latency(state: JobState) -> str:
    histogram = state.latency
    if not histogram.count:
        return '<h2>Latency</h2><p class="empty">no requests</p>'
    cells = []
    for q in _PERCENTILES:
        value = (histogram.quantile(q) or 0.0) * 1000
        name = f"p{round(q * 100)}"
        cells.append(f'<td class="num" data-figure="latency_{name}">{value:,.0f} ms</td>')
    cells.append(f'<td class="num" data-figure="latency_max">{histogram.max * 1000:,.0f} ms</td>')
    head = [f"p{round(q * 100)}" for q in _PERCENTILES] + ["max"]
    table = _table(head, [f"<tr>{''.join(cells)}</tr>"], set(range(len(head))))
    return (
        "<h2>Latency</h2>"
        f'<p>Per pair, waits for the rate limit left out, over <span data-figure="latency_count">'
        f"{histogram.count:,}</span> pairs that sent requests "
        f'(<span data-figure="attempts">{state.attempts:,}</span> face-match requests).</p>' + table
    )


def render_report(
    state: JobState,
    comparison: Comparison | None = None,
    *,
    settings: Mapping[str, object] | None = None,
    sources: Mapping[str, object] | None = None,
    title: str = "Face match re-verification",
) -> str:
    """The report's HTML (see :func:`write_report`)."""
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    charts = [_histogram(state.confidence, "Confidence, this run", "current")]
    if comparison is not None:
        charts.append(
            _histogram(comparison.previous_confidence, "Confidence, earlier decisions", "previous")
        )
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Generated {_e(generated)} by facematch-async {_e(__version__)}</p>',
        _banner(state),
        _cards(state),
        _settings(settings, sources or {}),
        _transitions(comparison) if comparison is not None else "",
        "<h2>Confidence</h2>",
        '<div class="charts">' + "".join(charts) + "</div>",
        _errors(state),
        _latency(state),
        f"<footer>Results format version {FORMAT_VERSION}. Counts are pairs: each pair's "
        "last line, once.</footer>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    path: str | os.PathLike[str],
    state: JobState,
    comparison: Comparison | None = None,
    *,
    settings: Mapping[str, object] | None = None,
    sources: Mapping[str, object] | None = None,
    title: str = "Face match re-verification",
) -> Path:
    """Write the job's HTML report to ``path`` (atomically) and return the path.

    Args:
        path: Where to write it (``report.html``).
        state: The job's state (:func:`job_state`).
        comparison: What changed since earlier decisions (:func:`compare_results`).
        settings: The run's settings to show (plan, reserve, shards, engine or base URL):
            names that say secret, password, token or key are left out, URL passwords
            masked.
        sources: The files it was made from (results, manifest, earlier decisions).
        title: The report's title.

    Raises:
        OSError: the file cannot be written.
    """
    target = Path(path)
    text = render_report(state, comparison, settings=settings, sources=sources, title=title)
    temporary = target.with_name(target.name + ".writing")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target
