"""Ablation studies: a grid of ModelConfig variants x seeds at one token budget, JSON records, reports.

    python -m ablation --study latent --preset tiny --grid kv_latent_dim=32,64,128 --seeds 0 1 --tokens 200000
    python -m ablation report runs/ablations/latent         # Markdown tables and plots from the records

run.py expands the grid and trains each run with the project's one Trainer; report.py turns the
records into tables (mean, spread, difference to the first row with its standard error) and plots.
"""
