"""One self-contained HTML page for an experiment's results.

:func:`render_report` turns the experiment runner's results dict (arms × metrics with
bootstrap intervals, paired comparisons, training curves, the adaptive rounds) into a
single HTML string that needs nothing else: plots are inline SVG drawn with matplotlib's
SVG backend, sample images are ``data:`` URLs, the CSS is inline, there is no script,
and a Content-Security-Policy forbids every fetch, so the page opens the same offline,
from an e-mail attachment, or years later.

Every section has an ``id`` (``verdicts``, ``summary-table``, ``recall-by-arm``,
``gain-vs-size``, ``confusion``, ``curves``, ``samples``, ``adaptive``, ``comparisons``);
``samples`` and ``adaptive`` are left out when there is nothing to show. Every string
taken from the results (arm and class names come from users) is HTML-escaped; inside the
SVGs, matplotlib escapes text itself and math-text parsing is off, so a ``$`` in a class
name is drawn as typed.

Figures are built as :class:`matplotlib.figure.Figure` objects, not through pyplot, so
they never enter pyplot's global figure registry (nothing to leak, no GUI backend).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

MAX_SAMPLES_PER_CLASS = 8
CONFUSION_ANNOTATE_MAX_CLASSES = 10

SUMMARY_COLUMNS = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro-F1"),
    ("accuracy", "Accuracy"),
    ("mcc", "MCC"),
    ("cohen_kappa", "Cohen's κ"),
)
BINARY_COLUMNS = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("youden_index", "Youden's J"),
)

# Text stays text in the SVG (smaller, selectable, no duplicate glyph ids between plots);
# "$" in user-supplied names must not switch to math text.
_RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
_SVG_METADATA: dict[str, Any] = {"Date": None, "Creator": None, "Format": None, "Type": None}

# Section id -> its link text in the page's navigation line, in page order.
_NAV = {
    "verdicts": "Verdicts",
    "summary-table": "Summary",
    "recall-by-arm": "Recall",
    "gain-vs-size": "Gain vs size",
    "confusion": "Confusion",
    "curves": "Training",
    "samples": "Samples",
    "adaptive": "Adaptive",
    "comparisons": "Comparisons",
}
_BEST = ' class="best"'
_UNHEALTHY = ' class="unhealthy"'
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { --ink: #1d2433; --muted: #5b6478; --line: #d9dee8; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
       sans-serif; color: var(--ink); background: #f5f7fa; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 64px; background: #fff;
       min-height: 100vh; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid
     var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.meta, p.note, .caption { color: var(--muted); margin: 2px 0; }
.caption { font-size: 13px; margin-bottom: 8px; }
nav { margin: 14px 0 0; font-size: 13px; }
nav a { color: var(--accent); margin-right: 12px; text-decoration: none; }
#verdicts { margin-top: 18px; }
#verdicts h2 { border: 0; margin: 0 0 6px; }
ul.verdicts { list-style: none; margin: 0; padding: 14px 18px; background: #eef4ff;
              border-left: 5px solid var(--accent); border-radius: 4px; }
ul.verdicts li { font-size: 17px; font-weight: 600; margin: 4px 0; }
.warning { margin: 10px 0; padding: 10px 14px; background: #fff4e5; border: 1px solid #f0b35b;
           border-left: 5px solid #d9822b; border-radius: 4px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13.5px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; }
th { background: #f0f3f8; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
td { font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; }
td .ci { display: block; color: var(--muted); font-size: 12px; font-weight: 400; }
table.cmp tr.arm th { background: #fff; text-align: left; font-size: 14.5px;
                      padding-top: 14px; border-bottom: 2px solid var(--line); }
table.cmp td:first-child { padding-left: 22px; }
table.cmp thead th { white-space: normal; }
table.cmp th, table.cmp td { padding-left: 8px; padding-right: 8px; }
tr.unhealthy td:first-child::after { content: " ⚠"; color: #d9822b; }
.kind { color: var(--muted); font-size: 12px; margin-left: 6px; }
.p { color: var(--muted); font-size: 12px; }
.better { color: #17803d; font-weight: 600; }
.scroll { overflow-x: auto; }
.plot svg { max-width: 100%; height: auto; display: block; }
.plots { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: flex-start; }
.samples { display: flex; flex-wrap: wrap; gap: 16px 28px; }
.samples figure { margin: 0; }
.samples figcaption { font-weight: 600; margin-bottom: 4px; }
.grid { display: grid; grid-template-columns: repeat(4, 96px); gap: 4px; }
.grid img { width: 96px; height: 96px; object-fit: cover; border-radius: 3px;
            background: #eee; }
"""


