"""A self-contained HTML report of a sweep, written from its run folder (SPEC §8.8).

``write_report(run_dir)`` reads only the run folder's files (never Ray state), so it works on a finished
sweep, a crashed one or one that is still running, and writes ``RUN/report.html`` with:

1. a header: task, primary metric, mode, number of trials, best trial and value, elapsed time;
2. metric curves: the primary metric per epoch, one line per trial; trials stopped early are dashed
   and end in an "x", so a reader sees which ones a policy cut short and where;
3. parallel coordinates: one axis per hyperparameter plus the best metric (also the colour scale),
   to see which regions of the search space did well;
4. a 2-D scatter of two hyperparameters, coloured by the metric (its range fitted to the values), whose axes the
   reader picks from menus, and a rotatable 3-D scatter of three (§8.8);
5. the leaderboard as a table, best first, stopped trials marked, each trial's log linked;
6. every hyperparameter of every trial (sampled ones marked), and what the best model predicts on validation
   images (``scheduler.predictions``), once the sweep has ended.

While the sweep runs, ``scheduler.live`` rewrites the page (``live=True``): it says so and reloads itself.

Plotly draws the figures: its parallel-coordinates plot lets the reader drag axes and brush ranges,
and plotly.js is inlined once into the page, so the report is one file that opens offline.
"""

from __future__ import annotations

import csv
import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from scheduler.leaderboard import leaderboard_rows
from scheduler.runfolder import SWEEP_FILE, TrialRecord, duration, finite, read_json, read_trials, write_atomic

_HEIGHT = 440
_MISSING = "—"


@dataclass
class _Trial(TrialRecord):
    best: float | None = None  # best primary metric over its evaluations

    @property
    def stopped(self) -> bool:
        return self.status.startswith("stopped")


def write_report(run_dir: str | Path, live: bool = False, refresh_s: float = 0.0) -> Path:
    """Write ``run_dir/report.html`` (self-contained, works offline) and return its path.

    ``live``: the sweep is running (``scheduler.live``, which rewrites the page every ``refresh_s`` seconds): the
    page says so and reloads itself every :data:`REFRESH_S` seconds, or ``refresh_s`` when longer. The file is
    replaced atomically: a browser reloading it never reads half a page."""
    run = Path(run_dir)
    summary = read_json(run / "summary.json", {})
    sweep = read_json(run / SWEEP_FILE, {})  # the running sweep (scheduler.live): mode, start, heartbeat
    primary = summary.get("primary_metric") or sweep.get("primary_metric") or _resolved(run).get("primary_metric") \
        or "accuracy"
    default_model = str((_resolved(run).get("training_parameters") or {}).get("model_name") or "")
    trials = _load_trials(run, primary)

    figures = [("metric-curves", "Metric curves", _curves(trials, primary, default_model)),
               ("parallel-coordinates", "Parallel coordinates", _parcoords(trials, primary)),
               ("scatter", "Hyperparameters, two at a time", _scatter(trials, primary)),
               ("scatter-3d", "Hyperparameters, three at a time", _scatter3d(trials, primary))]
    parts, plotlyjs = [], True
    for div_id, title, fig in figures:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):  # nothing to plot: a note instead
            parts.append(f'<p class="note" id="{div_id}">{html.escape(fig)}</p>')
            continue
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotlyjs, div_id=div_id,
                                 default_height=f"{_HEIGHT}px", config={"displaylogo": False}))
        plotlyjs = False
    parts.append("<h2>Leaderboard</h2>")
    logs = {p.parent.name for p in run.glob("trials/*/log.txt")}
    parts.append(_table(_leaderboard(run, trials, primary, default_model), logs))
    parts.append("<h2>Trials: every hyperparameter</h2>")
    parts.append(_details(trials, logs))
    parts.append("<h2>Data</h2>")
    parts.append(_data(run))
    if not live:
        parts.append("<h2>What the best model predicts</h2>")
        parts.append(_predictions(run))
        parts.append("<h2>What to deploy</h2>")
        parts.append(_deployment(run))

    refresh = max(REFRESH_S, round(refresh_s))
    banner = (f'<p class="live" id="live">Live: the sweep is running. This page reloads itself every {refresh} s '
              f'(written {time.strftime("%H:%M:%S")}).</p>') if live else ""
    page = _PAGE.format(title=html.escape(f"visionsweep report: {run.resolve().name}"),
                        refresh=f'<meta http-equiv="refresh" content="{refresh}">' if live else "",
                        live=banner, header=_header(run, summary, sweep, trials, primary, live), body="\n".join(parts))
    out = run / "report.html"
    write_atomic(out, page)
    return out


