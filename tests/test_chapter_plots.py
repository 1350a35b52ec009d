"""plotting.py figures of chapters 1-4: each draws what it is given (a Figure with the expected text and data)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figures import plotting  # noqa: E402


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def test_plot_rope_rotation_draws_pairs_and_scores():
    angles = np.arange(6) * 0.5
    pair = np.stack([2 * np.cos(angles), 2 * np.sin(angles)], axis=1)          # length 2, drawn on radius 1
    fig = plotting.plot_rope_rotation({"pair 0": (list(range(6)), pair)},
                                      {5: ([0, 1, 2], [1.0, 0.5, -0.2]), 3: ([0, 1], [1.0, 0.5])})
    ax, ax_score = fig.axes
    xs, ys = ax.lines[1].get_data()
    np.testing.assert_allclose(np.hypot(xs, ys), 1.0)
    assert [list(line.get_ydata()) for line in ax_score.lines] == [[1.0, 0.5, -0.2], [1.0, 0.5]]
    assert "query at position t = 5" in _texts(fig)
    plt.close(fig)


def test_plot_sort_dispatch_groups_slots_by_expert():
    ids = np.array([[2, 1], [2, 0], [3, 1]])
    fig = plotting.plot_sort_dispatch(ids)
    texts = _texts(fig)
    for e, n in ((0, 1), (1, 2), (2, 2), (3, 1)):
        assert f"expert {e}: {n}" in texts
    assert texts.count("t0") == 4            # token 0's two slots, in the sorted row and in the runs
    plt.close(fig)


def test_routing_heatmap_colour_scale_spans_the_weights_and_labels_cells():
    gates = np.array([[0.45, 0.55, 0.0], [0.0, 0.52, 0.48]])
    fig = plotting.plot_routing_heatmap(gates, [" the", "cat"], tokens_per_expert=np.array([1, 2, 1]))
    image = fig.axes[0].images[0]
    assert image.norm.vmin == 0.45 and image.norm.vmax == 0.55
    texts = _texts(fig)
    assert "0.45" in texts and "0.55" in texts
    assert "0: \u2423the" in texts and "1: cat" in texts
    plt.close(fig)


def test_cache_bytes_per_token_labels_are_exact_bytes():
    fig = plotting.plot_cache_bytes_per_token(["A", "B"], {"MHA": [512, 49152], "MLA": [96, 3840]})
    texts = _texts(fig)
    assert "49,152" in texts and "3,840" in texts and "96" in texts
    plt.close(fig)


def test_absorption_diagram_counts_the_whole_decode_step_as_chapter_3():
    # the figure quotes one layer's whole decode step at DeepSeek-V3 sizes: 138,115.2 vs 1,515.1 MFLOP (91.2x)
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "draw_diagrams.py"
    spec = importlib.util.spec_from_file_location("draw_diagrams_for_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                   # its dataclasses look their module up
    spec.loader.exec_module(module)
    naive, absorbed = module.decode_step_flops(S=4096, d=7168, H=128, C=512, R=64, D=128, V=128, Q=1536)
    assert round(naive / 1e6, 1) == 138115.2 and round(absorbed / 1e6, 1) == 1515.1
    assert f"{naive / absorbed:.1f}" == "91.2"