def render_report(
    results: dict[str, Any],
    samples: dict[str, list[bytes]] | None = None,
    *,
    title: str = "tailsynth experiment",
) -> str:
    """Render ``results`` (the experiment runner's dict) as one self-contained HTML page.

    Args:
        results: the experiment results (task, protocol, verdicts, arms, adaptive).
        samples: class name → PNG bytes of curated synthetic images that entered
            training; at most 8 per class are shown. Empty or None leaves the section out.
        title: the page's title and heading.

    Returns:
        The HTML document as a string (UTF-8 when written to disk).
    """
    with matplotlib.rc_context(_RC):
        sections = [
            _verdicts_section(results),
            _summary_section(results),
            _recall_section(results),
            _gain_section(results),
            _confusion_section(results),
            _curves_section(results),
            _samples_section(results, samples or {}),
            _adaptive_section(results),
            _comparisons_section(results),
        ]
    present = [s for s in sections if s]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + _header(results, title, present)
        + "\n".join(present)
        + "\n</main>\n</body>\n</html>\n"
    )


# --- sections ---------------------------------------------------------------------------


def _header(results: Mapping[str, Any], title: str, sections: Sequence[str]) -> str:
    task = results.get("task", {})
    protocol = results.get("protocol", {})
    classes = _class_order(results)
    counts = task.get("train_class_counts", {})
    seeds = protocol.get("seeds", [])
    kind = "binary" if task.get("binary") else f"{len(classes)} classes"
    if task.get("binary") and task.get("positive_class") is not None:
        kind += f", positive class {task['positive_class']}"
    folds = protocol.get("folds")
    runs = f"{_plural(folds, 'fold')} × " if _finite(folds) and folds > 1 else ""
    runs += f"{_plural(len(seeds), 'seed')} ({', '.join(str(s) for s in seeds)})"
    protocol_line = (
        f"Evaluated on {protocol.get('evaluated_on', '?')}: {runs}, "
        f"{_count(protocol.get('images'))} images; {kind}; chance {_num(task.get('chance'))}."
    )
    counts_line = "Real training images per class: " + " · ".join(
        f"{c} {_count(counts.get(c))}" for c in classes
    )
    ids = [m.group(1) for s in sections if (m := re.match(r'<section id="([\w-]+)"', s))]
    nav = " ".join(f'<a href="#{i}">{_NAV[i]}</a>' for i in ids if i in _NAV)
    return (
        f'<header>\n<h1>{_e(title)}</h1>\n<p class="meta">{_e(protocol_line)}</p>\n'
        f'<p class="meta">{_e(counts_line)}</p>\n<nav>{nav}</nav>\n</header>\n'
    )


def _verdicts_section(results: Mapping[str, Any]) -> str:
    verdicts = results.get("verdicts") or []
    items = "".join(f"<li>{_e(v)}</li>" for v in verdicts)
    body = f'<ul class="verdicts">{items}</ul>' if items else '<p class="note">No verdicts.</p>'
    for arm, data in _arms(results).items():
        health = data.get("classifier_health") or {}
        if health and not health.get("ok", True):
            body += (
                f'<div class="warning" role="alert"><strong>{_e(arm)}: classifier not '
                f"healthy.</strong> {_e(health.get('message', ''))} (balanced accuracy "
                f"{_num(health.get('balanced_accuracy'))}, chance {_num(health.get('chance'))})"
                "</div>"
            )
    return _section("verdicts", "Verdict", body)


