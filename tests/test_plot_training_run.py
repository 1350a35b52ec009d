"""plotting.plot_training_run: three panels on one shared step axis, smoothed lines labelled as such."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from figures import plotting  # noqa: E402


def test_plot_training_run_shares_the_step_axis_and_labels_smoothing():
    steps = list(range(1, 41))
    fig = plotting.plot_training_run(
        steps, [10 - 0.1 * s for s in steps], [10, 20, 30, 40], [9.0, 8.0, 7.5, 7.0], [1e-3] * 40,
        {"layer 1 (MoE)": [1.0 + 0.01 * (s % 5) for s in steps]}, baselines={"ln V": 10.82}, smooth=5, ceiling=2.0)
    loss_ax, lr_ax, load_ax = fig.axes
    assert loss_ax.get_shared_x_axes().joined(loss_ax, load_ax) and lr_ax.get_shared_x_axes().joined(lr_ax, load_ax)
    assert load_ax.get_xlabel() == "optimizer step"
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any("moving average of 5" in label for label in labels)
    assert "validation (not smoothed)" in labels and "collapse: E/K = 2" in labels
    plt.close(fig)
