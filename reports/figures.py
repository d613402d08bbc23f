"""The report's figures: seaborn-styled matplotlib charts, returned as base64 PNG data URIs.

Per quantity: time and peak memory against scale (one row of panels per problem family,
torch and JAX side by side, the fastest few strategies drawn as lines, failures as markers
along the top of a panel), and a ranking at the largest size of each family (cost relative
to one forward pass, and first call against steady state) that lists every strategy.
"""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import transforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator,  # noqa: E402
                               NullFormatter, NullLocator)

from .summary import FAILED, baseline_name, fmt_time, framework_key  # noqa: E402

DPI = 80
TOP_K = 6  # lines per panel; the rest are named under the figure
PANEL_W, PANEL_H = 4.6, 2.7

# Failure markers, drawn in a strip along the top of a panel at the size where they happened.
STATUS_MARKERS = {"disagrees": ("D", "wrong result (disagrees)"), "error": ("X", "error"),
                  "timeout": ("^", "timeout"), "oom": ("s", "out of memory"),
                  "skipped": (">", "skipped (failed at a smaller size)")}
FRAMEWORK_COLORS = dict(zip(("torch", "jax", "backpack", "curvlinops"),
                            sns.color_palette("colorblind", 4)))
GREY = "#9a9a9a"


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _theme():
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85,
                  rc={"axes.titlesize": 10, "legend.fontsize": 9, "axes.titleweight": "bold"})


def method_colors(methods) -> dict:
    """One color per method (strategy name without framework and `_jit`), so torch.jacrev and
    jax.jacrev share a color across the side-by-side panels."""
    methods = sorted(set(methods))
    palette = sns.color_palette("tab10" if len(methods) <= 10 else "tab20", len(methods))
    return dict(zip(methods, palette))


def _scale_name(rows: pd.DataFrame) -> str:
    """The size key the scale is, when every row agrees (B, n, width ...), else 'scale'."""
    keys = None
    for sizes, scale in zip(rows["sizes"], rows["scale"]):
        ks = {k for k, v in (sizes or {}).items() if k != "scale" and v == scale}
        keys = ks if keys is None else keys & ks
    return sorted(keys)[0] if keys else "scale"


def _rank(sub: pd.DataFrame, metric: str) -> list[str]:
    """Strategies with at least one ok value, the ones reaching the largest scale first, then
    by their value there."""
    good = sub[sub["status"].eq("ok") & sub[metric].notna()]
    keys = []
    for name, rows in good.groupby("strategy"):
        top = rows.loc[rows["scale"].idxmax()]
        keys.append((-top["scale"], top[metric], name))
    return [k[2] for k in sorted(keys)]


def _select(sub: pd.DataFrame, metric: str, top_k: int) -> tuple[list[str], list[str]]:
    ranked = _rank(sub, metric)
    shown = ranked[:top_k]
    base = baseline_name(sub)
    extra = [base] if base in ranked and base not in shown else []
    failing = [s for s in ranked if s not in shown and s not in extra
               and sub.loc[sub["strategy"] == s, "status"].isin(FAILED).any()]
    shown = shown + extra + failing[:2]
    return shown, [s for s in ranked if s not in shown]


def _fmt_scale(v: float) -> str:
    v = float(v)
    if v >= 1e6:
        return f"{v:.3g}"
    return f"{v:,.0f}" if v == int(v) else f"{v:g}"


def _decade(lo: float, hi: float) -> tuple[float, float]:
    """Log-axis limits around [lo, hi], at least one decade wide, so the axis has labelled
    ticks instead of a crowd of minor ones."""
    lo, hi = lo / 1.25, hi * 1.25
    if hi / lo < 10:
        mid = np.sqrt(lo * hi)
        lo, hi = mid / np.sqrt(10), mid * np.sqrt(10)
    return lo, hi


def _fmt_mib(v, _pos=None) -> str:
    if v >= 1024:
        return f"{v / 1024:g} GiB"
    return f"{v:g} MiB" if v >= 1 else f"{v * 1024:g} KiB"


