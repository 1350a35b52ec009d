"""Plots for the chapter notebooks, tested once here instead of pasted into cells.

matplotlib is imported inside each function (it is only needed for plots), every function
returns the Figure so a notebook shows it and a test can inspect it, and every axis says what
it measures and in which unit.
"""

from __future__ import annotations

from common.cli import CommandLine, path_arg
from common.files import atomic_write


def _figure(ncols: int = 1, width: float = 6.4, height: float = 3.6):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols if ncols > 1 else width, height),
                             constrained_layout=True)
    return fig, axes


# --- chapters 1-3: attention, KV cache, MLA, absorption -------------------------------------
_BYTE_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _log_axes(ax, logx: bool, logy: bool) -> None:
    """Log scales with plain-number tick labels (x in powers of two: token counts)."""
    from matplotlib.ticker import ScalarFormatter

    if logx:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    if logy:
        ax.set_yscale("log")


def plot_cache_vs_context(contexts, formula_bytes: dict, measured: dict | None = None, unit: str = "KiB",
                          title: str = "KV-cache size vs context length", logx: bool = False,
                          logy: bool = False):
    """Cache size against context: one line per attention kind (formula), markers where measured.

    contexts: token counts (x); formula_bytes: label -> bytes at each context (from `utils`);
    measured: label -> (token counts, bytes read from real LayerCache tensors), drawn as markers
    in the colour of the matching line, so a reader sees formula and measurement agree.
    """
    fig, ax = _figure()
    scale = _BYTE_UNITS[unit]
    for i, (label, values) in enumerate(formula_bytes.items()):
        color = f"C{i}"
        ax.plot(list(contexts), [v / scale for v in values], color=color, label=f"{label} (formula)")
        if measured and label in measured:
            xs, ys = measured[label]
            ax.plot(list(xs), [y / scale for y in ys], "o", color=color, markersize=6, markerfacecolor="none",
                    markeredgewidth=1.5)
    if measured:
        ax.plot([], [], "o", color="gray", markerfacecolor="none", label="measured (LayerCache.nbytes)")
    _log_axes(ax, logx, logy)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"cache size ({unit}), all layers")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_cache_bytes_per_token(presets, bytes_by_kind: dict, title: str = "KV-cache bytes per token"):
    """Grouped bars: x = presets, one bar per attention kind; log y axis, each bar labelled.

    presets: preset names (x groups); bytes_by_kind: kind label -> bytes per token for each preset.
    """
    import numpy as np

    fig, ax = _figure(width=8.0, height=4.0)
    kinds = list(bytes_by_kind)
    width = 0.8 / len(kinds)
    x = np.arange(len(presets))
    for i, kind in enumerate(kinds):
        values = bytes_by_kind[kind]
        bars = ax.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=kind, color=f"C{i}")
        labels = [f"{v:,d}" for v in values]                    # exact bytes, as the printed tables
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_yscale("log")
    ax.set_xticks(x, list(presets))
    ax.set_xlabel("preset")
    ax.set_ylabel("bytes per token, all layers (log)")
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=len(kinds))
    return fig


