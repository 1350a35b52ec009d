"""Plots for the chapter notebooks, tested once here instead of pasted into cells.

matplotlib is imported inside each function (it is only needed for plots), every function
returns the Figure so a notebook shows it and a test can inspect it, and every axis says what
it measures and in which unit.
"""

from __future__ import annotations


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
        labels = [f"{v / 1024:.1f}k" if v >= 1024 else f"{v}" for v in values]
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
    fig, axes = plt.subplots(1, ncols, figsize=(9.0 if ncols == 2 else 6.4, 4.2), constrained_layout=True,
                             gridspec_kw={"width_ratios": [3, 2]} if ncols == 2 else None, squeeze=False)
    ax = axes[0, 0]
    masked = np.ma.masked_equal(g, 0.0)                       # unselected experts stay white
    image = ax.imshow(masked, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(g.max()), 1e-9),
                      interpolation="nearest")
    ax.set_xticks(range(n_experts))
    ax.set_xlabel("routed expert id")
    if token_labels is not None:
        ax.set_yticks(range(n_tokens), [repr(t)[1:-1] for t in token_labels], fontsize=7)
        ax.set_ylabel("token")
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
                         ylabel: str = "final validation loss (nats/token)"):
    """Every seed's loss as a dot and the mean as a bar, one column per run: the seed spread in view.

    losses: run name -> list of per-seed losses (from the ablation records).
    """
    fig, ax = _figure(width=max(6.4, 0.9 * len(losses) + 2.5), height=3.8)
    names = list(losses)
    for i, name in enumerate(names):
        values = [v for v in losses[name] if v is not None]
        if not values:
            continue
        mean = sum(values) / len(values)
        ax.hlines(mean, i - 0.3, i + 0.3, color=f"C{i % 10}", linewidth=2.5,
                  label="mean over seeds" if i == 0 else None)
        ax.plot([i] * len(values), values, "o", color=f"C{i % 10}", markerfacecolor="none", markersize=6,
                label="one seed" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=20 if max(map(len, names), default=0) > 8 else 0,
                  ha="right" if max(map(len, names), default=0) > 8 else "center", fontsize=8)
    ax.set_xlabel("run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _short_count(x: float) -> str:
    """1234 -> '1,234', 126560 -> '126.6K', 2.5e6 -> '2.50M' (tick labels that still tell runs apart)."""
    return f"{x:,.0f}" if x < 1e4 else f"{x / 1e3:.1f}K" if x < 1e6 else f"{x / 1e6:.2f}M"


def plot_loss_vs_cost(points: list[dict], xlabel: str, title: str = "Validation loss vs cost",
                      ylabel: str = "final validation loss (nats/token)", logx: bool = True):
    """One marker per run at (cost, mean loss) with the seed std as an error bar; a legend names runs.

    points: dicts with 'label', 'x' (e.g. KV-cache bytes per token), 'y' (mean loss), 'yerr' (std).
    """
    fig, ax = _figure(width=7.2, height=4.0)
    markers = "osD^vP*Xhp"
    for i, p in enumerate(points):
        ax.errorbar(p["x"], p["y"], yerr=p.get("yerr") or 0.0, fmt=markers[i % len(markers)], color=f"C{i % 10}",
                    capsize=3, markersize=7, label=p["label"])
    xs = sorted({p["x"] for p in points})
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


def plot_expert_load_over_time(series: dict, title: str = "Expert load over training", smooth: int = 5):
    """max_i(c_i) / mean_i(c_i) against training tokens, one line per run (1.0 = perfectly balanced).

    series: run name -> (tokens, ratios). A centred moving average over `smooth` points tames the
    step-to-step noise of one batch's counts; the raw values are drawn faintly behind it.
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
    ax.set_xlabel("training tokens")
    ax.set_ylabel("max / ideal expert load (ratio)")
    ax.set_title(title)
    ax.set_ylim(bottom=0.9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_expert_load_final(bars: list[dict], title: str = "Final expert load per run"):
    """Bar per run: the final max/ideal load (seed mean, std as error bar); the dotted line is balance.

    bars: dicts with 'label', 'y' and optionally 'yerr'.
    """
    fig, ax = _figure(width=max(6.4, 0.9 * len(bars) + 2.5), height=3.8)
    labels = [b["label"] for b in bars]
    ax.bar(range(len(bars)), [b["y"] for b in bars], yerr=[b.get("yerr") or 0.0 for b in bars], capsize=3,
           color=[f"C{i % 10}" for i in range(len(bars))])
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="perfect balance")
    long = max(map(len, labels), default=0) > 8
    ax.set_xticks(range(len(bars)), labels, rotation=20 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_xlabel("run")
    ax.set_ylabel("max / ideal expert load (ratio)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