REFRESH_S = 10  # the live page's reload period, at least (the rewrite period when that is longer)


def _predictions(run: Path) -> str:
    """The best model on validation images (``scheduler.predictions``, written when the sweep ends)."""
    try:
        from scheduler.predictions import predictions_section
    except ImportError:
        return '<p class="note" id="predictions">No predictions: this installation cannot draw them.</p>'
    try:
        return predictions_section(run)
    except Exception as e:  # the report is a view: a broken part is a note, not a missing report
        return f'<p class="note" id="predictions">Predictions could not be shown: {html.escape(str(e))}</p>'


def _data(run: Path) -> str:
    """What the data check found before the trials (``scheduler.data_check``)."""
    from scheduler.data_check.section import section, thumbnail

    try:
        return section(run, thumbnail)
    except Exception as e:  # the report is a view: a broken part is a note, not a missing report
        return f'<p class="note" id="data">The data check could not be shown: {html.escape(str(e))}</p>'


def _deployment(run: Path) -> str:
    """The best trials as PyTorch, ONNX and INT8 models (``scheduler.deployment``, measured when the sweep ends)."""
    from scheduler.deployment import section

    try:
        return section(run)
    except Exception as e:  # the report is a view: a broken part is a note, not a missing report
        return f'<p class="note" id="deployment">Deployment figures could not be shown: {html.escape(str(e))}</p>'


# ----------------------------------------------------------------------------------------------- reading