def plot_decode_step_cost(x, series: dict, ylabel: str, title: str, xlabel: str = "context length S (tokens)",
                          logx: bool = False, logy: bool = False):
    """Cost of one decode step (time or FLOPs) against context: one line with markers per method.

    series: method label -> one value per x (e.g. milliseconds from a timing loop, or FLOPs).
    """
    fig, ax = _figure()
    for i, (label, values) in enumerate(series.items()):
        ax.plot(list(x), list(values), "o-", color=f"C{i}", label=label, markersize=4)
    _log_axes(ax, logx, logy)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_rope_rotation(pair_paths: dict, scores_by_query_position: dict,
                       title: str = "RoPE: rotation by position, scores by offset"):
    """Two panels. Left: where one feature pair (x_2i, x_2i+1) of a vector lands at positions 0, 1, 2, ...
    for a few pairs i (fast and slow frequencies); pair number k is scaled onto the circle of radius k + 1.
    Right: the score q_t . k_s after RoPE against the offset t - s, one line per query position t;
    lines that lie on top of each other show the score depends on the offset only.

    pair_paths: label -> (positions, (M, 2) array of the rotated pair at each position);
    scores_by_query_position: query position t -> (offsets t - s, the scores at those offsets).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, ax_score) = plt.subplots(1, 2, figsize=(11.0, 4.4), constrained_layout=True,
                                       gridspec_kw={"width_ratios": [1, 1.5]})
    for i, (label, (positions, points)) in enumerate(pair_paths.items()):
        pts = np.asarray(points, dtype=float)
        pts = pts / float(np.hypot(*pts[0])) * (i + 1)        # pair number i drawn on the circle of radius i + 1
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot((i + 1) * np.cos(circle), (i + 1) * np.sin(circle), color=f"C{i}", alpha=0.25, linewidth=1)
        ax.plot(pts[:, 0], pts[:, 1], "o-", color=f"C{i}", markersize=3.5, linewidth=0.8, label=label)
        for m, (px, py) in zip(positions, pts, strict=True):
            if m in (positions[0], positions[1], positions[-1]):
                ax.annotate(f"m={m}", (px, py), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=f"C{i}")
    ax.set_aspect("equal")
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.axvline(0, color="gray", linewidth=0.5)
    ax.set_xlabel("feature 2i (each pair scaled to its own circle)")
    ax.set_ylabel("feature 2i+1")
    ax.set_title("one pair rotated to position m", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=1)
    styles = ["-", "--", ":", "-."]
    for j, (t, (offsets, scores)) in enumerate(scores_by_query_position.items()):
        ax_score.plot(list(offsets), list(scores), styles[j % len(styles)], marker="o", markersize=3 + 1.5 * j,
                      markerfacecolor="none", color=f"C{j + 3}", label=f"query at position t = {t}")
    ax_score.set_xlabel("offset t - s (query position - key position)")
    ax_score.set_ylabel("score q_t · k_s after RoPE")
    ax_score.set_title("same q and k, placed at different positions", fontsize=10)
    ax_score.grid(alpha=0.3)
    ax_score.legend(fontsize=8)
    fig.suptitle(title)
    return fig


# --- chapter 4: experts and the router -----------------------------------------------------
def plot_routing_heatmap(gates, token_labels=None, tokens_per_expert=None,
                         title: str = "Router gate weights g (tokens x experts)"):
    """Left: the dense (N, E) gate matrix of a batch (zero off each token's top-K); right, optional:
    how many (token, slot) selections each expert received, against the uniform share N*K/E.

    gates: (N, E) tensor or array of gate weights; token_labels: N strings for the y axis;
    tokens_per_expert: (E,) selection counts (Router/MoEStats `tokens_per_expert`).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    g = np.asarray(gates.detach().cpu() if hasattr(gates, "detach") else gates, dtype=float)
    n_tokens, n_experts = g.shape
    ncols = 1 if tokens_per_expert is None else 2
    height = max(4.2, 0.24 * n_tokens + 1.2)                 # one readable row per token
    fig, axes = plt.subplots(1, ncols, figsize=(10.0 if ncols == 2 else 6.4, height), constrained_layout=True,
                             gridspec_kw={"width_ratios": [3, 2]} if ncols == 2 else None, squeeze=False)
    ax = axes[0, 0]
    masked = np.ma.masked_equal(g, 0.0)                       # unselected experts stay white
    chosen = g[g > 0]
    # the colour scale spans the weights actually given, so 0.45 and 0.55 look different; each cell is
    # also labelled with its value
    low, high = (float(chosen.min()), float(chosen.max())) if chosen.size else (0.0, 1.0)
    if high - low < 1e-6:
        low, high = low - 0.01, high + 0.01
    image = ax.imshow(masked, aspect="auto", cmap="coolwarm", vmin=low, vmax=high, interpolation="nearest")
    if n_tokens * n_experts <= 600:
        for (row, col), value in np.ndenumerate(g):
            if value > 0:
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6.5, color="black")
    ax.set_xticks(range(n_experts))
    ax.set_xlabel("routed expert id")
    if token_labels is not None:
        # "␣" shows a token's leading space, so " the" and "the" read differently
        shown = [f"{i}: " + str(t).replace(" ", "\u2423").replace("\n", "\\n") for i, t in enumerate(token_labels)]
        ax.set_yticks(range(n_tokens), shown, fontsize=8 if n_tokens <= 24 else 6, family="monospace")
        ax.set_ylabel("token (position: text)")
    else:
        ax.set_ylabel("token index")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="gate weight g (white = not selected)")
    if tokens_per_expert is not None:
        counts = np.asarray(tokens_per_expert.detach().cpu() if hasattr(tokens_per_expert, "detach")
                            else tokens_per_expert, dtype=float)
        bar_ax = axes[0, 1]
        bar_ax.bar(range(n_experts), counts, color="C1", label="selections")
        bar_ax.axhline(counts.sum() / n_experts, color="k", linestyle="--", linewidth=1,
                       label=f"uniform N*K/E = {counts.sum() / n_experts:.1f}")
        bar_ax.set_xticks(range(n_experts))
        bar_ax.set_xlabel("routed expert id")
        bar_ax.set_ylabel("tokens routed (count)")
        bar_ax.set_title("Tokens per expert", fontsize=10)
        bar_ax.grid(axis="y", alpha=0.3)
        bar_ax.legend(fontsize=8)
    return fig


