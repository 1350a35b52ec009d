"""The essays as GPT-2 token ids: source resolution, essay-level split, token cache, batches.

    from data import prepare_data, TrainBatches, eval_batches
    prepared = prepare_data()                      # or prepare_data("essays.csv")
    print(prepared.summary)
    x, y = TrainBatches(prepared.train_ids, batch_size=8, context_length=128).next()   # (8, 128) each

Modules, in the order the data flows:
    sources.py   where the essays come from (path / env var / local Hub copy / Hub / bundled sample)
    hub.py       the Hub download, which fails in seconds when offline
    split.py     deterministic train/validation split by essay
    tokens.py    tokenizing into uint16 id arrays, and the atomic on-disk cache
    prepare.py   prepare_data(), tying the three together, and DataSummary
    batches.py   TrainBatches (random, resumable) and eval_batches (sequential)
The files in sample/ are short stand-in essays written for this project (not Paul Graham's),
used only when the real essays cannot be found; `python -m data` prints what was used.
"""

from data.batches import TrainBatches, eval_batches
from data.prepare import DataSummary, PreparedData, prepare_data

__all__ = ["DataSummary", "PreparedData", "TrainBatches", "eval_batches", "prepare_data"]