def _resolved(run: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((run / "job.resolved.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _load_trials(run: Path, primary: str) -> list[_Trial]:
    trials = []
    for rec in read_trials(run).values():
        if rec.status == "pending" and rec.metrics:
            rec.status = "running"
        scores = [m[primary] for m in rec.metrics if finite(m.get(primary))]
        trials.append(_Trial(**vars(rec), best=max(scores) if scores else None))
    # trial index = start order (directory name where no start time was recorded)
    trials.sort(key=lambda t: (not finite(t.started), t.started or 0.0, t.trial_id))
    return trials


# ----------------------------------------------------------------------------------------------- header

def _elapsed(summary: dict, sweep: dict, trials: list[_Trial], live: bool, now: float) -> float | None:
    """The sweep's elapsed time: ``summary.json``'s once it has ended; before, from ``sweep.json``'s start to now
    (to its last heartbeat when this is not the live view: a controller that died stopped the clock there).
    Without ``sweep.json`` (a run folder of an older version), from the first trial's start to now while any
    trial runs, else to the last trial's end."""
    if finite(summary.get("elapsed_s")):
        return summary["elapsed_s"]
    started, updated = sweep.get("started"), sweep.get("updated")
    if finite(started):
        end = updated if finite(updated) and not live else now
        return max(0.0, end - started)
    starts = [t.started for t in trials if finite(t.started)]
    if not starts:
        return None
    ends = [t.ended for t in trials if finite(t.ended)]
    end = now if live or not ends or any(not t.finished for t in trials) else max(ends)
    return max(0.0, end - min(starts))


def _header(run: Path, summary: dict, sweep: dict, trials: list[_Trial], primary: str, live: bool = False) -> str:
    best_id, best = summary.get("best_trial"), summary.get("best_metric")
    if best_id is None:
        scored = [t for t in trials if t.best is not None]
        if scored:
            top = max(scored, key=lambda t: t.best)
            best_id, best = top.trial_id, top.best
    elapsed = _elapsed(summary, sweep, trials, live, time.time())
    stopped = sum(t.stopped for t in trials)
    items = [("Task", summary.get("task") or sweep.get("task") or _resolved(run).get("task") or "?"),
             ("Primary metric", primary),
             ("Mode", summary.get("mode") or sweep.get("mode") or _resolved(run).get("mode") or "?"),
             ("Trials", f"{len(trials)}" + (f" ({stopped} stopped early)" if stopped else "")),
             ("Best trial", f"{best_id} ({primary} {best:.4f})" if best_id and finite(best) else "none yet"),
             ("Elapsed", duration(elapsed) + (" (still running)" if live else "" if summary else
                                                " (no summary.json: still running, or its controller died)"))]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f'<table class="summary">{rows}</table>'


# ----------------------------------------------------------------------------------------------- figures

def _layout(fig: go.Figure, title: str, **kw: Any) -> go.Figure:
    fig.update_layout(**{"template": "plotly_white", "title": title, "height": _HEIGHT,
                         "margin": dict(l=60, r=30, t=60, b=50), **kw})
    return fig


CURVES_SHOWN = 25  # trials drawn one curve each (the best ones); the others as one band: median and range


def _points(t: _Trial, primary: str) -> list[tuple[Any, float]]:
    return [(m.get("epoch", i + 1), m[primary]) for i, m in enumerate(t.metrics) if finite(m.get(primary))]


def _curves(trials: list[_Trial], primary: str, default_model: str) -> go.Figure | str:
    """One curve per trial up to :data:`CURVES_SHOWN` trials; beyond, the best ones (the leaderboard's top)
    each with its curve and the rest summarised per epoch by their median and range, so that a sweep of a
    thousand trials stays a page a browser draws at once and a reader can read."""
    fig = go.Figure()
    points = {t.trial_id: pts for t in trials if (pts := _points(t, primary))}
    with_points = [t for t in trials if t.trial_id in points]
    shown = with_points
    if len(with_points) > CURVES_SHOWN:
        ranked = sorted(with_points, key=lambda t: -t.best if t.best is not None else math.inf)
        shown = ranked[:CURVES_SHOWN]
        _band(fig, [points[t.trial_id] for t in ranked[CURVES_SHOWN:]], primary)
    for t in shown:
        pts = points[t.trial_id]
        model = t.params.get("model_name", default_model)
        name = " ".join(str(s) for s in (t.trial_id, model, "(stopped)" if t.stopped else
                                         "(error)" if t.status == "error" else "") if s)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, legendgroup=t.trial_id, mode="lines+markers",
            line=dict(dash="dash" if t.stopped else "dot" if t.status == "error" else "solid"),
            marker=dict(symbol=["circle"] * (len(pts) - 1) + ["x" if t.stopped else "circle"],
                        size=[6] * (len(pts) - 1) + [12 if t.stopped else 6]),
            hovertemplate=f"{html.escape(t.trial_id)}<br>epoch %{{x}}<br>{html.escape(primary)} %{{y:.4f}}"
                          f"<br>{html.escape(t.status)}<extra></extra>"))
    if not fig.data:
        return "No evaluation has been recorded yet."
    top = f"the best {len(shown)} of {len(with_points)} trials; the others as a band, " \
        if len(shown) < len(with_points) else ""
    last = max((p[0] for pts in points.values() for p in pts if finite(p[0])), default=1)
    return _layout(fig, f"{primary} per epoch ({top}dashed, ending in x: stopped early)",
                   xaxis=epoch_axis(last), yaxis_title=primary, legend_title="trial")


EPOCH_TICKS = 10  # at most this many ticks on an epoch axis (about)


def epoch_axis(last: float) -> dict[str, Any]:
    """An x axis of epochs, which are whole numbers: ticks every 1, 2, 5, 10, 20 ... epochs (at most about
    :data:`EPOCH_TICKS`), never at 1.2, 1.4 ... as plotly's own choice does for a sweep of a few epochs."""
    step = 1
    while last / step > EPOCH_TICKS:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1, 2, 5, 10, 20, 50 ...
    return dict(title="epoch", tickmode="linear", tick0=0, dtick=step, tickformat="d")


def _band(fig: go.Figure, rest: list[list[tuple[Any, float]]], primary: str) -> None:
    """The trials not drawn one by one (their points): per epoch, the range as a shaded band and the median."""
    by_epoch: dict[Any, list[float]] = {}
    for pts in rest:
        for epoch, value in pts:
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    lo, hi = [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs]
    mid = [sorted(by_epoch[e])[len(by_epoch[e]) // 2] for e in epochs]
    name = f"the other {len(rest)} trials"
    fig.add_trace(go.Scatter(x=epochs + epochs[::-1], y=hi + lo[::-1], fill="toself", mode="lines",
                             line=dict(width=0), fillcolor="rgba(128,128,128,0.2)", name=f"{name}: range",
                             legendgroup="rest", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=epochs, y=mid, mode="lines", line=dict(color="grey", width=2),
                             name=f"{name}: median", legendgroup="rest",
                             customdata=[len(by_epoch[e]) for e in epochs],
                             hovertemplate=f"median of %{{customdata}} trials<br>epoch %{{x}}<br>"
                                           f"{html.escape(primary)} %{{y:.4f}}<extra></extra>"))


def _axis(label: str, values: list[Any]) -> dict[str, Any]:
    """A parcoords dimension: numeric values as they are, anything else as integer codes with tick labels."""
    present = [v for v in values if v is not None]
    if present and all(finite(v) for v in present):
        lo, hi = min(present), max(present)
        pad = (hi - lo) * 0.1 or abs(lo) * 0.1 or 1.0
        if len(present) == len(values):
            return dict(label=label, values=values, range=[lo, hi] if hi > lo else [lo - pad, hi + pad])
        # some trials lack this parameter: put them on a "—" tick below the smallest value
        ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
        return dict(label=label, values=[lo - pad if v is None else v for v in values], range=[lo - pad, hi],
                    tickvals=[lo - pad] + ticks, ticktext=[_MISSING] + [f"{v:.3g}" for v in ticks])
    labels = [_MISSING if v is None else v if isinstance(v, str) else json.dumps(v, default=str) for v in values]
    cats = sorted(set(labels), key=lambda s: (s != _MISSING, s))  # "not set" first, at the bottom
    return dict(label=label, values=[cats.index(s) for s in labels], range=[0, max(len(cats) - 1, 1)],
                tickvals=list(range(len(cats))), ticktext=cats)


def _param_names(trials: list[_Trial]) -> list[str]:
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    return names


def _parcoords(trials: list[_Trial], primary: str) -> go.Figure | str:
    names = _param_names(trials)
    scored = [t for t in trials if t.best is not None]
    if not names:
        return "No hyperparameter was sampled: every trial used the defaults."
    if not scored:
        return "No trial has a result yet."
    best = [t.best for t in scored]
    dims = [_axis(n, [t.params.get(n) for t in scored]) for n in names] + [_axis(primary, best)]
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=best, colorscale="Viridis", showscale=True,
                                                               colorbar=dict(title=primary), **_fitted(best))))
    left = len(trials) - len(scored)
    note = f" ({left} trial(s) without a result not shown)" if left else ""
    return _layout(fig, f"Hyperparameters vs best {primary}: drag axes, brush ranges{note}",
                   margin=dict(l=80, r=80, t=90, b=40))