def plot_sort_dispatch(expert_ids, title: str = "Sort-based dispatch: (token, slot) pairs grouped by expert"):
    """Three rows of cells, one cell per (token, slot) pair, coloured by the expert it names.
    Top: token order (the router's (N, K) ids flattened); middle: after a stable argsort by expert id,
    with a line from each pair's old place to its new one; bottom: the runs cut by the per-expert counts,
    each one batch for its expert. Cell text: 't3' = token 3.

    expert_ids: (N, K) ints (RouterOutput.expert_ids).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    ids = np.asarray(expert_ids.detach().cpu() if hasattr(expert_ids, "detach") else expert_ids)
    n_tokens, k = ids.shape
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    n_experts = int(flat.max()) + 1
    slots = flat.size
    fig, ax = plt.subplots(figsize=(max(7.0, 0.62 * slots + 2.6), 3.9), constrained_layout=True)
    rows = {"token order\n(flat_ids)": 2.0, "after stable\nargsort": 1.0, "runs = one batch\nper expert": 0.0}

    def cell(x, y, expert, text):
        ax.add_patch(Rectangle((x - 0.45, y - 0.3), 0.9, 0.6, facecolor=plt.cm.tab10(expert % 10), alpha=0.55,
                               edgecolor="black", linewidth=0.6))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    gap = 0.35                                        # extra space between runs in the bottom row
    run_x, x = [], 0.0
    for pos in range(slots):
        if pos and flat[order[pos]] != flat[order[pos - 1]]:
            x += gap
        run_x.append(x)
        x += 1
    for j in range(slots):
        cell(j, rows["token order\n(flat_ids)"], flat[j], f"t{j // k}\ne{flat[j]}")
    for pos, j in enumerate(order):
        cell(pos, rows["after stable\nargsort"], flat[j], f"t{j // k}")
        ax.plot([j, pos], [1.7, 1.3], color="gray", linewidth=0.7)
        cell(run_x[pos], rows["runs = one batch\nper expert"], flat[j], f"t{j // k}")
    for e in range(n_experts):
        members = [run_x[pos] for pos in range(slots) if flat[order[pos]] == e]
        if members:
            ax.plot([min(members) - 0.45, max(members) + 0.45], [-0.45, -0.45], color=plt.cm.tab10(e % 10),
                    linewidth=3)
            ax.text((min(members) + max(members)) / 2, -0.65, f"expert {e}: {len(members)}", ha="center",
                    va="top", fontsize=8)
    ax.set_yticks(list(rows.values()), list(rows))
    ax.set_xticks([])
    ax.set_xlim(-0.8, max(run_x) + 0.8)
    ax.set_ylim(-1.05, 2.45)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    return fig


def _human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def plot_total_vs_active_params(counts: dict, reported: dict | None = None,
                                title: str = "Total vs active parameters per token"):
    """Grouped bars on a log axis: total and active parameters per model, each bar labelled.

    counts: name -> (total, active) counted from our models; reported: name -> (total, active)
    figures quoted from papers (e.g. DeepSeek-V3: 671e9, 37e9), drawn hatched to tell them apart.
    """
    import numpy as np
    from matplotlib.patches import Patch

    rows = [(name, t, a, False) for name, (t, a) in counts.items()]
    rows += [(name, t, a, True) for name, (t, a) in (reported or {}).items()]
    fig, ax = _figure(width=8.0, height=4.2)
    x = np.arange(len(rows))
    width = 0.38
    for i, (_name, total, active, is_reported) in enumerate(rows):
        style = {"hatch": "//", "edgecolor": "white"} if is_reported else {}
        bar = ax.bar(x[i] - width / 2, total, width, color="C0", **style)
        ax.bar_label(bar, labels=[_human_count(total)], fontsize=7, padding=1)
        bar = ax.bar(x[i] + width / 2, active, width, color="C1", **style)
        share = 100 * active / total
        ax.bar_label(bar, labels=[f"{_human_count(active)}\n{share:.1f}%" if share < 10 else
                                  f"{_human_count(active)}\n{share:.0f}%"], fontsize=7, padding=1)
    handles = [Patch(color="C0", label="total"), Patch(color="C1", label="active per token (and % of total)")]
    if reported:
        handles.append(Patch(facecolor="gray", hatch="//", edgecolor="white", label="reported in the papers"))
    ax.set_yscale("log")
    ax.set_xticks(x, [name for name, *_ in rows])
    ax.set_xlabel("model")
    ax.set_ylabel("parameters (count, log scale)")
    ax.set_title(title)
    ax.set_ylim(top=ax.get_ylim()[1] * 6)                     # room for the labels and the legend
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig


# --- chapter 8: ablations -------------------------------------------------------------------
def plot_ablation_losses(losses: dict, title: str = "Validation loss per run",
                         ylabel: str = "final validation loss (nats/token)", baseline: str | None = None):
    """Every seed's loss as a dot, the mean as a bar and ± the sample std as an error bar, one column
    per run: the seed spread in view.

    losses: run name -> list of per-seed losses (from the ablation records). baseline: the run the others are
    compared with (default: the first); its mean is one dashed line across the plot, and beside every other
    run a grey band spans baseline mean ± 2 SE of that run's difference (SE = sqrt(s_a²/n_a + s_b²/n_b), as in
    the tables): a mean outside its band is a resolved difference. A run far outside the others' range (more
    than twice that range beyond it) is drawn as an arrow at the edge with its mean written out, so that it
    does not squash the rest. The y-axis shows the losses themselves, never an offset.
    """
    names = list(losses)
    values = {n: [v for v in losses[n] if v is not None] for n in names}
    base = baseline if baseline in values else (names[0] if names else None)

    def mean_std(v):
        m = sum(v) / len(v)
        return m, ((sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else None)

    stats = {n: mean_std(v) for n, v in values.items() if v}
    outliers = set()
    for n in stats:
        rest = [x for other, v in values.items() if other != n for x in v]
        if n == base or len(rest) < 2:
            continue
        lo, hi = min(rest), max(rest)
        span = max(hi - lo, 1e-9)
        if min(values[n]) > hi + 2 * span or max(values[n]) < lo - 2 * span:
            outliers.add(n)
    fig, ax = _figure(width=max(6.4, 0.9 * len(names) + 2.5) + 2.2, height=3.8)
    bands = {}
    if base in stats and stats[base][1] is not None:
        b_mean, b_std = stats[base]
        ax.axhline(b_mean, color="0.35", linestyle="--", linewidth=1, label=f"baseline mean ({base})")
        for i, n in enumerate(names):
            if n == base or n not in stats or stats[n][1] is None or n in outliers:
                continue
            se = (stats[n][1] ** 2 / len(values[n]) + b_std ** 2 / len(values[base])) ** 0.5
            bands[n] = (b_mean - 2 * se, b_mean + 2 * se)
            ax.fill_between([i - 0.42, i + 0.42], *bands[n], color="0.6", alpha=0.25, linewidth=0,
                            label="baseline ± 2 SE of the difference" if len(bands) == 1 else None)
    labelled = set()
    for i, n in enumerate(names):
        if n not in stats or n in outliers:
            continue
        mean, std = stats[n]
        color = f"C{i % 10}"
        ax.hlines(mean, i - 0.3, i + 0.3, color=color, linewidth=2.5,
                  label="mean over seeds" if "mean" not in labelled else None)
        labelled.add("mean")
        if std is not None:                                   # sample std (ddof=1), as in the tables
            ax.errorbar(i + 0.12, mean, yerr=std, color=color, capsize=4, linewidth=1.2,
                        label="± sample std" if "std" not in labelled else None)
            labelled.add("std")
        ax.plot([i] * len(values[n]), values[n], "o", color=color, markerfacecolor="none", markersize=6,
                label="one seed" if "seed" not in labelled else None)
        labelled.add("seed")
    shown = [x for n in stats if n not in outliers for x in values[n]] + [y for n, b in bands.items()
                                                                         if n not in outliers for y in b]
    if shown:
        lo, hi = min(shown), max(shown)
        pad = 0.12 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
    for n in outliers:
        i = names.index(n)
        mean, std = stats[n]
        top = mean > ax.get_ylim()[1]
        y = ax.get_ylim()[1 if top else 0]
        ax.annotate("", xy=(i, y), xytext=(i, y - (1 if top else -1) * 0.18 * (ax.get_ylim()[1] - ax.get_ylim()[0])),
                    arrowprops=dict(arrowstyle="-|>", color=f"C{i % 10}", linewidth=2))
        ax.text(i, y - (1 if top else -1) * 0.22 * (ax.get_ylim()[1] - ax.get_ylim()[0]),
                f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + "\noff the scale",
                ha="center", va="top" if top else "bottom", fontsize=7.5, color=f"C{i % 10}")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_xticks(range(len(names)), names, rotation=20 if max(map(len, names), default=0) > 8 else 0,
                  ha="right" if max(map(len, names), default=0) > 8 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def _short_count(x: float) -> str:
    """1234 -> '1,234', 126560 -> '126.6K', 2.5e6 -> '2.50M' (tick labels that still tell runs apart)."""
    return f"{x:,.0f}" if x < 1e4 else f"{x / 1e3:.1f}K" if x < 1e6 else f"{x / 1e6:.2f}M"


def plot_loss_vs_cost(points: list[dict], xlabel: str, title: str = "Validation loss vs cost",
                      ylabel: str = "final validation loss (nats/token)", logx: bool = True):
    """One marker per run at (cost, mean loss) with the seed std as an error bar; a legend names runs.

    points: dicts with 'label', 'x' (e.g. KV-cache bytes per token), 'y' (mean loss), 'yerr' (std),
        and optionally 'seeds' (each seed's loss, drawn as faint markers).
    """
    fig, ax = _figure(width=7.2, height=4.0)
    markers = "osD^vP*Xhp"
    for i, p in enumerate(points):
        ax.errorbar(p["x"], p["y"], yerr=p.get("yerr") or 0.0, fmt=markers[i % len(markers)], color=f"C{i % 10}",
                    capsize=3, markersize=7, label=p["label"])
        seeds = p.get("seeds") or []                              # each seed's own loss, faint, at the same cost
        ax.plot([p["x"]] * len(seeds), seeds, markers[i % len(markers)], color=f"C{i % 10}", alpha=0.35,
                markersize=4, markerfacecolor="none")
    import math

    xs = sorted({p["x"] for p in points})
    if len(xs) > 1 and min(xs) > 0:                           # drop tick labels that would overlap
        span = math.log(max(xs) / min(xs)) if logx else max(xs) - min(xs)
        kept = [xs[0]]
        for x in xs[1:]:
            gap = math.log(x / kept[-1]) if logx else x - kept[-1]
            if gap >= 0.05 * span:
                kept.append(x)
        xs = kept
    if logx:
        ax.set_xscale("log")
    ax.minorticks_off()                                       # ticks at the runs' own costs, not 10^k
    ax.set_xticks(xs, [_short_count(x) for x in xs], fontsize=8,
                  rotation=30 if len(xs) > 2 else 0, ha="right" if len(xs) > 2 else "center")
    span = max(xs) / min(xs) if min(xs) > 0 else 2.0
    ax.set_xlim(min(xs) / span ** 0.08, max(xs) * span ** 0.08) if logx and span > 1 else None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_expert_load_over_time(series: dict, title: str = "Expert load over training", smooth: int = 5,
                               ceiling: float | None = None):
    """max_i(c_i) / mean_i(c_i) against training tokens, one line per run (1.0 = perfectly balanced).

    series: run name -> (tokens, ratios). A centred moving average over `smooth` points tames the
    step-to-step noise of one batch's counts; the raw values are drawn faintly behind it.
    ceiling: E/K, the ratio of a fully collapsed router (every token to the same K experts), if shared.
    """
    fig, ax = _figure(width=7.2, height=4.0)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        if not xs:
            continue
        color = f"C{i % 10}"
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        half = max(0, smooth // 2)
        smoothed = [sum(ys[max(0, j - half): j + half + 1]) / len(ys[max(0, j - half): j + half + 1])
                    for j in range(len(ys))]
        ax.plot(xs, smoothed, color=color, linewidth=1.8, label=name)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance")
    if ceiling:
        ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1, label=f"collapse: E/K = {ceiling:g}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("max / ideal expert load (ratio)")
    ax.set_title(title)
    ax.set_ylim(bottom=0.9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_expert_load_final(bars: list[dict], title: str = "Final expert load per run", ceiling: float | None = None):
    """Bar per run: the final max/ideal load (seed mean, std as error bar); the dotted line is balance.

    bars: dicts with 'label', 'y' and optionally 'yerr'; ceiling: E/K (full collapse), if shared by the runs.
    """
    fig, ax = _figure(width=max(6.4, 0.9 * len(bars) + 2.5), height=3.8)
    labels = [b["label"] for b in bars]
    ax.bar(range(len(bars)), [b["y"] for b in bars], yerr=[b.get("yerr") or 0.0 for b in bars], capsize=3,
           color=[f"C{i % 10}" for i in range(len(bars))])
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance")
    if ceiling:
        ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1, label=f"collapse: E/K = {ceiling:g}")
    long = max(map(len, labels), default=0) > 8
    ax.set_xticks(range(len(bars)), labels, rotation=20 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_xlabel("run")
    ax.set_ylabel("max / ideal expert load (ratio)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# --- chapters 6-7: training and inference ---------------------------------------------------
def plot_training_curves(train_steps, train_loss, val_steps=None, val_loss=None, lr=None,
                         baselines: dict | None = None, title: str = "Training on the essays"):
    """Left: train and validation cross-entropy against optimizer step; right (if `lr`): the learning rate.

    train_steps, train_loss: the 'train' rows of the Trainer's metrics (ce per logged step);
    val_steps, val_loss: its 'eval' rows; lr: the learning rate at each train step;
    baselines: label -> reference loss, each drawn as a dotted line (e.g. ln V, the loss of a uniform guess).
    """
    fig, axes = _figure(ncols=2 if lr is not None else 1, width=5.0 if lr is not None else 6.4, height=3.8)
    ax = axes[0] if lr is not None else axes
    ax.plot(list(train_steps), list(train_loss), color="C0", linewidth=1.2, label="train (batch ce)")
    if val_steps is not None and len(val_steps):
        ax.plot(list(val_steps), list(val_loss), "o-", color="C1", markersize=5, label="validation")
    for i, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, color=("gray", "black", "brown")[i % 3], linestyle=":", linewidth=1.2,
                   label=f"{label} = {value:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if lr is not None:
        lr_ax = axes[1]
        lr_ax.plot(list(train_steps), list(lr), ".-", color="C2", markersize=3)
        lr_ax.set_xlabel("optimizer step")
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_title("Warmup, then cosine decay")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        lr_ax.set_ylim(bottom=0)
        lr_ax.grid(alpha=0.3)
    return fig


def plot_next_token_distribution(token_labels, panels: dict, title: str = "Next-token distribution"):
    """Grouped bars of next-token probabilities: one subplot per panel, one bar colour per setting.

    token_labels: the tokens on the x axis (e.g. the model's most likely next tokens);
    panels: panel title -> {setting label -> probability of each of those tokens}.
    """
    import numpy as np

    fig, axes = _figure(ncols=len(panels), width=5.0 if len(panels) > 1 else 7.0, height=3.9)
    axes = np.atleast_1d(axes)
    x = np.arange(len(token_labels))
    for ax, (panel, settings) in zip(axes, panels.items(), strict=True):
        width = 0.8 / len(settings)
        for i, (label, probs) in enumerate(settings.items()):
            ax.bar(x + (i - (len(settings) - 1) / 2) * width, list(probs), width, color=f"C{i}", label=label)
        ax.set_xticks(x, [repr(t) for t in token_labels], rotation=60, ha="right", fontsize=8)   # quotes show spaces
        ax.set_xlabel("next token (most likely first)")
        ax.set_ylabel("probability")
        ax.set_title(panel, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def plot_generation_cache_bytes(new_tokens, measured: dict, formula: dict | None = None,
                                context_length: int | None = None, prompt_tokens: int = 0, unit: str = "KiB",
                                title: str = "KV cache during one generation"):
    """Cache bytes held after each generated token: measured markers, formula lines, the context limit.

    new_tokens: generated-token counts (x); measured: label -> bytes read from the LayerCaches at
    each x; formula: label -> bytes a cache without a window would hold (from `utils`), drawn dashed
    in the matching colour; context_length and prompt_tokens place the line where the cache is full.
    """
    fig, ax = _figure(width=8.0, height=4.0)
    scale = _BYTE_UNITS[unit]
    xs = list(new_tokens)
    for i, (label, values) in enumerate(measured.items()):
        ax.plot(xs, [v / scale for v in values], "o", color=f"C{i}", markersize=3, label=f"{label} (measured)")
        if formula and label in formula:
            ax.plot(xs, [v / scale for v in formula[label]], "--", color=f"C{i}", linewidth=1,
                    label=f"{label} (formula, no window)")
    if context_length is not None:
        full = context_length - prompt_tokens + 1      # the cache holds prompt + new - 1 tokens
        ax.axvline(full, color="gray", linestyle=":", linewidth=1, label=f"cache full ({context_length} tokens)")
    ax.set_xlabel("tokens generated")
    ax.set_ylabel(f"cache size ({unit}), all layers")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# --- chapter 5: load balancing --------------------------------------------------------------
def _as_array(x):
    import numpy as np

    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)


def plot_training_run(steps, train_loss, val_steps, val_loss, lr, load_ratios: dict, baselines: dict | None = None,
                      smooth: int = 9, ceiling: float | None = None, title: str = "Training on the essays"):
    """Three panels on one shared step axis: the losses, the learning rate, the expert load per MoE layer.

    steps, train_loss, lr: the 'train' rows (one batch's ce each); val_steps, val_loss: the 'eval' rows;
    load_ratios: layer label -> max/ideal expert load at each train row; baselines: label -> reference loss
    (dotted). Noisy series are drawn faintly as logged, with a centred moving average over `smooth`
    logged points on top; the legends say which lines are smoothed. ceiling: E/K, a collapsed router.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.asarray(steps)
    fig, (loss_ax, lr_ax, load_ax) = plt.subplots(3, 1, figsize=(8.0, 8.4), sharex=True, constrained_layout=True,
                                                  gridspec_kw={"height_ratios": [3, 1.2, 2]})
    loss_ax.plot(steps, train_loss, color="C0", alpha=0.3, linewidth=0.8, label="train: one batch per point")
    loss_ax.plot(steps, _moving_average(train_loss, smooth), color="C0", linewidth=1.6,
                 label=f"train: moving average of {smooth} points")
    loss_ax.plot(val_steps, val_loss, "o-", color="C1", markersize=4, label="validation (not smoothed)")
    for i, (label, value) in enumerate((baselines or {}).items()):
        loss_ax.axhline(value, color=("gray", "black", "brown")[i % 3], linestyle=":", linewidth=1.2,
                        label=f"{label} = {value:.2f}")
    loss_ax.set_ylabel("cross-entropy (nats/token)")
    loss_ax.set_title(title)
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8, loc="upper right")
    lr_ax.plot(steps, lr, color="C2", linewidth=1.4)
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr_ax.set_ylim(bottom=0)
    lr_ax.grid(alpha=0.3)
    for i, (label, ratios) in enumerate(load_ratios.items()):
        load_ax.plot(steps, ratios, color=f"C{(i + 3) % 10}", alpha=0.3, linewidth=0.8)
        load_ax.plot(steps, _moving_average(ratios, smooth), color=f"C{(i + 3) % 10}", linewidth=1.6,
                     label=f"{label} (moving average of {smooth})")
    load_ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance")
    if ceiling:
        load_ax.axhline(ceiling, color="red", linestyle="--", linewidth=1, label=f"collapse: E/K = {ceiling:g}")
        load_ax.set_ylim(0.95, ceiling + 0.1)
    load_ax.set_ylabel("max / ideal expert load")
    load_ax.set_xlabel("optimizer step")
    load_ax.grid(alpha=0.3)
    load_ax.legend(fontsize=8, loc="best")
    return fig


def _moving_average(values, window: int):
    """Centred moving average along axis 0 (the window shrinks at the ends)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    half = max(0, window // 2)
    return np.stack([values[max(0, i - half): i + half + 1].mean(0) for i in range(len(values))])


def plot_routing_collapse(steps, counts, layer: int = -1, top_k: int | None = None,
                          title: str = "Routing collapse without balancing"):
    """Three panels from one run's per-step loads: (a) each expert's share of one layer's selections,
    stacked; (b) max/ideal load per layer; (c) dead experts (no token this step) per layer.

    steps: S optimizer steps; counts: (S, L, E) tokens_per_expert of every MoE layer at each step
    (the Trainer's `expert_counts` rows); layer: the layer of panel (a); top_k: K, to mark the
    collapse value E/K in panel (b).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    c = _as_array(counts)                                     # (S, L, E)
    steps = np.asarray(steps)
    n_layers, n_experts = c.shape[1], c.shape[2]
    layer = layer % n_layers
    fig, axes = plt.subplots(1, 3, figsize=(10.0, 4.0), constrained_layout=True)
    share = c[:, layer] / c[:, layer].sum(-1, keepdims=True)  # (S, E) fractions of the layer's N*K selections
    cmap = plt.get_cmap("tab10" if n_experts <= 10 else "tab20")
    axes[0].stackplot(steps, share.T, colors=[cmap(i % cmap.N) for i in range(n_experts)],
                      labels=[str(i) for i in range(n_experts)])
    for k in range(1, n_experts):                             # the fair shares k/E, faintly
        axes[0].axhline(k / n_experts, color="white", linewidth=0.4, alpha=0.6)
    axes[0].set_xlim(steps[0], steps[-1])
    axes[0].set_ylim(0, 1)
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("share of the layer's selections")
    axes[0].set_title(f"(a) who gets the tokens, MoE layer {layer}", fontsize=10)
    axes[0].legend(title="expert", fontsize=7, title_fontsize=7, ncol=min(n_experts, 8), loc="upper center",
                   bbox_to_anchor=(0.5, -0.18), columnspacing=0.8, handlelength=1.0, frameon=False)
    ratio = c.max(-1) / c.mean(-1)                            # (S, L)
    dead = (c == 0).sum(-1)                                   # (S, L)
    for i in range(n_layers):
        axes[1].plot(steps, ratio[:, i], color=f"C{i}", label=f"MoE layer {i}")
        axes[2].plot(steps, dead[:, i], color=f"C{i}", label=f"MoE layer {i}", drawstyle="steps-mid")
    axes[1].axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance")
    if top_k:
        axes[1].axhline(n_experts / top_k, color="gray", linestyle="--", linewidth=1,
                        label=f"collapse E/K = {n_experts / top_k:g}")
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel("max / ideal expert load (ratio)")
    axes[1].set_title("(b) the busiest expert", fontsize=10)
    axes[1].set_ylim(bottom=0.9)
    axes[1].legend(fontsize=7)
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("dead experts (count)")
    axes[2].set_title("(c) experts that got no token", fontsize=10)
    axes[2].set_ylim(-0.2, n_experts)
    axes[2].legend(fontsize=7)
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_bias_balancing(loads, biases, maxvio_by_gamma: dict | None = None, first: int | None = None,
                        title: str = "Aux-loss-free balancing on a fixed score distribution"):
    """The sign rule on a toy: (a) tokens per expert vs update step, with the ideal N*K/E dashed;
    (b) each expert's bias b_i; (c) optional, MaxVio vs step for several rates gamma (log y).

    loads: (S, E) tokens_per_expert before each update; biases: (S, E) the bias used at each step;
    maxvio_by_gamma: gamma -> S values of (max_i c_i - mean c) / mean c; first: show only the first
    `first` steps in panels (a) and (b) (panel (c) always shows all).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    loads, biases = _as_array(loads), _as_array(biases)
    n_steps, n_experts = loads.shape
    shown = min(first or n_steps, n_steps)
    ncols = 3 if maxvio_by_gamma else 2
    fig, axes = plt.subplots(1, ncols, figsize=(10.0, 3.8), constrained_layout=True)
    steps = np.arange(shown)
    for i in range(n_experts):
        axes[0].plot(steps, loads[:shown, i], color=f"C{i % 10}", linewidth=1.2, label=f"expert {i}")
        axes[1].plot(steps, biases[:shown, i], color=f"C{i % 10}", linewidth=1.2)
    axes[0].axhline(loads[0].mean(), color="black", linestyle="--", linewidth=1,
                    label=f"ideal N*K/E = {loads[0].mean():.0f}")
    axes[0].set_ylabel("tokens routed to the expert (count)")
    axes[0].set_title("(a) expert loads", fontsize=10)
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].axhline(0.0, color="black", linewidth=0.6)
    axes[1].set_ylabel("selection bias b_i (score units)")
    axes[1].set_title("(b) biases: b_i += gamma * sign(mean c - c_i)", fontsize=10)
    if maxvio_by_gamma:
        for j, (gamma, values) in enumerate(maxvio_by_gamma.items()):
            axes[2].plot(np.arange(len(values)), np.maximum(np.asarray(values, dtype=float), 1e-3),
                         color=f"C{j}", linewidth=0.9, label=f"gamma = {gamma:g}")
        axes[2].set_yscale("log")
        axes[2].set_ylabel("MaxVio = (max c - mean c) / mean c")
        axes[2].set_title("(c) speed vs. jitter of the rate gamma", fontsize=10)
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("bias update step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def _cell_label(value: float) -> str:
    return "0" if value == 0 else "<.1" if value < 0.05 else f"{value:.1f}"


def plot_expert_utilization(loads_by_run: dict, top_k: int | None = None,
                            title: str = "Expert utilization (load / ideal)"):
    """One heatmap per run, layer x expert, of each expert's load divided by the ideal N*K/E.

    loads_by_run: run name -> (L, E) token counts (e.g. summed over the last steps of a run);
    top_k: K, to pin the colour scale's top at the collapse value E/K (every token on the same K).
    White = perfectly balanced (1.0), red = overloaded, blue = starved, "0" = dead (no token at all).
    Up to two runs side by side, more in a grid of two columns.
    """
    import math

    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    runs = {name: _as_array(c) for name, c in loads_by_run.items()}
    n_layers, n_experts = next(iter(runs.values())).shape
    utils = {name: c / c.mean(-1, keepdims=True) for name, c in runs.items()}     # (L, E) load / ideal
    vmax = n_experts / top_k if top_k else max(float(u.max()) for u in utils.values())
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(vmax, 1.01))
    ncols = 1 if len(runs) == 1 else 2
    nrows = math.ceil(len(runs) / ncols)
    height = 1.3 + nrows * (0.36 * n_layers + 0.7)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10.0 if ncols == 2 else 6.4, height), constrained_layout=True,
                             squeeze=False)
    image = None
    for k, (name, util) in enumerate(utils.items()):
        ax = axes[k // ncols, k % ncols]
        image = ax.imshow(util, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
        if n_experts <= 16:
            for i in range(n_layers):
                for e in range(n_experts):
                    dark = util[i, e] < 0.3 or util[i, e] > 0.6 * norm.vmax
                    ax.text(e, i, _cell_label(util[i, e]), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        ax.set_yticks(range(n_layers), [f"L{i}" for i in range(n_layers)], fontsize=8)
        ax.set_xticks(range(n_experts), [str(e) for e in range(n_experts)], fontsize=7)
        ax.set_title(f"{name}: max/ideal {util.max():.2f}, {int((runs[name] == 0).sum())} dead", fontsize=9,
                     loc="left")
        if k % ncols == 0:
            ax.set_ylabel("MoE layer", fontsize=8)
        if k // ncols == nrows - 1:
            ax.set_xlabel("routed expert id", fontsize=8)
    for k in range(len(utils), nrows * ncols):                # an odd number of runs leaves one empty slot
        axes[k // ncols, k % ncols].axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="load / ideal (1 = balanced)", shrink=0.9)
    fig.suptitle(title)
    return fig


def plot_load_balance_over_steps(series: dict, top_k: int | None = None, n_experts: int | None = None,
                                 smooth: int = 5, title: str = "Expert load during training"):
    """max_i(c_i) / mean_i(c_i) against the optimizer step, one panel per MoE layer, one line per run.

    series: run name -> (steps, ratios) with ratios (S, L), the Trainer's `load_max_ratio` rows.
    A centred moving average over `smooth` steps is drawn over the faint raw values; with top_k and
    n_experts a dashed line marks full collapse, E/K (every token on the same K experts). At most
    four panels: the first and last layers and evenly spaced ones between.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    arrays = {name: (np.asarray(s), _as_array(r)) for name, (s, r) in series.items()}
    n_layers = next(iter(arrays.values()))[1].shape[1]
    ncols = min(n_layers, 4)
    shown = np.linspace(0, n_layers - 1, ncols).round().astype(int)
    fig, axes = plt.subplots(1, ncols, figsize=(10.0 if ncols > 1 else 6.4, 3.8), constrained_layout=True,
                             sharey=True, squeeze=False)
    for layer, ax in zip(shown, axes[0], strict=True):
        first = ax is axes[0, 0]
        for j, (name, (steps, ratios)) in enumerate(arrays.items()):
            ax.plot(steps, ratios[:, layer], color=f"C{j}", alpha=0.25, linewidth=0.8)
            ax.plot(steps, _moving_average(ratios[:, layer], smooth), color=f"C{j}", linewidth=1.8,
                    label=name if first else None)
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance" if first else None)
        if top_k and n_experts:
            ax.axhline(n_experts / top_k, color="gray", linestyle="--", linewidth=1,
                       label=f"collapse E/K = {n_experts / top_k:g}" if first else None)
        ax.set_xlabel("optimizer step")
        ax.set_title(f"MoE layer {layer}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("max / ideal expert load (ratio)")
    axes[0, 0].set_ylim(bottom=0.9)
    fig.legend(fontsize=8, loc="outside right center")
    fig.suptitle(title)
    return fig


# --- a training run's metrics.jsonl (python -m trainer plot RUN_DIR) ----------------------------------
def read_metrics(path) -> list[dict]:
    """The rows of a metrics.jsonl; a line cut short (a run still writing, or killed mid-line) is skipped."""
    import json

    rows = []
    for line in open(path, encoding="utf-8"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_run(rows: list[dict], title: str = "Training run"):
    """Four panels from the Trainer's metrics rows: train and validation cross-entropy, the learning rate,
    the gradient norm (before clipping), and max/ideal expert load for each MoE layer (1.0 = balanced)."""
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(2, 2, figsize=(11.0, 7.0), constrained_layout=True)
    (loss_ax, lr_ax), (grad_ax, load_ax) = axes
    loss_ax.plot(steps, [r["ce"] for r in train], color="C0", linewidth=1.2, label="train (batch ce)")
    if evals:
        loss_ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="C1", markersize=4,
                     label="validation")
    loss_ax.set_ylabel("cross-entropy (nats/token)")
    loss_ax.set_title("Loss")
    loss_ax.legend(fontsize=8)
    lr_ax.plot(steps, [r["lr"] for r in train], color="C2", linewidth=1.2)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("Learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr_ax.set_ylim(bottom=0)
    grad_ax.plot(steps, [r["grad_norm"] for r in train], color="C3", linewidth=1.0)
    grad_ax.set_ylabel("gradient norm (before clipping)")
    grad_ax.set_title("Gradient norm")
    grad_ax.set_ylim(bottom=0)
    n_moe = max((len(r.get("load_max_ratio", [])) for r in train), default=0)
    for layer in range(n_moe):
        points = [(r["step"], r["load_max_ratio"][layer]) for r in train if len(r.get("load_max_ratio", [])) > layer]
        load_ax.plot(*zip(*points, strict=True), color=f"C{layer % 10}", linewidth=1.0, label=f"MoE layer {layer}")
    if n_moe:
        load_ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance")
        load_ax.legend(fontsize=8)
    else:
        load_ax.text(0.5, 0.5, "no MoE layers in this run", ha="center", va="center", transform=load_ax.transAxes)
    load_ax.set_ylabel("max / ideal expert load (ratio)")
    load_ax.set_title("Expert load per MoE layer")
    for ax in axes.flat:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_run_dir(run_dir, out=None):
    """Draw RUN_DIR/metrics.jsonl into RUN_DIR/metrics.png (or `out`); returns the PNG's path.

    ValueError (one line, with the fix) when there is nothing to draw."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"no metrics.jsonl in {run_dir}: pass the --out directory of a train.py run "
                         "(default checkpoints)")
    rows = read_metrics(metrics)
    if not any(r.get("kind") == "train" for r in rows):
        raise ValueError(f"{metrics} has no training rows yet: wait for the first logged step")
    target = Path(out) if out else run_dir / "metrics.png"
    kind = target.suffix.lower().lstrip(".")
    formats = plt.figure().canvas.get_supported_filetypes()       # png, pdf, svg, ...: the suffix decides
    plt.close("all")
    if kind not in formats:
        raise ValueError(f"--out {target}: the suffix {target.suffix or '(none)'} names no image format; use "
                         f".png (or one of {', '.join('.' + k for k in sorted(formats))})")
    fig = plot_run(rows, title=f"Training run: {run_dir}")
    try:
        return atomic_write(target, lambda handle: fig.savefig(handle, format=kind, dpi=110))
    finally:
        plt.close(fig)


def plot_cli(argv: list[str] | None = None) -> int:
    """`python -m trainer plot RUN_DIR`: draw a finished or running run's metrics.jsonl into a PNG beside it."""
    import sys

    parser = CommandLine(prog="python -m trainer", description="Tools for a training run's output directory.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandLine)
    plot = commands.add_parser("plot", help="train/val loss, lr, grad norm and expert load per layer -> a PNG")
    plot.add_argument("run_dir", help="the --out directory of a train.py run (holds metrics.jsonl)")
    plot.add_argument("--out", metavar="PNG", type=path_arg,
                      help="where to write the figure (default RUN_DIR/metrics.png; .svg/.pdf also work)")
    args = parser.parse_args(argv)
    try:
        path = plot_run_dir(args.run_dir, args.out)
    except (OSError, ValueError) as err:
        print(f"python -m trainer plot: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