def _log_axis(axis, fmt, lo: float, hi: float) -> None:
    """Major ticks labelled in units (1 ms, 100 MiB): at 1, 2 and 5 per decade over a short
    range, 1 and 3 over a medium one, decades only beyond; never matplotlib's crowded 2×10^2
    minor labels."""
    decades = np.log10(hi / lo)
    subs = (1.0, 2.0, 5.0) if decades <= 2.2 else (1.0, 3.0) if decades <= 4 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _p: fmt(v)))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def line_figure(q: pd.DataFrame, metric: str, ylabel: str, top_k: int = TOP_K):
    """Log-log `metric` against scale: rows of panels = problem families (and NTK modes),
    columns = frameworks. Returns (data URI, {panel: strategies left out}) or None."""
    q = q[q["status"] != "not_applicable"]
    if q.empty:
        return None
    values = q[metric] / 2 ** 20 if metric == "peak_mem_bytes" else q[metric]
    q = q.assign(value=values.where(values > 0))
    panels = sorted(q["panel"].unique())
    fws = sorted(q["framework"].unique(), key=framework_key)
    if not q["value"].notna().any():  # e.g. no memory measured: failures are in the tables
        return None
    everything = q.loc[q["status"].eq("ok"), "value"].dropna()
    if everything.empty:
        everything = q["value"].dropna()
    _theme()
    colors = method_colors(q["method"])
    fig, axes = plt.subplots(len(panels), len(fws), squeeze=False, sharey="row",
                             figsize=(PANEL_W * len(fws) + 0.6, PANEL_H * len(panels) + 0.3))
    used_methods, used_status, any_jit, any_other = set(), set(), False, False
    left_out: dict[str, list[str]] = {}
    for i, panel in enumerate(panels):
        prow = q[q["panel"] == panel]
        row_failures = False
        xname = _scale_name(prow)
        scales = sorted(prow["scale"].dropna().unique())
        for j, fw in enumerate(fws):
            ax = axes[i][j]
            sub = prow[prow["framework"] == fw]
            title = f"{panel} \u00b7 {fw}"
            if sub.empty:
                ax.text(0.5, 0.5, f"no {fw} results for this problem in this run", ha="center",
                        va="center", transform=ax.transAxes, color=GREY)
                ax.set_title(title)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            shown, rest = _select(sub, "value", top_k)
            if rest:
                left_out[f"{panel} \u00b7 {fw}"] = rest
                title += f" (top {len(shown)} of {len(shown) + len(rest)})"
            for name in shown:
                rows = sub[(sub["strategy"] == name) & sub["status"].eq("ok")
                           & sub["value"].notna()].sort_values("scale")
                r0 = sub[sub["strategy"] == name].iloc[0]
                jit = bool(r0["jit"])
                any_jit |= jit
                used_methods.add(r0["method"])
                ax.plot(rows["scale"], rows["value"], color=colors[r0["method"]],
                        linestyle="--" if jit else "-", marker="s" if jit else "o",
                        markersize=4.5, linewidth=1.6)
            for name in rest:  # drawn faintly so the panel still shows the spread
                rows = sub[(sub["strategy"] == name) & sub["status"].eq("ok")
                           & sub["value"].notna()].sort_values("scale")
                any_other = True
                ax.plot(rows["scale"], rows["value"], color=GREY, linewidth=0.7, alpha=0.5,
                        zorder=1)
            bad = sub[sub["status"].isin(STATUS_MARKERS)].sort_values(["scale", "strategy"])
            row_failures |= not bad.empty
            for scale, group in bad.groupby("scale"):
                # Side by side in a strip above the data (rows of 6), so they never hide it.
                n = len(group)
                for k, r in enumerate(group.itertuples()):
                    line, col = divmod(k, 6)
                    width = min(n - 6 * line, 6)
                    marker, _ = STATUS_MARKERS[r.status]
                    used_status.add(r.status)
                    # Centred on the size, but kept inside the panel at its two ends.
                    shift = (col - (width - 1) / 2) * 9
                    if scale == scales[0] and len(scales) > 1:
                        shift = col * 9
                    elif scale == scales[-1] and len(scales) > 1:
                        shift = -col * 9
                    where = transforms.offset_copy(ax.get_xaxis_transform(), fig=fig,
                                                   x=shift, units="points")
                    ax.plot([scale], [0.93 - 0.09 * line], marker=marker, linestyle="none",
                            color=colors[r.method] if r.strategy in shown else GREY,
                            markeredgecolor="black", markeredgewidth=0.6, markersize=7,
                            transform=where, clip_on=False)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(scales))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([_fmt_scale(s) for s in scales])
            if len(scales) == 1:
                ax.set_xlim(scales[0] / 2, scales[0] * 2)
            else:
                ax.set_xlim(scales[0] / 1.4, scales[-1] * 1.4)
            ax.set_xlabel(xname)
            ax.set_ylabel(ylabel if j == 0 else "")
            ax.set_title(title)
            ax.grid(True, which="major", alpha=0.5)
        good = prow.loc[prow["status"].eq("ok"), "value"].dropna()
        if good.empty:  # only failures in this row: the whole figure's range
            good = everything
        lo, hi = _decade(good.min(), good.max())
        if row_failures:  # room for the failure strip: the top fifth of the panel
            hi = hi * (hi / lo) ** 0.3
        axes[i][0].set_ylim(lo, hi)
        for ax in axes[i]:
            _log_axis(ax.yaxis, fmt_time if metric == "median_s" else _fmt_mib, lo, hi)
    handles = [Line2D([], [], color=colors[m], linewidth=2, label=m) for m in sorted(used_methods)]
    if any_other:
        handles.append(Line2D([], [], color=GREY, linewidth=0.8, label="others (named below)"))
    if any_jit:
        handles += [Line2D([], [], color="black", linestyle="-", marker="o", markersize=4,
                           label="eager / torch"),
                    Line2D([], [], color="black", linestyle="--", marker="s", markersize=4,
                           label="jit (JAX)")]
    for st in STATUS_MARKERS:
        if st in used_status:
            marker, label = STATUS_MARKERS[st]
            handles.append(Line2D([], [], marker=marker, linestyle="none", color="white",
                                  markeredgecolor="black", markersize=7, label=label))
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.995), frameon=False,
               title="strategy (colour = method)")
    return png(fig), left_out