def _fitted(values: list[float]) -> dict[str, float]:
    """A colour scale's range fitted to the values it shows: accuracies of 0.13 to 0.15 use the whole scale, not a
    sliver of one that runs from -0.2 to 0.6."""
    lo, hi = min(values), max(values)
    pad = 0.0 if hi > lo else max(abs(lo) * 0.01, 1e-3)
    return dict(cmin=lo - pad, cmax=hi + pad)


def _ranked_params(trials: list[_Trial], scored: list[_Trial]) -> tuple[list[str], list[str]]:
    """Hyperparameters that vary, the most distinct values first (stable), and which of them are numeric."""
    names = [n for n in _param_names(scored)
             if len({json.dumps(t.params.get(n), default=str) for t in scored}) > 1 or len(scored) == 1]
    names.sort(key=lambda n: -len({json.dumps(t.params.get(n), default=str) for t in scored}))
    numeric = [n for n in names if all(finite(t.params[n]) for t in scored if n in t.params)]
    return names, numeric


def _values(trials: list[_Trial], pts: list[_Trial], name: str, primary: str) -> list[Any]:
    """One axis's values: a hyperparameter (a label for a non-number), the trial index or the best metric."""
    if name == "trial index":
        return [trials.index(t) + 1 for t in pts]
    if name == f"best {primary}":
        return [t.best for t in pts]
    out = []
    for t in pts:
        v = t.params.get(name)
        out.append(v if v is None or finite(v) else v if isinstance(v, str) else json.dumps(v, default=str))
    return out