def _summary_section(results: Mapping[str, Any]) -> str:
    arms = _arms(results)
    columns = list(SUMMARY_COLUMNS)
    if results.get("task", {}).get("binary"):
        columns += BINARY_COLUMNS
    if any("macro_auroc" in (a.get("metrics") or {}).get("summary", {}) for a in arms.values()):
        columns.append(("macro_auroc", "Macro AUROC"))
    body = _summary_table(arms, "metrics", columns)
    caption = (
        "Pooled over folds and seeds, on real held-out images; 95 % bootstrap intervals. "
        "Bold: the best estimate in its column."
    )
    if any(a.get("test_metrics") for a in arms.values()):
        body += "<h3>On the untouched test split (every fold's model)</h3>"
        body += _summary_table(arms, "test_metrics", columns)
    return _section("summary-table", "Summary", body, caption)


def _recall_section(results: Mapping[str, Any]) -> str:
    arms = _arms(results)
    classes = _class_order(results)
    counts = results.get("task", {}).get("train_class_counts", {})
    if not arms or not classes:
        return _section("recall-by-arm", "Per-class recall", '<p class="note">No arms.</p>')
    n_arms = len(arms)
    width = min(11.5, max(8.5, 1.5 + 0.32 * len(classes) * n_arms))
    with _figure(width, 3.6) as fig:
        ax = fig.subplots()
        x = np.arange(len(classes))
        bar = 0.8 / n_arms
        for j, (arm, data) in enumerate(arms.items()):
            per_class = (data.get("metrics") or {}).get("per_class", {})
            est, err = _estimates([per_class.get(c, {}).get("recall") for c in classes])
            ax.bar(
                x + (j - (n_arms - 1) / 2) * bar,
                est,
                bar * 0.92,
                yerr=err,
                capsize=2,
                color=_arm_colour(j),
                label=_legend(arm),
                error_kw={"elinewidth": 0.8},
            )
        ax.set_xticks(x, [f"{_short(c)}\nn={_count(counts.get(c))}" for c in classes])
        if len(classes) > 8:
            _slant(ax, 30)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("Recall (real held-out images)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(ncols=min(n_arms, 6), loc="lower center", bbox_to_anchor=(0.5, 1.0))
        svg = _svg(fig, "Per-class recall by arm")
    caption = (
        "Classes from head (left) to tail (right), n = real training images; "
        "error bars: 95 % bootstrap intervals."
    )
    return _section("recall-by-arm", "Per-class recall", _plot(svg), caption)


def _gain_section(results: Mapping[str, Any]) -> str:
    arms = _arms(results)
    counts = results.get("task", {}).get("train_class_counts", {})
    classes = _class_order(results)
    compared = [
        (j, arm, cmp)
        for j, (arm, data) in enumerate(arms.items())
        if arm != "ce" and (cmp := (data.get("comparisons") or {}).get("vs_ce"))
    ]
    if not compared:
        note = '<p class="note">No arm was compared against ce.</p>'
        return _section("gain-vs-size", "Recall gain vs class size", note)
    with _figure(9.0, 4.0) as fig:
        ax = fig.subplots()
        xs = np.array([max(1, int(counts.get(c) or 1)) for c in classes], dtype=float)
        for n, (j, arm, cmp) in enumerate(compared):
            per_class = cmp.get("per_class", {})
            est, err = _estimates([per_class.get(c, {}).get("recall") for c in classes])
            jitter = 10 ** (0.025 * (n - (len(compared) - 1) / 2))
            ax.errorbar(
                xs * jitter,
                100 * est,
                yerr=100 * err,
                fmt="o",
                ms=5,
                capsize=2,
                color=_arm_colour(j),
                label=_legend(f"{arm} − ce"),
                elinewidth=0.9,
            )
        ax.axhline(0, color="#333", lw=0.8)
        ax.set_xscale("log")
        # Plain tick labels: log axes default to math text, which is switched off here.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(xs.min() / 1.8, xs.max() * 1.8)
        for x, label in _spaced_labels(classes, xs):
            ax.text(
                x,
                1.0,
                label,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#5b6478",
            )
        ax.set_xlabel("Real training images of the class (log scale)")
        ax.set_ylabel("Recall gain over ce (points)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        svg = _svg(fig, "Per-class recall gain over ce against class size")
    caption = (
        "Each point is one class; error bars: 95 % paired bootstrap intervals of the gain. "
        "Points above the line are classes the arm recalls better than plain ce."
    )
    return _section("gain-vs-size", "Recall gain vs class size", _plot(svg), caption)


def _confusion_section(results: Mapping[str, Any]) -> str:
    arms = _arms(results)
    names = list(results.get("task", {}).get("class_names", []))
    plots = []
    for arm, data in arms.items():
        matrix = (data.get("metrics") or {}).get("confusion_matrix")
        if not matrix:
            continue
        plots.append(_plot(_confusion_svg(arm, np.asarray(matrix, dtype=float), names)))
    body = f'<div class="plots">{"".join(plots)}</div>' if plots else '<p class="note">None.</p>'
    caption = (
        "Rows: true class, columns: predicted class; shade = share of the true class "
        "(row-normalised: white 0, darkest 1)"
        + (", numbers = images (averaged over seeds)." if len(names) <= 10 else ".")
    )
    return _section("confusion", "Confusion matrices", body, caption)


def _curves_section(results: Mapping[str, Any]) -> str:
    arms = _arms(results)
    runs_by_arm = {a: (d.get("training") or {}).get("runs") or [] for a, d in arms.items()}
    losses = [e.get("train_loss") for r in _flat(runs_by_arm) for e in r.get("epochs", [])]
    vals = [e.get("val_balanced_accuracy") for r in _flat(runs_by_arm) for e in r.get("epochs", [])]
    loss_lim = _limits([v for v in losses if _finite(v)])
    val_lim = _limits([v for v in vals if _finite(v)])
    plots = [
        _plot(_curves_svg(arm, j, runs, loss_lim, val_lim))
        for j, (arm, runs) in enumerate(runs_by_arm.items())
        if runs
    ]
    if not plots:
        return _section("curves", "Training", '<p class="note">No training runs recorded.</p>')
    caption = "One line per run (fold × seed); axes shared across arms."
    body = f'<div class="plots">{"".join(plots)}</div>' + _training_table(runs_by_arm)
    return _section("curves", "Training curves", body, caption)


def _samples_section(results: Mapping[str, Any], samples: Mapping[str, list[bytes]]) -> str:
    order = {c: i for i, c in enumerate(_class_order(results))}
    figures = []
    for cls in sorted(samples, key=lambda c: order.get(c, len(order))):
        images = [b for b in samples[cls] if b][:MAX_SAMPLES_PER_CLASS]
        if not images:
            continue
        tags = "".join(
            f'<img src="data:{_mime(b)};base64,{base64.b64encode(b).decode("ascii")}" '
            f'alt="{_e(cls)} synthetic image {i + 1}">'
            for i, b in enumerate(images)
        )
        shown = f"{len(images)} of {len(samples[cls])}"
        figures.append(
            f'<figure><figcaption>{_e(cls)} <span class="p">({shown})</span></figcaption>'
            f'<div class="grid">{tags}</div></figure>'
        )
    if not figures:
        return ""
    caption = (
        f"Curated synthetic images that entered training (up to {MAX_SAMPLES_PER_CLASS} per class)."
    )
    return _section(
        "samples", "Synthetic samples", f'<div class="samples">{"".join(figures)}</div>', caption
    )


def _adaptive_section(results: Mapping[str, Any]) -> str:
    rounds = (results.get("adaptive") or {}).get("rounds") or []
    if not rounds:
        return ""
    classes = _class_order(results) or sorted({c for r in rounds for c in r.get("allocation", {})})
    labels = [str(r.get("round", i + 1)) for i, r in enumerate(rounds)]
    if len({r.get("seed") for r in rounds}) > 1:  # rounds repeated per seed: say which
        labels = [f"{label}\nseed {r.get('seed')}" for label, r in zip(labels, rounds, strict=True)]
    x = np.arange(len(rounds))
    with _figure(11.0, 3.2) as fig:
        ax_alloc, ax_kept, ax_ba = fig.subplots(1, 3)
        for ax, key, name in ((ax_alloc, "allocation", "Allocated"), (ax_kept, "kept", "Kept")):
            bottom = np.zeros(len(rounds))
            for i, c in enumerate(classes):
                values = np.array([float(r.get(key, {}).get(c, 0) or 0) for r in rounds])
                ax.bar(x, values, 0.6, bottom=bottom, label=_legend(c), color=_class_colour(i))
                bottom += values
            ax.set_xticks(x, labels)
            ax.set_xlabel("Round")
            ax.set_title(f"{name} synthetic images")
        handles, names = ax_alloc.get_legend_handles_labels()
        fig.legend(handles[::-1], names[::-1], loc="outside right upper", title="Class")
        ba = [r.get("balanced_accuracy") for r in rounds]
        ax_ba.plot(x, [v if _finite(v) else np.nan for v in ba], "o-", color="#1f5fbf")
        ax_ba.set_xticks(x, labels)
        ax_ba.set_xlabel("Round")
        ax_ba.set_title("Balanced accuracy")
        ax_ba.grid(alpha=0.3)
        svg = _svg(fig, "Adaptive rounds: allocation, kept images and balanced accuracy")
    head = "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = "".join(
        f"<tr><td>{_e(label)}</td>"
        + "".join(
            f"<td>{_count(r.get('kept', {}).get(c))} / {_count(r.get('allocation', {}).get(c))}"
            f' <span class="p">acc {_num(r.get("accuracy", {}).get(c))}</span></td>'
            for c in classes
        )
        + f"<td>{_num(r.get('balanced_accuracy'))}</td></tr>"
        for label, r in zip(labels, rounds, strict=True)
    )
    table = (
        '<div class="scroll"><table><thead><tr><th>Round</th>'
        f"{head}<th>Balanced accuracy</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
    caption = (
        "Each round splits its budget by the classifier's per-class accuracy; "
        "table cells: kept / allocated images (accuracy that drove the allocation)."
    )
    return _section("adaptive", "Adaptive rounds", _plot(svg) + table, caption)


def _comparisons_section(results: Mapping[str, Any]) -> str:
    best = results.get("best_baseline")
    groups = []
    for arm, data in _arms(results).items():
        comparisons = data.get("comparisons") or {}
        rows = []
        seen = set()
        for key, label in (("vs_ce", "ce"), ("vs_best_baseline", "best baseline")):
            cmp = comparisons.get(key)
            if not cmp or cmp.get("against") in seen:
                continue
            seen.add(cmp.get("against"))
            rows.append(_comparison_row(cmp, label, best))
        if rows:  # one table body per arm, so every arm's columns line up
            groups.append(
                f'<tbody><tr class="arm"><th colspan="7">{_e(arm)}</th></tr>{"".join(rows)}</tbody>'
            )
    if not groups:
        return _section("comparisons", "Comparisons", '<p class="note">No paired comparisons.</p>')
    head = (
        "<thead><tr><th>Against</th><th>Δ balanced accuracy</th><th>p</th><th>Δ macro-F1</th>"
        "<th>p</th><th>McNemar p</th><th>Right only here / there</th></tr></thead>"
    )
    caption = (
        "Paired bootstrap differences (this arm − the other) on the same held-out images, "
        "95 % intervals and two-sided p; McNemar counts the images only one of the two got right."
    )
    table = f'<div class="scroll"><table class="cmp">{head}{"".join(groups)}</table></div>'
    return _section("comparisons", "Paired comparisons", table, caption)


# --- section parts ----------------------------------------------------------------------


def _summary_table(arms: Mapping[str, Any], key: str, columns: Sequence[tuple[str, str]]) -> str:
    summaries = {a: ((d.get(key) or {}).get("summary") or {}) for a, d in arms.items()}
    best = {}
    for metric, _ in columns:
        values = [s.get(metric, {}).get("estimate") for s in summaries.values()]
        finite = [v for v in values if _finite(v)]
        best[metric] = max(finite) if len(finite) > 1 else None
    head = "".join(f"<th>{_e(label)}</th>" for _, label in columns)
    rows = []
    for arm, summary in summaries.items():
        if not summary:
            continue
        data = arms[arm]
        healthy = (data.get("classifier_health") or {}).get("ok", True)
        kind = (data.get("spec") or {}).get("kind", "")
        cells = []
        for metric, _ in columns:
            value = summary.get(metric)
            top = value and best[metric] is not None and value.get("estimate") == best[metric]
            cells.append(f"<td{_BEST if top else ''}>{_interval_html(value)}</td>")
        rows.append(
            f"<tr{'' if healthy else _UNHEALTHY}><td>{_e(arm)}"
            f'<span class="kind">{_e(kind)}</span></td>{"".join(cells)}</tr>'
        )
    return (
        f'<div class="scroll"><table><thead><tr><th>Arm</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _confusion_svg(arm: str, matrix: np.ndarray, names: Sequence[str]) -> str:
    k = matrix.shape[0]
    labels = [_short(n) for n in names] if len(names) == k else [str(i) for i in range(k)]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 2.1 + 0.25 * k
    with _figure(size + 0.35, size) as fig:
        ax = fig.subplots()
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(k), labels)
        if k > 3:
            _slant(ax, 45)
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(arm)
        ax.spines[:].set_visible(False)
        if k <= CONFUSION_ANNOTATE_MAX_CLASSES:
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        _count(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.55 else "#1d2433",
                    )
        return _svg(fig, f"Confusion matrix of {arm}")


def _curves_svg(
    arm: str,
    index: int,
    runs: Sequence[Mapping[str, Any]],
    loss_lim: tuple[float, float] | None,
    val_lim: tuple[float, float] | None,
) -> str:
    with_val = val_lim is not None and any(
        _finite(e.get("val_balanced_accuracy")) for r in runs for e in r.get("epochs", [])
    )
    with _figure(5.4 if with_val else 2.9, 2.4) as fig:
        axes = fig.subplots(1, 2 if with_val else 1, squeeze=False)[0]
        for run in runs:
            epochs = run.get("epochs", [])
            xs = [e.get("epoch") for e in epochs]
            loss = [e.get("train_loss") if _finite(e.get("train_loss")) else np.nan for e in epochs]
            axes[0].plot(xs, loss, color=_arm_colour(index), lw=1, alpha=0.6)
            if with_val:
                val = [e.get("val_balanced_accuracy") for e in epochs]
                val = [v if _finite(v) else np.nan for v in val]
                axes[1].plot(xs, val, color=_arm_colour(index), lw=1, alpha=0.6)
        fig.suptitle(arm, fontweight="bold")
        axes[0].set_title("Train loss")
        if loss_lim:
            axes[0].set_ylim(*loss_lim)
        if with_val and val_lim:
            axes[1].set_title("Validation balanced accuracy")
            axes[1].set_ylim(*val_lim)
        for ax in axes:
            ax.set_xlabel("Epoch")
            ax.grid(alpha=0.3)
        return _svg(fig, f"Training curves of {arm}")


def _training_table(runs_by_arm: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    rows = []
    for arm, runs in runs_by_arm.items():
        if not runs:
            continue
        seconds = [float(r["seconds"]) for r in runs if _finite(r.get("seconds"))]
        speed = [float(r["images_per_second"]) for r in runs if _finite(r.get("images_per_second"))]
        synthetic: dict[str, float] = {}
        for run in runs:
            for cls, n in (run.get("synthetic_images") or {}).items():
                synthetic[cls] = synthetic.get(cls, 0) + float(n or 0) / len(runs)
        used = ", ".join(f"{c} {_count(n)}" for c, n in synthetic.items() if n) or "none"
        rows.append(
            f"<tr><td>{_e(arm)}</td><td>{len(runs)}</td>"
            f"<td>{_num(np.mean(seconds) if seconds else None, digits=1)}</td>"
            f"<td>{_count(np.mean(speed)) if speed else '—'}</td><td>{_e(used)}</td></tr>"
        )
    return (
        '<div class="scroll"><table><thead><tr><th>Arm</th><th>Runs</th><th>Seconds / run</th>'
        "<th>Images / s</th><th>Synthetic images per run (mean)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _comparison_row(cmp: Mapping[str, Any], label: str, best: str | None) -> str:
    against = str(cmp.get("against", "?"))
    role = "best baseline" if against == best else label
    name = f"{_e(against)}" + (f' <span class="kind">{_e(role)}</span>' if role != against else "")
    summary = cmp.get("summary") or {}
    mcnemar = cmp.get("mcnemar") or {}
    better = ' <span class="better">✓ better</span>' if cmp.get("better") else ""
    ba, f1 = summary.get("balanced_accuracy") or {}, summary.get("macro_f1") or {}
    return (
        f"<tr><td>{name}{better}</td>"
        f"<td>{_interval(ba, signed=True)}</td><td>{_p(ba.get('p_value'))}</td>"
        f"<td>{_interval(f1, signed=True)}</td><td>{_p(f1.get('p_value'))}</td>"
        f"<td>{_p(mcnemar.get('p_value'))}</td>"
        f"<td>{_count(mcnemar.get('a_only'))} / {_count(mcnemar.get('b_only'))}</td></tr>"
    )


# --- helpers ----------------------------------------------------------------------------


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    """A pyplot-free figure, cleared on exit so its artists are released at once."""
    fig = Figure(figsize=(width, height), layout="constrained")
    try:
        yield fig
    finally:
        fig.clear()


def _svg(fig: Figure, label: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, doctype or namespace URLs."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    text = buffer.getvalue().decode("utf-8")
    text = text[text.index("<svg") :]
    end = text.index(">")
    root = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text[:end])
    root += f' role="img" aria-label="{_e(label)}"'
    return root + text[end:].strip()


def _short(name: str, limit: int = 18) -> str:
    """A class name short enough for a tick label (the HTML around the plot has it whole)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _legend(name: str) -> str:
    """A legend label: matplotlib leaves out labels starting with "_", so pad those."""
    name = _short(name, 24)
    return f" {name}" if name.startswith("_") else name


def _slant(ax: Any, degrees: float) -> None:
    """Rotate x tick labels so their right ends sit under their ticks."""
    for label in ax.get_xticklabels():
        label.set(rotation=degrees, ha="right", rotation_mode="anchor")


def _spaced_labels(classes: Sequence[str], xs: np.ndarray) -> list[tuple[float, str]]:
    """One label per cluster of classes closer than 0.12 decades on a log axis.

    A cluster is labelled at its first class, "+n" counting the classes it hides.
    """
    out: list[tuple[float, str, int]] = []
    for x, c in sorted(zip(xs.tolist(), classes, strict=True)):
        if out and math.log10(x) - math.log10(out[-1][0]) < 0.12:
            anchor, label, hidden = out[-1]
            out[-1] = (anchor, label, hidden + 1)
        else:
            out.append((x, _short(c, 14), 0))
    return [(x, label + (f" +{hidden}" if hidden else "")) for x, label, hidden in out]


def _plot(svg: str) -> str:
    return f'<div class="plot">{svg}</div>'


def _section(section_id: str, heading: str, body: str, caption: str | None = None) -> str:
    note = f'<p class="caption">{_e(caption)}</p>' if caption else ""
    return f'<section id="{section_id}">\n<h2>{_e(heading)}</h2>\n{note}\n{body}\n</section>\n'


def _arms(results: Mapping[str, Any]) -> dict[str, Any]:
    return dict(results.get("arms") or {})


def _class_order(results: Mapping[str, Any]) -> list[str]:
    """Class names from head to tail (most real training images first; ties keep order)."""
    task = results.get("task", {})
    names = [str(c) for c in task.get("class_names", [])]
    counts = task.get("train_class_counts") or {}
    return sorted(names, key=lambda c: -(counts.get(c) or 0))


def _estimates(values: Sequence[Mapping[str, Any] | None]) -> tuple[np.ndarray, np.ndarray]:
    """Estimates and asymmetric error-bar lengths (2, n); missing values are NaN / 0."""
    est, err = [], []
    for v in values:
        e = _float((v or {}).get("estimate"))
        low, high = _float((v or {}).get("low")), _float((v or {}).get("high"))
        est.append(e)
        err.append((_gap(e, low), _gap(high, e)))
    return np.array(est), np.array(err, dtype=float).reshape(-1, 2).T


def _limits(values: Sequence[float]) -> tuple[float, float] | None:
    if not values:
        return None
    low, high = min(values), max(values)
    pad = (high - low) * 0.06 or 0.05
    return low - pad, high + pad


def _flat(runs_by_arm: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
    return [r for runs in runs_by_arm.values() for r in runs]


def _arm_colour(index: int) -> Any:
    return matplotlib.colormaps["tab10"](index % 10)


def _class_colour(index: int) -> Any:
    return matplotlib.colormaps["tab20" if index >= 10 else "Set2"](
        index % 20 if index >= 10 else index
    )


def _mime(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and math.isfinite(value)


def _float(value: Any) -> float:
    """``value`` as a float, NaN when it is missing or not a finite number."""
    return float(value) if _finite(value) else math.nan


def _gap(high: float, low: float) -> float:
    """Error-bar length high - low: 0 when either end is missing or they are inverted."""
    gap = high - low
    return gap if gap > 0 else 0.0


def _num(value: Any, *, signed: bool = False, digits: int = 3) -> str:
    if not _finite(value):
        return "—"
    value = round(float(value), digits) + 0.0  # no "-0.000"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _plural(n: Any, word: str) -> str:
    return f"{_count(n)} {word}{'' if n == 1 else 's'}"


def _count(value: Any) -> str:
    if not _finite(value):
        return "—"
    rounded = round(float(value))
    return f"{rounded:,}" if abs(value - rounded) < 0.05 else f"{value:,.1f}"


def _interval(value: Mapping[str, Any] | None, *, signed: bool = False) -> str:
    if not value or not _finite(value.get("estimate")):
        return "—"
    estimate = _num(value["estimate"], signed=signed)
    if not (_finite(value.get("low")) and _finite(value.get("high"))):
        return estimate
    return f"{estimate} [{_num(value['low'], signed=signed)}, {_num(value['high'], signed=signed)}]"


def _interval_html(value: Mapping[str, Any] | None, *, signed: bool = False) -> str:
    """:func:`_interval` for a table cell: the interval on a second, quieter line."""
    text = _interval(value, signed=signed)
    estimate, _, rest = text.partition(" ")
    return f'{estimate}<span class="ci"> {rest}</span>' if rest else estimate


def _p(value: Any) -> str:
    if not _finite(value):
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