def ranking_figure(q: pd.DataFrame):
    """At the largest size of each family: every strategy's median time ÷ one forward pass
    of its own framework and mode (left) and its first call against its steady-state median
    (right). Failed strategies are listed with their status in grey; a wrong result is drawn
    as a red cross; a strategy of the family that has no row at this size (the quick
    profile trims JAX at larger sizes) is listed as "not run"."""
    q = q[q["status"] != "not_applicable"]
    if q.empty:
        return None
    _theme()
    blocks = []
    for panel in sorted(q["panel"].unique()):
        prow = q[q["panel"] == panel]
        top = prow[prow["scale"] == prow["scale"].max()]
        for problem in sorted(top["problem"].unique()):  # several problems may share a scale
            at = top[top["problem"] == problem].copy()
            absent = prow.drop_duplicates("strategy")
            absent = absent[~absent["strategy"].isin(at["strategy"])]
            at = pd.concat([at, absent.assign(status="not run", median_s=np.nan,
                                              first_call_s=np.nan)], ignore_index=True)
            at["_ok"] = at["status"].isin(("ok", "disagrees")) & at["median_s"].notna()
            at = at.sort_values(["_ok", "median_s", "strategy"], ascending=[False, True, True])
            blocks.append((problem, at))
    heights = [max(len(at), 2) * 0.24 + 1.0 for _, at in blocks]
    fig, axes = plt.subplots(len(blocks), 2, squeeze=False, figsize=(12, sum(heights) + 0.4),
                             gridspec_kw={"height_ratios": heights, "width_ratios": [1, 1]})
    for (title, at), (ax_rel, ax_fc) in zip(blocks, axes):
        y = np.arange(len(at))
        labels = []
        for k, r in enumerate(at.itertuples()):
            label = r.strategy
            if r.status not in ("ok",):
                label += f"  [{r.status}]"
            labels.append(label)
            color = FRAMEWORK_COLORS.get(r.framework, "black")
            if r.status == "ok":
                rel = r.median_s / r.forward_s if r.forward_s and r.forward_s > 0 else np.nan
                if np.isfinite(rel):
                    ax_rel.plot([rel], [k], "o", color=color, markersize=6)
                ax_fc.plot([r.median_s], [k], "o", color=color, markersize=6)
                if r.first_call_s == r.first_call_s and r.first_call_s:
                    ax_fc.plot([r.first_call_s], [k], "o", markerfacecolor="white",
                               markeredgecolor=color, markersize=6)
                    ax_fc.plot([r.median_s, r.first_call_s], [k, k], color=color, linewidth=0.8,
                               alpha=0.6)
            elif r.status == "disagrees" and r.median_s == r.median_s:
                if r.forward_s and r.forward_s > 0:
                    ax_rel.plot([r.median_s / r.forward_s], [k], "x", color="red", markersize=7)
                ax_fc.plot([r.median_s], [k], "x", color="red", markersize=7)
            elif r.first_call_s == r.first_call_s and r.first_call_s:
                # a timeout while timing still has its first call
                ax_fc.plot([r.first_call_s], [k], "o", markerfacecolor="white",
                           markeredgecolor=GREY, markersize=6)
        for ax in (ax_rel, ax_fc):
            ax.set_yticks(y)
            ax.set_ylim(len(at) - 0.5, -0.5)
            ax.set_xscale("log")
            ax.grid(True, axis="x", which="major", alpha=0.5)
            ax.grid(True, axis="y", alpha=0.25)
        ax_rel.set_yticklabels(labels, fontsize=8)
        ax_fc.set_yticklabels([])
        for tick, r in zip(ax_rel.get_yticklabels(), at.itertuples()):
            if r.status == "disagrees":
                tick.set_color("#c0392b")
            elif r.status != "ok":
                tick.set_color(GREY)
                tick.set_fontstyle("italic")
        ax_rel.set_title(title, loc="left")
        ax_rel.set_xlabel("median time \u00f7 one forward pass", fontsize=8.5)
        ax_fc.set_xlabel("first call (open circle) and steady-state median (filled)",
                         fontsize=8.5)
        for ax, fmt in ((ax_rel, lambda v: f"{v:g}\u00d7"), (ax_fc, fmt_time)):
            xs = [x for line in ax.lines for x in line.get_xdata() if x > 0]
            if xs:
                lo, hi = _decade(min(xs), max(xs))
                ax.set_xlim(lo, hi)
                _log_axis(ax.xaxis, fmt, lo, hi)
        for ax in (ax_rel, ax_fc):
            if not ax.lines:
                ax.text(0.5, 0.5, "no finished strategy", ha="center", va="center",
                        transform=ax.transAxes, color=GREY)
    handles = [Line2D([], [], marker="o", linestyle="none", color=c, label=f)
               for f, c in FRAMEWORK_COLORS.items() if f in set(q["framework"])]
    handles += [Line2D([], [], marker="o", linestyle="none", markerfacecolor="white",
                       markeredgecolor="black", label="first call (compile, tracing)"),
                Line2D([], [], marker="x", linestyle="none", color="red",
                       label="disagrees with the reference")]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.995), frameon=False)
    return png(fig)