def _log_axis(vals: list[Any]) -> bool:
    nums = [v for v in vals if finite(v)]
    return bool(nums) and len(nums) == len(vals) and all(v > 0 for v in nums) and max(nums) / min(nums) >= 100


def _scatter(trials: list[_Trial], primary: str) -> go.Figure | str:
    """Two hyperparameters against the primary metric (its colour), §8.8. Menus above the plot pick each axis among
    every hyperparameter that varies, the trial index and the best metric; the two with the most distinct values
    (numbers before labels) are shown first."""
    scored = [t for t in trials if t.best is not None]
    if not scored:
        return "No trial has a result yet."
    names, numeric = _ranked_params(trials, scored)
    ordered = numeric + [n for n in names if n not in numeric]
    choices = ordered + ["trial index", f"best {primary}"]
    if len(ordered) >= 2:
        x, y = ordered[:2]
    elif ordered:
        x, y = "trial index", ordered[0]
    else:
        x, y = "trial index", f"best {primary}"
    pts, colour = scored, [t.best for t in scored]
    xs, ys = _values(trials, pts, x, primary), _values(trials, pts, y, primary)
    marker = dict(size=12, colorscale="Viridis", showscale=True, colorbar=dict(title=primary), color=colour,
                  **_fitted(colour))
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers", text=[t.trial_id for t in pts], marker=marker,
                               hovertemplate=f"%{{text}}<br>x %{{x}}<br>y %{{y}}"
                                             f"<br>{html.escape(primary)} %{{marker.color:.4f}}<extra></extra>"))
    for axis, name, vals in (("xaxis", x, xs), ("yaxis", y, ys)):
        fig.update_layout({axis: dict(title=name, type="log" if _log_axis(vals) else "-")})
    menus = []
    for i, (axis, current) in enumerate((("x", x), ("y", y))):
        buttons = []
        for name in choices:
            vals = _values(trials, pts, name, primary)
            buttons.append(dict(label=name, method="update",
                                args=[{axis: [vals]}, {f"{axis}axis.title.text": name,
                                                       f"{axis}axis.type": "log" if _log_axis(vals) else "-"}]))
        menus.append(dict(buttons=buttons, direction="down", active=choices.index(current), x=0.0 + 0.3 * i,
                          xanchor="left", y=1.18, yanchor="top", showactive=True, name=f"{axis} axis"))
    fig.update_layout(updatemenus=menus, annotations=[
        dict(text="x:", x=-0.03, xref="paper", y=1.16, yref="paper", showarrow=False, xanchor="right"),
        dict(text="y:", x=0.27, xref="paper", y=1.16, yref="paper", showarrow=False, xanchor="right")])
    return _layout(fig, f"pick the axes; colour = best {primary}", margin=dict(l=60, r=30, t=110, b=50))


