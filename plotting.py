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