def quantity_figures(q: pd.DataFrame) -> list[dict]:
    """The figures of one quantity at one device and dtype, each a dict with title, img,
    about and left_out (panel -> strategies not drawn as lines)."""
    out = []
    t = line_figure(q, "median_s", "median time (s)")
    if t:
        out.append({"title": "Time against size", "img": t[0], "left_out": t[1],
                    "about": "Median steady-state time, log-log. Each row of panels is one "
                             "problem family, torch and JAX side by side on the same y axis. "
                             f"The {TOP_K} strategies reaching the largest size fastest are "
                             "drawn in colour, plus the baseline and up to two that failed; "
                             "the others are faint grey lines, named below. Markers in a strip "
                             "along the top of a panel are failures at that size, in the "
                             "strategy's colour, or grey when it has no line in the panel; the "
                             "Failures section names them."})
    m = line_figure(q, "peak_mem_bytes", "peak memory (MiB)")
    if m:
        out.append({"title": "Peak memory against size", "img": m[0], "left_out": m[1],
                    "about": "Peak memory of a steady-state call (RSS high-water mark, reset "
                             "before it, less the process's baseline on CPU; the allocator's "
                             "peak on GPU; the first call's peak, compilation included, is in "
                             "the tables), log-log, same layout; lines are chosen by lowest "
                             "memory. Absent where no call added to the high-water mark."})
    r = ranking_figure(q)
    if r:
        out.append({"title": "Every strategy at the largest size: cost relative to a forward "
                             "pass, and first-call time",
                    "img": r, "left_out": {},
                    "about": "Left: median time divided by one plain forward pass of the same "
                             "model on the same inputs (ADBench's \u201cjacobian \u00f7 "
                             "objective\u201d). Right: the first call (compile or tracing "
                             "included) against the steady-state median. Failed strategies "
                             "are listed in grey italics with their status."})
    return out