def _scatter3d(trials: list[_Trial], primary: str) -> go.Figure | str:
    """Three hyperparameters against the primary metric (its colour), rotatable (§8.8): the three with the most
    distinct values; with fewer than three varying, the best metric is the last axis."""
    scored = [t for t in trials if t.best is not None]
    if not scored:
        return "No trial has a result yet."
    names, numeric = _ranked_params(trials, scored)
    ordered = numeric + [n for n in names if n not in numeric]
    if not ordered:
        return "No hyperparameter varies between the trials: nothing to plot in three dimensions."
    if len(ordered) >= 3:
        axes = ordered[:3]
    elif len(ordered) == 2:
        axes = [*ordered, f"best {primary}"]
    else:
        axes = [ordered[0], "trial index", f"best {primary}"]
    colour = [t.best for t in scored]
    vals = [_values(trials, scored, a, primary) for a in axes]
    fig = go.Figure(go.Scatter3d(
        x=vals[0], y=vals[1], z=vals[2], mode="markers", text=[t.trial_id for t in scored],
        marker=dict(size=6, color=colour, colorscale="Viridis", showscale=True, colorbar=dict(title=primary),
                    **_fitted(colour)),
        hovertemplate=f"%{{text}}<br>{html.escape(axes[0])} %{{x}}<br>{html.escape(axes[1])} %{{y}}<br>"
                      f"{html.escape(axes[2])} %{{z}}<extra></extra>"))
    fig.update_layout(scene=dict(
        **{f"{k}axis": dict(title=a, type="log" if _log_axis(v) else "-") for k, a, v in zip("xyz", axes, vals)}))
    return _layout(fig, f"{', '.join(axes)}; colour = best {primary}; drag to rotate",
                   height=560, margin=dict(l=10, r=10, t=60, b=10))


# ----------------------------------------------------------------------------------------------- leaderboard

def _leaderboard(run: Path, trials: list[_Trial], primary: str, default_model: str) -> list[dict[str, Any]]:
    try:
        with open(run / "leaderboard.csv", newline="") as f:
            rows: list[dict[str, Any]] = list(csv.DictReader(f))
    except OSError:
        rows = []
    if rows:
        rows.sort(key=lambda r: int(r["rank"]) if str(r.get("rank", "")).isdigit() else math.inf)
        return rows
    return leaderboard_rows({t.trial_id: t for t in trials}, primary, default_model)


def _log_link(logs: set[str], trial_id: str) -> str:
    """A link to the trial's ``log.txt`` (relative: it works wherever the run folder is opened); ``logs``: the
    trials that have one (listed once per page)."""
    if trial_id not in logs:
        return ""
    href = html.escape(f"trials/{trial_id}/log.txt", quote=True)
    return f'<a href="{href}" class="log">log</a>'


