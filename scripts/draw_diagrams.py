"""Draw the project's schematic figures (matplotlib only: boxes, arrows, text) into docs/figures/.

    python scripts/draw_diagrams.py                 # writes docs/figures/*.png
    python scripts/draw_diagrams.py --out /tmp/figs

Figures (names and shapes as in components/, symbols as in docs/maths.md):
    model_block_diagram.png   embedding -> N pre-norm blocks (MLA + dense/MoE FFN) -> RMSNorm -> tied head
    mla_data_flow.png         Multi-Head Latent Attention, DeepSeek-V2 eqs 9-19, cached tensors marked
    absorption_regrouping.png naive vs absorbed decoding (W_UK into the query, W_O W_UV merged), with costs
    moe_routing.png           DeepSeekMoE: sigmoid affinities, selection-only bias, top-K, shared experts
    balancing_loops.png       chapter 5: the auxiliary loss and the bias sign rule, from the counts back to the router
    sampling_pipeline.png     chapter 7: process_logits in order, then the draw, fed back
    cache_budget.png          chapter 7: cached tokens over one generation (prefill, growth, window), bytes/token
    ablation_grid.png         chapter 8: variants x seeds -> records -> mean, SE, verdict

One colour per kind of thing, the same in every figure (see COLORS): cached tensors, learned weights,
activations, parameter-free operations. Every figure is drawn on a canvas whose units are 0.1 inch, so
that coordinates read as positions on the page. After drawing, `layout_problems` measures the rendered
text and reports text that overlaps other text, leaves the page, spills out of its box, covers another
box or is crossed by an arrow or frame; the script still writes the figure (so it can be looked at),
prints the problems and exits with status 1 (tests/test_diagrams.py runs it). Output is deterministic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "figures"
DPI = 150
UNITS_PER_INCH = 10                       # canvas coordinates: 1 unit = 0.1 inch

# kind -> (face colour, edge colour, legend text)
COLORS = {
    "cached": ("#fdd0a2", "#d94801", "cached at inference (KV cache)"),
    "learned": ("#c6dbef", "#2171b5", "learned weights (matrices, norms, experts)"),
    "activation": ("#d9f0d3", "#238b45", "activations (computed, not kept)"),
    "op": ("#f0f0f0", "#636363", "parameter-free operation"),
    "buffer": ("#fff3b0", "#b8860b", "buffer updated by a rule, no gradient"),
    "idle": ("#ffffff", "#a0a0a0", "not selected for this token"),
}
TEXT = "#202020"
ARROW = "#404040"
SIZE = {"title": 14, "main": 10, "sub": 7.5, "note": 8, "caption": 7.5}


# ----------------------------------------------------------------------------------------------
# drawing helpers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    """A drawn box: centre (x, y), size (w, h), in canvas units; sides give arrow anchor points."""
    x: float
    y: float
    w: float
    h: float
    patch: FancyBboxPatch | Circle | None = field(default=None, compare=False, repr=False)

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)

    def at(self, side: str, offset: float) -> tuple[float, float]:
        """A point on `side` ('left', 'right', 'top', 'bottom') moved by `offset` along it."""
        px, py = getattr(self, side)
        return (px, py + offset) if side in ("left", "right") else (px + offset, py)


class Canvas:
    """A white figure whose axes fill it, in units of 0.1 inch; keeps track of text-in-box pairs."""

    def __init__(self, width: float, height: float, title: str) -> None:
        self.width, self.height = width, height
        # drawn at the dpi it is saved with: text extents (hinting) differ between resolutions
        self.fig = plt.figure(figsize=(width / UNITS_PER_INCH, height / UNITS_PER_INCH), dpi=DPI, facecolor="white")
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.axis("off")
        self.contained: list[tuple[plt.Text, FancyBboxPatch | Circle]] = []   # (label, the box it labels)
        self.boxes: list[FancyBboxPatch | Circle] = []
        self.lines: list[list[tuple[float, float]]] = []                      # arrows, as polylines
        self.text(width / 2, height - 2.5, title, size=SIZE["title"], weight="bold")

    # -- primitives ----------------------------------------------------------------------------
    def text(self, x: float, y: float, s: str, size: float = SIZE["note"], ha: str = "center",
             va: str = "center", color: str = TEXT, **kw) -> plt.Text:
        return self.ax.text(x, y, s, fontsize=size, ha=ha, va=va, color=color, zorder=5, **kw)

    def box(self, x: float, y: float, w: float, h: float, label: str, kind: str, sub: str | None = None,
            size: float = SIZE["main"], sub_size: float = SIZE["sub"], dashed: bool = False,
            rotation: float = 0) -> Box:
        """A rounded box of colour `kind` with a main label and an optional smaller second label."""
        face, edge, _ = COLORS[kind]
        lw = 2.0 if kind == "cached" else 1.2
        style = "--" if dashed or kind == "idle" else "-"
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.8",
                               facecolor=face, edgecolor=edge, linewidth=lw, linestyle=style, zorder=3)
        self.ax.add_patch(patch)
        self.boxes.append(patch)
        if sub is None:
            texts = [self.text(x, y, label, size=size, rotation=rotation)]
        elif rotation:
            texts = [self.text(x - 0.9, y, label, size=size, rotation=rotation),
                     self.text(x + 1.3, y, sub, size=sub_size, rotation=rotation, color="#404040")]
        else:
            texts = [self.text(x, y + h * 0.17, label, size=size),
                     self.text(x, y - h * 0.24, sub, size=sub_size, color="#404040")]
        self.contained += [(t, patch) for t in texts]
        return Box(x, y, w, h, patch)

    def inside(self, box: Box, x: float, y: float, s: str, **kw) -> plt.Text:
        """More text inside an existing box (checked to stay inside it)."""
        t = self.text(x, y, s, **kw)
        self.contained.append((t, box.patch))
        return t

    def op(self, x: float, y: float, symbol: str = "+", r: float = 1.5) -> Box:
        """A small circle for a parameter-free combination (residual add, sum)."""
        face, edge, _ = COLORS["op"]
        circle = Circle((x, y), r, facecolor=face, edgecolor=edge, linewidth=1.2, zorder=3)
        self.ax.add_patch(circle)
        self.boxes.append(circle)
        self.contained.append((self.text(x, y, symbol, size=11, weight="bold"), circle))
        return Box(x, y, 2 * r, 2 * r, circle)

    def arrow(self, *points: tuple[float, float], color: str = ARROW, lw: float = 1.2, dashed: bool = False,
              head: bool = True) -> None:
        """A polyline through `points` with an arrow head at the last one."""
        self.lines.append(list(points))
        path = MplPath(list(points))
        patch = FancyArrowPatch(path=path, arrowstyle="-|>" if head else "-", mutation_scale=11, color=color,
                                linewidth=lw, linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0, zorder=2,
                                joinstyle="miter", capstyle="butt")
        self.ax.add_patch(patch)

    def frame(self, x0: float, y0: float, w: float, h: float, color: str = "#808080", dashed: bool = True,
              face: str = "none", lw: float = 1.0, zorder: float = 1) -> None:
        self.lines.append([(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h), (x0, y0)])
        self.ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle="round,pad=0,rounding_size=1.2", facecolor=face,
                                         edgecolor=color, linewidth=lw, linestyle="--" if dashed else "-",
                                         zorder=zorder))

    def legend(self, x: float, y: float, kinds: list[str], step: float | None = None, dy: float = 0) -> None:
        """Colour swatches with their meaning from (x, y): a row (`step` apart, or packed), or a column `dy` apart."""
        for kind in kinds:
            face, edge, meaning = COLORS[kind]
            self.ax.add_patch(Rectangle((x, y - 1.0), 2.6, 2.0, facecolor=face, edgecolor=edge,
                                        linewidth=2.0 if kind == "cached" else 1.0,
                                        linestyle="--" if kind == "idle" else "-", zorder=3))
            label = self.text(x + 3.4, y, meaning, size=SIZE["caption"], ha="left")
            if dy:
                y -= dy
            elif step is None:
                extent = label.get_window_extent(renderer=self.fig.canvas.get_renderer())
                bbox = extent.transformed(self.ax.transData.inverted())
                x = bbox.x1 + 2.5
            else:
                x += step

    def save(self, path: Path) -> list[str]:
        """Write the PNG; return the layout problems found (written anyway, so that they can be seen)."""
        problems = layout_problems(self)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fig.savefig(path, dpi=DPI, facecolor="white", metadata={"Software": None})
        plt.close(self.fig)
        return problems


def layout_problems(canvas: Canvas) -> list[str]:
    """Texts that overlap each other, leave the page, spill out of the box they label, cover another box,
    or are crossed by an arrow. Measured on the rendered figure, in pixels."""
    fig, ax = canvas.fig, canvas.ax
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    texts = [t for t in ax.texts if t.get_text().strip()]
    extents = [t.get_window_extent(renderer) for t in texts]
    owner = {id(t): patch for t, patch in canvas.contained}
    box_extents = [(patch, patch.get_window_extent(renderer)) for patch in canvas.boxes]
    to_pixels = ax.transData.transform
    problems = []
    for i, (t, b) in enumerate(zip(texts, extents, strict=True)):
        name = repr(t.get_text()[:60])
        if b.x0 < page.x0 or b.y0 < page.y0 or b.x1 > page.x1 or b.y1 > page.y1:
            problems.append(f"off the page: {name}")
        for t2, b2 in zip(texts[i + 1:], extents[i + 1:], strict=True):
            if b.overlaps(b2):
                problems.append(f"overlap: {name} and {t2.get_text()[:60]!r}")
        mine = owner.get(id(t))
        if mine is not None:
            p = mine.get_window_extent(renderer)
            if b.x0 < p.x0 - 1 or b.x1 > p.x1 + 1 or b.y0 < p.y0 - 1 or b.y1 > p.y1 + 1:
                problems.append(f"spills out of its box: {name}")
        for patch, p in box_extents:
            if patch is not mine and b.overlaps(p):
                problems.append(f"covers another box: {name}")
        for line in canvas.lines:
            pts = to_pixels(line)
            for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:], strict=True):
                n = max(2, int(abs(xb - xa) + abs(yb - ya)) // 2)
                if any(b.x0 + 1 < xa + (xb - xa) * k / n < b.x1 - 1 and b.y0 + 1 < ya + (yb - ya) * k / n < b.y1 - 1
                       for k in range(n + 1)):
                    problems.append(f"an arrow crosses: {name}")
                    break
    return problems


# ----------------------------------------------------------------------------------------------
# 1. the whole model
# ----------------------------------------------------------------------------------------------
def draw_model_block_diagram(path: Path) -> list[str]:
    c = Canvas(100, 80, "The whole model: token ids → embedding → N pre-norm blocks → RMSNorm → tied head")

    # input: token ids and the embedding table, no position embedding
    ids = c.box(12, 70, 16, 5.5, "token ids", "activation", sub="idx  (B, T)")
    emb = c.box(12, 61, 16, 5.5, "Embedding  E", "learned", sub="embed: (V, d) table")
    c.arrow(ids.bottom, emb.top)
    c.text(22, 61, "no position embedding: positions enter only\nthrough RoPE inside MLA (decoupled RoPE)",
           ha="left")
    c.legend(64, 72, ["cached", "learned", "activation", "op"], dy=3)

    # the block, drawn with two shadows behind it for "x N"
    x0, y0, w, h = 4, 22, 92, 33
    for k in (2, 1):
        c.frame(x0 + 0.8 * k, y0 - 0.8 * k, w, h, color="#b0b0b0", dashed=False, face="white", zorder=0.5)
    c.frame(x0, y0, w, h, color="#606060", dashed=False, face="#fbfbfb", lw=1.4, zorder=0.6)
    c.text(6, 30, "block ℓ = 0 … N−1\n× N = n_layers\n(TransformerBlock,\npre-norm)", ha="left", size=8.5)

    y = 43
    c.arrow(emb.bottom, (12, y))
    c.ax.plot([12], [y], "o", color=ARROW, markersize=4, zorder=4)
    c.text(10.8, y + 1.6, "x", size=9, ha="right", style="italic")
    attn_norm = c.box(22, y, 10, 6, "RMSNorm", "learned", sub="attn_norm")
    mla = c.box(36, y, 11, 6, "MLA", "learned", sub="attn")
    add1 = c.op(47, y)
    ffn_norm = c.box(57.5, y, 10, 6, "RMSNorm", "learned", sub="ffn_norm")
    ffn = c.box(72, y, 12, 6, "FFN", "learned", sub="ffn")
    add2 = c.op(84, y)
    c.arrow((12, y), attn_norm.left)
    c.arrow(attn_norm.right, mla.left)
    c.arrow(mla.right, add1.left)
    c.arrow(add1.right, ffn_norm.left)
    c.arrow(ffn_norm.right, ffn.left)
    c.arrow(ffn.right, add2.left)
    # residual connections above the chain
    c.arrow((12, y), (12, 50), (47, 50), add1.top)
    c.arrow((50.5, y), (50.5, 50), (84, 50), add2.top)
    c.ax.plot([50.5], [y], "o", color=ARROW, markersize=4, zorder=4)
    c.text(29, 51.3, "residual: x + MLA(RMSNorm(x))", size=SIZE["sub"])
    c.text(67, 51.3, "residual: x + FFN(RMSNorm(x))", size=SIZE["sub"])

    # what MLA caches, and which FFN a layer has
    cache = c.box(33, 30, 22, 7, "KV cache, per layer", "cached", sub="c_KV (B, S, d_c)  +  k_R (B, S, d_R)")
    c.arrow(mla.bottom, cache.top, dashed=True)
    dense = c.box(63, 30, 16, 7, "dense SwiGLU", "learned", sub="ℓ < n_dense_layers: Expert")
    moe = c.box(81.5, 30, 17, 7, "DeepSeekMoE", "learned", sub="ℓ ≥ n_dense_layers: MoE")
    c.arrow(ffn.bottom, (72, 37), (63, 37), dense.top)
    c.arrow((72, 37), (81.5, 37), moe.top)
    c.text(72, 24.7, "one or the other, fixed per layer (see moe_routing.png)", size=SIZE["sub"])

    # output: final norm, head tied to the embedding, logits (right to left)
    y_out = 14
    norm = c.box(84, y_out, 12, 5.5, "RMSNorm", "learned", sub="norm")
    head = c.box(62, y_out, 18, 5.5, "head  (logits = E x)", "learned", sub="head.weight is embed.weight")
    logits = c.box(38, y_out, 16, 5.5, "logits", "activation", sub="(B, T, V)")
    c.arrow(add2.right, (92, y), (92, y_out), norm.right)
    c.text(90.8, 18.6, "after the last block", ha="right", size=SIZE["sub"])
    c.arrow(norm.left, head.right)
    c.arrow(head.left, logits.right)
    # the tie: one (V, d) matrix read in (embedding) and written out (head)
    c.arrow(emb.left, (2, 61), (2, 7), (62, 7), head.bottom, dashed=True, color=COLORS["learned"][1])
    c.text(25, 8.3, "tied weights (tie_embeddings=True): one (V, d) matrix", size=SIZE["sub"],
           color=COLORS["learned"][1])

    c.text(50, 2.8, "Decoding keeps, per layer and token, only c_KV (d_c numbers) and the shared RoPE key k_R "
           "(d_R numbers):\nDEFAULT preset 128 + 32 = 160 numbers, vs 2·H·d_h = 1,024 for MHA "
           "(docs/maths.md §1.5, §1.7; DeepSeek-V2 Table 1).", size=SIZE["caption"])
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 2. MLA data flow
# ----------------------------------------------------------------------------------------------
def draw_mla_data_flow(path: Path) -> list[str]:
    c = Canvas(100, 90, "Multi-Head Latent Attention (MLA): data flow of one layer")
    c.text(50, 81.5, "drawn with query compression (q_latent_dim set, as in V2 and V3); "
           "without it (q_latent_dim=None,\nas in V2-Lite) one W_Q (w_q) replaces W_DQ, q_norm and W_UQ, "
           "and W_QR reads h_t", size=SIZE["note"], style="italic")
    rows = {"qC": 74, "qR": 65, "kR": 55, "kC": 46, "ckv": 37, "v": 28}
    x1, x2, x3, x4, x5 = 15.5, 27.5, 40.5, 57, 70

    h = c.box(4.5, 51, 5, 52, r"$h_t$  (B, T, d)", "activation", sub="attention input = attn_norm(x)",
              rotation=90)

    # queries (eqs 12-14)
    w_dq = c.box(x1, rows["qC"], 9, 5.5, r"$W^{DQ}$", "learned", sub="w_dq")
    q_norm = c.box(x2, rows["qC"], 9, 5.5, "RMSNorm", "learned", sub="q_norm")
    c_q = c.box(x3, rows["qC"], 10, 5.5, r"$c^Q_t$", "activation", sub="(d_c')  eq 12")
    w_uq = c.box(x4, rows["qC"], 9, 5.5, r"$W^{UQ}$", "learned", sub="w_uq")
    q_c = c.box(x5, rows["qC"], 10, 5.5, r"$q^C_t$", "activation", sub="(H, d_h)  eq 13")
    w_qr = c.box(49, rows["qR"], 8, 5.5, r"$W^{QR}$", "learned", sub="w_qr")
    rope_q = c.box(x4 + 2, rows["qR"], 7, 5.5, "RoPE", "op", sub="pos t")
    q_r = c.box(x5, rows["qR"], 10, 5.5, r"$q^R_t$", "activation", sub="(H, d_R)  eq 14")
    c.arrow(h.at("right", rows["qC"] - h.y), w_dq.left)
    for a, b in ((w_dq, q_norm), (q_norm, c_q), (c_q, w_uq), (w_uq, q_c), (w_qr, rope_q), (rope_q, q_r)):
        c.arrow(a.right, b.left)
    c.arrow(c_q.bottom, (x3, rows["qR"]), w_qr.left)

    # the shared RoPE key (eq 15) and the latent (eq 9): the two cached tensors
    w_kr = c.box(x1, rows["kR"], 9, 5.5, r"$W^{KR}$", "learned", sub="w_kr")
    rope_k = c.box(x2, rows["kR"], 9, 5.5, "RoPE", "op", sub="pos t")
    k_r = c.box(x3, rows["kR"], 12.5, 6.5, r"$k^R_t$  cached", "cached", sub="(d_R), all heads")
    w_dkv = c.box(x1, rows["ckv"], 9, 5.5, r"$W^{DKV}$", "learned", sub="w_dkv")
    kv_norm = c.box(x2, rows["ckv"], 9, 5.5, "RMSNorm", "learned", sub="kv_norm")
    c_kv = c.box(x3, rows["ckv"], 12.5, 6.5, r"$c^{KV}_t$  cached", "cached", sub="(d_c)  eq 9")
    c.arrow(h.at("right", rows["kR"] - h.y), w_kr.left)
    c.arrow(h.at("right", rows["ckv"] - h.y), w_dkv.left)
    for a, b in ((w_kr, rope_k), (rope_k, k_r), (w_dkv, kv_norm), (kv_norm, c_kv)):
        c.arrow(a.right, b.left)
    c.frame(x3 - 7.5, rows["ckv"] - 5, 15, rows["kR"] - rows["ckv"] + 10, color=COLORS["cached"][1])
    c.text(x3, rows["ckv"] - 6.3, "LayerCache: S tokens", size=SIZE["sub"], color=COLORS["cached"][1])

    # keys and values decompressed per head (eqs 10-11): never cached
    w_uk = c.box(x4, rows["kC"], 9, 5.5, r"$W^{UK}$", "learned", sub="w_uk")
    w_uv = c.box(x4, rows["v"], 9, 5.5, r"$W^{UV}$", "learned", sub="w_uv")
    k_c = c.box(x5, rows["kC"], 10, 5.5, r"$k^C_s$", "activation", sub="(S, H, d_h)  eq 10")
    v = c.box(x5, rows["v"], 10, 5.5, r"$v_s$", "activation", sub="(S, H, d_v)  eq 11")
    split = 49.5
    c.ax.plot([split], [rows["ckv"]], "o", color=ARROW, markersize=4, zorder=4)
    c.arrow(c_kv.right, (split, rows["ckv"]), (split, rows["kC"]), w_uk.left)
    c.arrow((split, rows["ckv"]), (split, rows["v"]), w_uv.left)
    c.arrow(w_uk.right, k_c.left)
    c.arrow(w_uv.right, v.left)

    # attention (eqs 16-18) and the output projection (eq 19)
    xs, ws = 88.5, 21
    top, bottom = rows["qC"] + 3.5, rows["kC"] - 3.5
    mid = (top + bottom) / 2
    scores = c.box(xs, mid, ws, top - bottom, "", "op")
    c.inside(scores, xs, mid + 8, "scores, per head i", size=SIZE["main"])
    c.inside(scores, xs, mid, r"$\frac{q^C_{t,i}\cdot k^C_{s,i} \;+\; q^R_{t,i}\cdot k^R_s}{\sqrt{d_h + d_R}}$",
             size=13)
    c.inside(scores, xs, mid - 8, "= [q_C; q_R]·[k_C; k_R]: q and k are\n"
             "concatenated per head (eqs 16-17),\nso the score is the SUM of two dots", size=SIZE["sub"])
    for src, yy in ((q_c, rows["qC"]), (q_r, rows["qR"]), (k_c, rows["kC"])):
        c.arrow(src.right, (xs - ws / 2, yy))
    c.arrow(k_r.right, (xs - ws / 2, rows["kR"]))
    softmax = c.box(xs, rows["ckv"], ws, 5, "causal softmax over s ≤ t  →  p_s", "op", size=8.5)
    weighted = c.box(xs, rows["v"], ws, 5.5, r"$o_{t,i} = \sum_s p_{s}\, v_{s,i}$", "op", sub="eq 18")
    w_o = c.box(xs, 18.5, ws, 5.5, r"concat heads, $W^O$", "learned", sub="w_o  (d, H·d_v)  eq 19")
    u = c.box(xs, 9.5, 14, 5, r"$u_t$  (B, T, d)", "activation")
    c.arrow(scores.bottom, softmax.top)
    c.arrow(softmax.bottom, weighted.top)
    c.arrow(v.right, weighted.left)
    c.arrow(weighted.bottom, w_o.top)
    c.arrow(w_o.bottom, u.top)

    c.legend(2, 19, ["cached", "learned"], step=34)
    c.legend(2, 15.5, ["activation", "op"], step=34)
    c.text(2, 9.5, "Shapes: H = n_heads, d_h = qk_nope_head_dim, d_R = rope_head_dim, d_v = v_head_dim,\n"
           "d_c = kv_latent_dim, d_c' = q_latent_dim; t = new token, s ≤ t = cached tokens (S of them).\n"
           "Only c_KV and k_R are cached: d_c + d_R numbers per token and layer.",
           size=SIZE["caption"], ha="left")
    c.text(2, 3, "DeepSeek-V2 §2.1.2-2.1.3, eqs 9-19; code: components/multi_head_latent_attention.py",
           size=SIZE["caption"], ha="left", style="italic")
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 3. the absorption trick
# ----------------------------------------------------------------------------------------------
def decode_step_flops(S: int, d: int, H: int, C: int, R: int, D: int, V: int, Q: int) -> tuple[int, int]:
    """FLOPs (a multiply-add counts 2) of one MLA decode step and layer over S cached tokens: (naive, absorbed).

    Every term of chapter 3's table: queries, the new cache entry, keys, values, scores, weighted sum, W_O.
    d model width, H heads, C latent, R RoPE dim, D nope head dim, V value head dim, Q query latent.
    """
    same_in_both = 2 * d * Q + 2 * Q * H * (D + R) + 2 * d * (C + R) + 2 * d * H * V
    naive = same_in_both + 2 * S * C * H * D + 2 * S * C * H * V + 2 * S * H * (D + R) + 2 * S * H * V
    absorbed = same_in_both + 2 * H * D * C + 2 * S * H * (C + R) + 2 * S * H * C + 2 * H * C * V
    return naive, absorbed


def draw_absorption_regrouping(path: Path) -> list[str]:
    c = Canvas(100, 92, "The absorption trick: score the query against the cached latents")
    c.text(50, 85.5, r"key side:   $q^{C\top}\,(W^{UK} c^{KV}_s) \;=\; (W^{UK\top} q^C)^{\top}\, c^{KV}_s$"
           r"          value side:   $W^O \sum_s p_s\, W^{UV} c^{KV}_s \;=\; (W^O W^{UV}) \sum_s p_s\, c^{KV}_s$",
           size=10.5)
    c.text(50, 80.5, "one new token attends to S cached tokens; H = n_heads, d_h = qk_nope_head_dim, "
           "d_v = v_head_dim, d_c = kv_latent_dim;\nthe RoPE part q_R·k_R (not drawn) is added to the scores "
           "unchanged in both paths", size=SIZE["caption"])

    def panel(top: float, title: str) -> dict[str, float]:
        c.frame(2, top - 33, 96, 33, color="#909090")
        c.text(4, top - 2.5, title, ha="left", size=9.5, weight="bold")
        return {"q": top - 8.5, "k": top - 15.5, "v": top - 23, "cost": top - 29.3}

    # naive: rebuild k_C and v for every cached token, then ordinary attention
    r = panel(76.5, "Naive path (training; MultiHeadLatentAttention._naive): up-project every cached latent, "
                  "every step")
    cache = c.box(10, (r["k"] + r["v"]) / 2, 13, r["k"] - r["v"] + 6, "cache  " + r"$c^{KV}$", "cached",
                  sub="(S, d_c)  cached")
    w_uk = c.box(27, r["k"], 11, 6, r"$W^{UK}$", "learned", sub="(H·d_h, d_c)")
    k_c = c.box(44, r["k"], 14, 6, r"$k^C$  (S, H, d_h)", "activation", sub="rebuilt every step", size=9)
    q_c = c.box(44, r["q"], 14, 5.5, r"$q^C$  (H, d_h)", "activation", size=9)
    score = c.box(61, (r["q"] + r["k"]) / 2, 12, r["q"] - r["k"] + 6, r"$q^C\cdot k^C_s$", "op",
                  sub="(H, S)  S·H·d_h")
    p = c.box(78, (r["q"] + r["k"]) / 2, 13, 6, "softmax", "op", sub="p  (H, S)")
    w_uv = c.box(27, r["v"], 11, 6, r"$W^{UV}$", "learned", sub="(H·d_v, d_c)")
    v = c.box(44, r["v"], 14, 6, r"$v$  (S, H, d_v)", "activation", sub="rebuilt every step", size=9)
    mix = c.box(78, r["v"], 13, 6, r"$\sum_s p_s v_s$", "op", sub="(H, d_v)")
    w_o = c.box(92, r["v"], 8.5, 6, r"$W^O$", "learned", sub="→ u (d)")
    c.arrow(cache.at("right", r["k"] - cache.y), w_uk.left)
    c.arrow(cache.at("right", r["v"] - cache.y), w_uv.left)
    c.arrow(w_uk.right, k_c.left)
    c.arrow(w_uv.right, v.left)
    c.arrow(k_c.right, score.at("left", r["k"] - score.y))
    c.arrow(q_c.right, score.at("left", r["q"] - score.y))
    c.arrow(score.right, p.left)
    c.arrow(p.bottom, mix.top)
    c.arrow(v.right, mix.left)
    c.arrow(mix.right, w_o.left)
    c.text(4, r["cost"], "cost per step, key side: S·d_c·H·d_h multiply-adds to rebuild k_C = O(S·d_c·H·d_h) "
           "(as much again for v), then S·H·d_h for the scores;\nevery cached token is expanded from d_c numbers "
           "to H·(d_h + d_v) again at every step", ha="left", size=SIZE["caption"], color="#a50f15")

    # absorbed: W_UK into the query, attend in latent space, W_O W_UV after
    r = panel(40.5, "Absorbed path (decoding; MultiHeadLatentAttention._absorbed): project the query once, "
                  "read the cache as is")
    q_c = c.box(10, r["q"], 13, 5.5, r"$q^C$  (H, d_h)", "activation", size=9)
    w_ukt = c.box(27, r["q"], 11, 6, r"$W^{UK\top}$ per head", "learned", sub="(H, d_h, d_c)", size=9)
    q_lat = c.box(44, r["q"], 14, 6, r"$q_{lat}$  (H, d_c)", "activation", sub="once per step", size=9)
    cache = c.box(44, (r["k"] + r["v"]) / 2, 14, r["k"] - r["v"] + 6, "cache  " + r"$c^{KV}$", "cached",
                  sub="(S, d_c)  read as is")
    score = c.box(61, (r["q"] + r["k"]) / 2, 12, r["q"] - r["k"] + 6, r"$q_{lat}\cdot c^{KV}_s$", "op",
                  sub="(H, S)  S·H·d_c")
    p = c.box(78, (r["q"] + r["k"]) / 2, 13, 6, "softmax", "op", sub="p  (H, S)")
    mix = c.box(78, r["v"], 13, 6, r"$\sum_s p_s c^{KV}_s$", "op", sub="(H, d_c)")
    w_ouv = c.box(92, r["v"], 8.5, 6, r"$W^O W^{UV}$", "learned", sub="→ u (d)", size=9)
    c.arrow(q_c.right, w_ukt.left)
    c.arrow(w_ukt.right, q_lat.left)
    c.arrow(q_lat.right, score.at("left", r["q"] - score.y))
    c.arrow(cache.at("right", r["k"] - cache.y), score.at("left", r["k"] - score.y))
    c.arrow(cache.at("right", r["v"] - cache.y), mix.left)
    c.arrow(score.right, p.left)
    c.arrow(p.bottom, mix.top)
    c.arrow(mix.right, w_ouv.left)
    c.text(4, (r["k"] + r["v"]) / 2, "no k_C, no v:\nthe per-head keys and\nvalues of the S cached\n"
           "tokens never exist", ha="left", size=SIZE["note"])
    c.text(4, r["cost"], "cost per step, key side: H·d_h·d_c once (the query) + S·H·d_c (the scores) "
           "= O(H·d_h·d_c + S·H·d_c);\nthe term that grows with S is d_h times smaller than the naive path's",
           ha="left", size=SIZE["caption"], color="#006d2c")

    naive, absorbed = decode_step_flops(S=4096, d=7168, H=128, C=512, R=64, D=128, V=128, Q=1536)
    c.legend(2, 1.6, ["cached", "learned", "activation", "op"])
    c.text(2, 4.9, f"e.g. DeepSeek-V3 sizes at S=4096, one layer's whole decode step (as chapter 3's table counts it): "
           f"naive {naive / 1e9:.1f} vs absorbed {absorbed / 1e9:.2f} GFLOP ({naive / absorbed:.1f}x).\n"
           "DeepSeek-V2 §2.1.2: \"W_UK can be absorbed into W_Q, and W_UV into W_O\"; ours applies them per call "
           "with einsums (docs/maths.md §1.6).", ha="left", size=SIZE["caption"], style="italic")
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 4. DeepSeekMoE routing
# ----------------------------------------------------------------------------------------------
def draw_moe_routing(path: Path) -> list[str]:
    c = Canvas(100, 84, "DeepSeekMoE: routing one token to K of N_r experts, plus shared experts")
    c.text(50, 76, r"$h'_t = u_t + \sum_{i=1}^{N_s} FFN^{(s)}_i(u_t) + \sum_{i=1}^{N_r} g_{i,t}\,FFN^{(r)}_i(u_t)$"
           r"     ($g_{i,t} = 0$ outside TopK;  V3 eq 12)", size=10)
    u = c.box(6, 42, 8, 46, r"$u_t$  (d)", "activation", sub="FFN input = ffn_norm(x_t)", rotation=90)

    # the router: affinities, selection key with the bias, top-K, weights from the unbiased scores
    y_r = 61
    gate = c.box(20, y_r, 13, 6.5, r"$u_t\cdot e_i$", "learned", sub="router.gate: e_i (N_r, d)")
    score = c.box(38, y_r, 17, 6.5, r"$s_{i,t} = \sigma(u_t\cdot e_i)$", "activation",
                  sub="V3 eq 15; V2: Softmax (eq 22)", size=9.5)
    key = c.box(56, y_r, 13, 6.5, r"$s_{i,t} + b_i$", "op", sub="selection key only")
    topk = c.box(70, y_r, 9, 6.5, "TopK", "op", sub="K of N_r, eq 16")
    g = c.box(87, y_r, 20, 6.5, r"$g_{i,t} = s_{i,t}\, / \sum_{j\in TopK} s_{j,t}$", "activation",
              sub="V3 eq 13, × route_scale", size=9)
    bias = c.box(56, 50, 17, 6.5, r"bias $b_i$", "buffer", sub="b_i += γ·sign(mean c − c_i)")
    c.arrow(u.at("right", y_r - u.y), gate.left)
    for a, b in ((gate, score), (score, key), (key, topk), (topk, g)):
        c.arrow(a.right, b.left)
    c.arrow(bias.top, key.bottom)
    c.text(46.5, 50, "aux-loss-free balancing (V3 §2.1.2):\nafter each step, overloaded experts'\n"
           "b_i go down, underloaded ones up", ha="right", size=SIZE["sub"])
    c.arrow(score.top, (38, 69.5), (87, 69.5), g.top)
    c.text(62.5, 67.3, "weights from the UNBIASED scores: b_i moves the load, never the output", size=SIZE["sub"])

    # routed experts: a row of fine-grained experts, the K selected ones get u_t
    n_routed, selected = 8, (2, 5)
    y_e, x_first, dx, bus = 35, 22, 6.6, 42
    experts = [c.box(x_first + i * dx, y_e, 5.6, 6, f"FFN{i + 1}", "learned" if i in selected else "idle", size=7.5)
               for i in range(n_routed)]
    c.text(44, bus + 2.2, f"N_r routed experts ({n_routed} drawn, K = {len(selected)})", size=SIZE["sub"])
    c.arrow(u.at("right", bus - u.y), (topk.x, bus), head=False)
    for i in selected:
        c.arrow((experts[i].x, bus), experts[i].top)
    c.arrow(topk.bottom, (topk.x, bus + 0.2), dashed=True)
    c.text(71.2, 46.5, "expert ids: u_t reaches\nonly the K selected", ha="left", size=SIZE["sub"])
    weighted = c.box(87, 30, 20, 7, r"$\sum_{i\in TopK} g_{i,t}\,FFN_i(u_t)$", "op", sub="routed, weighted", size=9)
    low = 29
    for i in selected:
        c.arrow(experts[i].bottom, (experts[i].x, low), head=False)
    c.arrow((experts[selected[0]].x, low), (weighted.left[0], low))
    c.arrow(g.bottom, weighted.top)
    c.text(88, 45, r"$g_{i,t}$", ha="left", size=9)

    # shared experts: every token, no gate, summed
    y_s, shared_bus, out_line = 16.5, 23, 11
    shared = [c.box(30 + 12 * j, y_s, 9, 5.5, f"shared {j + 1}", "learned", size=8.5) for j in range(2)]
    c.arrow(u.at("right", shared_bus - u.y), (shared[-1].x, shared_bus), head=False)
    for box in shared:
        c.arrow((box.x, shared_bus), box.top)
        c.arrow(box.bottom, (box.x, out_line), head=False)
    c.text(50, y_s, "N_s shared experts (2 drawn; V2 has 2, V3 1): every token,\nunweighted "
           "(shared-expert isolation, DeepSeekMoE §3)", ha="left", size=SIZE["sub"])
    plus = c.op(87, out_line)
    c.arrow((shared[0].x, out_line), plus.left)
    c.arrow(weighted.bottom, plus.top)
    out = c.box(95.5, out_line, 7, 5.5, r"$h'_t$", "activation")
    c.arrow(plus.right, out.left)
    c.arrow((2, 5.5), (87, 5.5), plus.bottom)
    c.text(3, 7.2, "residual x_t: the block adds it, x + FFN(RMSNorm(x)); V3 eq 12 writes it as + u_t",
           ha="left", size=SIZE["sub"])

    c.legend(2, 3.4, ["learned", "activation", "op"])
    c.legend(2, 1.1, ["buffer", "idle"])
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 5. the two balancing feedback loops (chapter 5)
# ----------------------------------------------------------------------------------------------
def draw_balancing_loops(path: Path) -> list[str]:
    c = Canvas(100, 62, "Load balancing: two feedback loops from the counts c_i back to the router")
    y = 33
    u = c.box(7, y, 10, 7, r"$u_t$", "activation", sub="N tokens")
    gate = c.box(23, y, 14, 7, r"$u_t\cdot e_i$", "learned", sub="router.gate e_i")
    score = c.box(40, y, 12, 7, r"$s_{i,t}$", "activation", sub="σ or softmax")
    key = c.box(56, y, 12, 7, r"$s_{i,t} + b_i$", "op", sub="selection key")
    topk = c.box(71, y, 10, 7, "TopK", "op", sub="K of E")
    counts = c.box(89, y, 16, 7, r"$c_i$ per step", "activation", sub="ideal c̄ = NK/E")
    for a, b in ((u, gate), (gate, score), (score, key), (key, topk), (topk, counts)):
        c.arrow(a.right, b.left)

    # loop 1: the auxiliary loss, through the gradient (top)
    loss = c.box(64, 50, 30, 7, r"$\mathcal{L}_{bal} = \alpha\sum_i f_i P_i$", "op",
                 sub="f_i = c_i / c̄ constant; P_i = mean s'_i", size=9)
    c.arrow(counts.top, (counts.x, loss.y), loss.right)
    c.arrow(loss.left, (gate.x, loss.y), gate.top)
    c.text(34, 52.3, "gradient αf_i/N on s'_i:", size=SIZE["sub"])
    c.text(34, 47.7, "loaded experts' logits go down", size=SIZE["sub"])
    c.text(50, 57.5, "'aux_loss' (Switch; V2 eqs 23-25): trains e_i, so the router itself learns fewer favourites",
           size=SIZE["note"])

    # loop 2: the aux-loss-free bias, a rule with no gradient (bottom)
    bias = c.box(64, 16, 30, 7, r"$b_i \leftarrow b_i + \gamma\,\mathrm{sign}(\bar c - c_i)$", "buffer",
                 sub="after every optimizer step", size=9)
    c.arrow(counts.bottom, (counts.x, bias.y), bias.right)
    c.arrow(bias.left, (key.x, bias.y), key.bottom)
    c.text(36, 18.3, "overloaded (c_i > c̄): b_i − γ", size=SIZE["sub"])
    c.text(36, 13.7, "underloaded (c_i < c̄): b_i + γ", size=SIZE["sub"])
    c.text(50, 8.5, "'aux_free' (V3 §2.1.2, eq 16; LFB Alg. 1): moves only the selection key;"
           " the weights g_i stay the unbiased scores", size=SIZE["note"])
    c.text(50, 5.3, "'both': the two loops at once      'none': no loop, so the rich get richer", size=SIZE["note"])
    c.legend(2, 1.6, ["learned", "activation", "op", "buffer"])
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 6. from logits to a token (chapter 7)
# ----------------------------------------------------------------------------------------------
def draw_sampling_pipeline(path: Path) -> list[str]:
    c = Canvas(100, 58, "Sampling: generation.process_logits, then sample_token, once per new token")
    y1, y2 = 40, 22
    model = c.box(8, y1, 12, 8, "model", "learned", sub="(B, V) logits z")
    steps1 = [("1 repetition", "z/r if z > 0, else z·r"), ("2 presence,", "frequency: − α[c>0] − βc"),
              ("3 no-repeat", "n-gram: −∞ if it repeats")]
    steps2 = [("4 temperature", "z / τ  (τ scheduled)"), ("5 top-k", "keep the k largest"),
              ("6 top-p", "smallest set with mass ≥ p")]
    row1 = [c.box(30 + 21 * i, y1, 18, 8, a, "op", sub=b, size=9) for i, (a, b) in enumerate(steps1)]
    row2 = [c.box(72 - 21 * i, y2, 18, 8, a, "op", sub=b, size=9) for i, (a, b) in enumerate(steps2)]
    c.arrow(model.right, row1[0].left)
    for a, b in zip(row1[:-1], row1[1:], strict=True):
        c.arrow(a.right, b.left)
    c.arrow(row1[-1].right, (92, y1), (92, y2), row2[0].right)
    for a, b in zip(row2[:-1], row2[1:], strict=True):
        c.arrow(a.left, b.right)
    sample = c.box(10, y2, 16, 8, "sample", "activation", sub="softmax draw; τ=0: argmax")
    c.arrow(row2[-1].left, sample.right)
    c.text(51, 48.5, "penalties: look at the tokens so far (prompt included), each row its own", size=SIZE["sub"])
    c.text(51, 30.5, "reshape and filter: temperature keeps the order; filtered logits become −∞",
           size=SIZE["sub"])
    c.arrow(sample.bottom, (10, 9), (95, 9), (95, 52), (model.x, 52), model.top)
    c.text(52, 11, "the token is appended to the history; unless it is the last one, it is fed back"
           " (one decode step, the cache grows by one)", size=SIZE["sub"])
    c.text(52, 5.5, "seed=s: a local torch.Generator, so the same settings and seed give the same tokens",
           size=SIZE["note"])
    c.legend(2, 1.8, ["learned", "op", "activation"])
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 7. the KV cache over one generation (chapter 7)
# ----------------------------------------------------------------------------------------------
def draw_cache_budget(path: Path) -> list[str]:
    c = Canvas(100, 60, "The KV cache of one generation: tokens held, and bytes per token")
    # axes of a schematic: x = new tokens N, y = cached tokens
    x0, y0, x1, y1 = 12, 22, 64, 50
    c.arrow((x0, y0), (x1, y0), lw=1.0)
    c.arrow((x0, y0), (x0, y1), lw=1.0)
    c.text(x1 - 1, y0 - 2.2, "new tokens N", ha="right", size=SIZE["sub"])
    c.text(x0 - 1, y1 - 1, "cached\ntokens", ha="right", size=SIZE["sub"])
    full, half, prompt = 45, 33.5, 26
    c.text(x0 - 1, full, "ctx", ha="right", size=SIZE["sub"])
    c.text(x0 - 1, half, "ctx // 2", ha="right", size=SIZE["sub"])
    c.text(x0 - 1, prompt, "T", ha="right", size=SIZE["sub"])
    grow = (full - prompt)
    c.arrow((x0, prompt), (x0 + grow, full), (x0 + grow, half), (x0 + grow + (full - half), full),
            (x0 + grow + (full - half), half), (x0 + grow + 2 * (full - half), full), color="#d94801", lw=1.6,
            head=False)
    c.text(x0 + 3, 40, "+1 per fed token", ha="left", size=SIZE["sub"])
    c.text(47, 48, "full: drop, re-prefill the last ctx // 2", size=SIZE["sub"])
    c.text(x0 + 1, 16.5, "prefill: the prompt, T tokens, in one forward;  after N new tokens (while it fits):"
           " T + N − 1", ha="left", size=SIZE["sub"])
    c.text(x0 + 1, 13.3, "the last sampled token is returned, never fed; ctx = context_length (the RoPE table)",
           ha="left", size=SIZE["sub"])

    # bytes per cached token, per layer
    c.box(84, 44, 26, 8, r"MLA: $d_c + d_h^R$", "cached", sub="latent c^KV + shared RoPE key")
    c.box(84, 30, 26, 8, r"MHA: $2\,n_h d_h$", "cached", sub="keys and values of every head")
    c.text(84, 21, "GQA: 2 n_g d_h,   MQA: 2 d_h", size=SIZE["sub"])
    c.text(50, 7.5, "bytes = layers × cached tokens × values per token × bytes per value"
           "   (utils.kv_cache_bytes; fp32: 4, bf16: 2)", size=SIZE["note"])
    c.text(84, 52.5, "values per token and layer", size=SIZE["sub"])
    c.legend(2, 2.2, ["cached"])
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 8. an ablation grid (chapter 8)
# ----------------------------------------------------------------------------------------------
def draw_ablation_grid(path: Path) -> list[str]:
    c = Canvas(100, 60, "An ablation: one change per variant, the same token budget, several seeds")
    names = [("baseline", "the preset"), ("variant A", "one field changed"), ("variant B", "one field changed")]
    ys = (42, 32, 22)
    for (name, sub), y in zip(names, ys, strict=True):
        c.box(10, y, 15, 7, name, "learned", sub=sub)
        for j in range(3):
            c.box(27 + 9 * j, y, 8, 7, f"seed {j}", "activation", size=8)
        c.arrow((17.5, y), (23, y))
    c.text(36, 49, "runs: same tokens, steps, batch", size=SIZE["sub"])
    rec = c.box(62, 32, 14, 26, "", "op")
    c.inside(rec, 62, 41, "records", size=SIZE["main"])
    c.inside(rec, 62, 37, "one JSON per run", size=SIZE["sub"])
    c.inside(rec, 62, 32, "key = hash(config,", size=SIZE["sub"])
    c.inside(rec, 62, 29, "train, corpus,", size=SIZE["sub"])
    c.inside(rec, 62, 26, "budget): reruns skip", size=SIZE["sub"])
    for y in ys:
        c.arrow((49, y), (rec.left[0], y))
    rep = c.box(86, 32, 20, 26, "", "op")
    c.inside(rep, 86, 41, "report", size=SIZE["main"])
    c.inside(rep, 86, 37.5, "per variant: mean, s", size=SIZE["sub"])
    c.inside(rep, 86, 34.5, "Δ = mean − baseline", size=SIZE["sub"])
    c.inside(rep, 86, 30, r"SE = $\sqrt{s_a^2/n_a + s_b^2/n_b}$", size=SIZE["sub"])
    c.inside(rep, 86, 25.5, "resolved if |Δ| > 2 SE", size=SIZE["sub"])
    c.arrow(rec.right, rep.left)
    c.text(50, 12, "python -m ablation --grid top_k=1,2,4 --seeds 0 1 2 --tokens N --out DIR;"
           "   python -m ablation report DIR", size=SIZE["note"], family="monospace")
    c.text(50, 7.5, "not resolved: the difference is within seed noise at this budget -- "
           "more seeds shrink SE by 1/√n, more tokens change the question", size=SIZE["note"])
    c.text(50, 3.5, "blue: a model config (variant), green: one training run, grey: files and arithmetic",
           size=SIZE["caption"])
    return c.save(path)


# ----------------------------------------------------------------------------------------------
# 9. one optimizer step (chapter 6)
# ----------------------------------------------------------------------------------------------
def draw_training_step(path: Path) -> list[str]:
    c = Canvas(100, 62, "One optimizer step: forward, backward, clip, this step's lr, AdamW, the router bias")
    y = 40
    batch = c.box(10, y, 15, 8, "batch", "activation", sub="x, y: (B, T) token ids")
    forward = c.box(29, y, 17, 8, "forward", "learned", sub="loss = CE + balance", size=9.5)
    backward = c.box(48, y, 15, 8, "backward", "op", sub="loss.backward(): grads")
    clip = c.box(66, y, 15, 8, "clip", "op", sub="global norm ≤ grad_clip")
    adamw = c.box(86, y, 17, 8, "AdamW step", "learned", sub="weights, moments")
    for a, b in ((batch, forward), (forward, backward), (backward, clip), (clip, adamw)):
        c.arrow(a.right, b.left)
    c.text(29, 46.5, "logits (B, T, V)", size=SIZE["sub"])
    c.text(48, 46.5, "p.grad for every weight", size=SIZE["sub"])

    # the learning rate of this step: a plain function of the step number
    lr = c.box(86, 53, 20, 6, "lr_at(step)", "op", sub="warmup, then cosine")
    c.arrow(lr.bottom, adamw.top)

    # the loads of the forward drive the bias, a buffer that no gradient touches
    loads = c.box(29, 20, 20, 8, "tokens per expert", "activation", sub="c_i: (E,) per MoE layer")
    bias = c.box(80, 20, 28, 8, "router bias update", "buffer", sub="b_i ← b_i + γ sign(c̄ − c_i)")
    c.arrow(forward.bottom, loads.top)
    c.arrow(loads.right, bias.left)
    c.text(54.5, 22.2, "once per step, after AdamW", size=SIZE["sub"])
    c.text(54.5, 17.8, "(DeepSeek-V3 §2.1.2)", size=SIZE["sub"])

    c.text(50, 9.5, "trainer.train_step adds: grad_accum micro-batches, a stop on a non-finite loss before the "
           "update,\nand (chapter 6, Going deeper) DDP's all-reduce and fp16's GradScaler", size=SIZE["caption"])
    c.legend(2, 3.0, ["learned", "activation", "op", "buffer"])
    return c.save(path)


FIGURES: dict[str, Callable[[Path], list[str]]] = {
    "model_block_diagram.png": draw_model_block_diagram,
    "mla_data_flow.png": draw_mla_data_flow,
    "absorption_regrouping.png": draw_absorption_regrouping,
    "moe_routing.png": draw_moe_routing,
    "balancing_loops.png": draw_balancing_loops,
    "sampling_pipeline.png": draw_sampling_pipeline,
    "cache_budget.png": draw_cache_budget,
    "ablation_grid.png": draw_ablation_grid,
    "training_step.png": draw_training_step,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: docs/figures)")
    args = parser.parse_args(argv)
    out, failed = args.out.resolve(), 0
    # matplotlib's defaults, whatever the user's matplotlibrc says: the layout was measured with them
    with plt.style.context("default"), plt.rc_context({"font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans"}):
        for name, draw in FIGURES.items():
            path = out / name
            problems = draw(path)
            try:
                shown = path.relative_to(ROOT)
            except ValueError:
                shown = path
            print(f"wrote {shown}", flush=True)
            for problem in problems:
                print(f"  LAYOUT PROBLEM: {problem}", file=sys.stderr)
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