def _table(rows: list[dict[str, Any]], logs: set[str] = frozenset()) -> str:
    if not rows:
        return '<p class="note">No trials yet.</p>'
    cols: list[str] = ["rank"]
    for r in rows:
        cols += [k for k in r if k not in cols and k is not None]
    cols.append("log")
    rows = [{**r, "log": _log_link(logs, str(r.get("trial_id", "")))} for r in rows]

    def cell(v: Any, col: str = "") -> str:
        if col == "log":
            return str(v)  # markup made by _log_link, names escaped there
        return html.escape(f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        stopped = str(r.get("status", "")).startswith("stopped")
        cls = ' class="stopped"' if stopped else ' class="error"' if r.get("status") == "error" else ""
        mark = ' <span class="tag">stopped early</span>' if stopped else ""
        tds = "".join(f"<td>{cell(r.get(c), c)}{mark if c == 'status' else ''}</td>" for c in cols)
        body.append(f"<tr{cls}>{tds}</tr>")
    return f'<table class="leaderboard" id="leaderboard"><thead><tr>{head}</tr></thead><tbody>' \
           + "\n".join(body) + "</tbody></table>"


DETAILS_SHOWN = 200  # trials listed one row each in "every hyperparameter" (the best first); the rest counted


def _details(trials: list[_Trial], logs: set[str]) -> str:
    """Every hyperparameter of every trial (params.json: sampled, fixed, default): those the same in every trial
    once, then one row per trial with those that differ, sampled ones marked, and a link to its log."""
    if not trials:
        return '<p class="note" id="trial-details">No trials yet.</p>'
    full = {t.trial_id: (t.hyperparameters or t.params) for t in trials}
    names: list[str] = []
    for h in full.values():
        names += [k for k in h if k not in names]
    same = [n for n in names if len({json.dumps(h.get(n), default=str, sort_keys=True) for h in full.values()}) == 1]
    differ = [n for n in names if n not in same]

    def value(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else _MISSING if v is None else \
            v if isinstance(v, str) else json.dumps(v, default=str)
        return html.escape(str(text))

    common = "".join(f"<tr><th>{html.escape(n)}</th><td>{value(next(iter(full.values())).get(n))}</td></tr>"
                     for n in same)
    ranked = sorted(trials, key=lambda t: -t.best if t.best is not None else math.inf)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["trial", "status", *differ, "log"])
    body = []
    for t in ranked[:DETAILS_SHOWN]:
        h = full[t.trial_id]
        tds = "".join(f'<td{" class=sampled" if n in t.params else ""}>{value(h.get(n))}</td>' for n in differ)
        body.append(f"<tr><td>{html.escape(t.trial_id)}</td><td>{html.escape(t.status)}</td>{tds}"
                    f"<td>{_log_link(logs, t.trial_id)}</td></tr>")
    more = len(ranked) - DETAILS_SHOWN
    note = f'<p class="note">and {more} more trials: see trials/&lt;id&gt;/params.json</p>' if more > 0 else ""
    return ('<div id="trial-details"><p class="note">Values in <b>bold</b> were sampled by the sweep; the others '
            'are the job\'s training_parameters or the defaults of the task and model (trials/&lt;id&gt;/params.json '
            'says which).</p>'
            + (f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{note}'
               if differ else "")
            + f'<details{" open" if not differ else ""}><summary>The same in every trial ({len(same)})</summary>'
              f'<table class="summary common">{common}</table></details></div>')


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{refresh}
<script>
// a figure that fails to draw says so on the page, instead of leaving a blank space
window.addEventListener("error", function (e) {{
  var box = document.getElementById("script-errors");
  if (box) {{ box.hidden = false; box.textContent += (e.message || String(e)) + "\\n"; }}
}});
</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ padding: 4px 10px; text-align: left; border-bottom: 1px solid #ddd; }}
table.summary th {{ color: #555; font-weight: normal; }}
table.leaderboard tr.stopped td {{ color: #777; font-style: italic; }}
table.leaderboard tr.error td {{ color: #b00; }}
.tag {{ font-size: 11px; background: #eee; border-radius: 3px; padding: 0 4px; font-style: normal; }}
.note {{ color: #777; }}
.live {{ background: #e6f4ea; border: 1px solid #9c9; padding: 6px 10px; border-radius: 4px; }}
#script-errors {{ background: #fee; color: #900; padding: 6px 10px; }}
table.trials td.sampled {{ font-weight: bold; }}
</style></head>
<body><h1>{title}</h1>
<pre id="script-errors" hidden></pre>
{live}
{header}
{body}
</body></html>
"""
