"""Downloading the essays from the Hugging Face Hub, without ever hanging an offline machine.

`datasets` is heavy and, offline, retries for a long while before giving up. So before importing
it we honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (not trying at all) and make one quick TCP
connection to the hub host; only if that answers within a few seconds do we call
`datasets.load_dataset`. The result is saved to the cache as a CSV (title, date, text) by
data/sources.py, keyed by the dataset id, so later runs read it from disk like any local file.

Any dataset with a text column works (`--data OWNER/NAME`): the essays are its `text` column if it has
one, else its string column holding the most characters (`pick_text_column`); title and date are kept
when the dataset has columns of those names.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from constants import HUB_DATASET

HUB_COLUMNS = ("title", "date", "text")
CONNECT_TIMEOUT_S = 3.0


def offline_by_env() -> str | None:
    """The environment variable that forbids Hub access, if one is set."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def hub_address() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """One TCP connect to the hub host. The DNS lookup inside create_connection has no timeout of
    its own, hence the daemon thread: we stop waiting after `timeout` whatever it is doing."""
    result = []

    def connect():
        try:
            socket.create_connection(hub_address(), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result)


def download(dataset_id: str) -> list[dict]:
    """The rows of the dataset's train split, as dicts (the one place that calls `datasets`)."""
    import datasets  # imported only when a download is really attempted

    return [dict(row) for row in datasets.load_dataset(dataset_id, split="train")]


def pick_text_column(rows: list[dict]) -> str | None:
    """`text` if the rows have it, else the column of strings holding the most characters; None if none."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    if "text" in columns:
        return "text"
    strings = [c for c in columns if all(isinstance(row.get(c), str | None) for row in rows)
               and any(isinstance(row.get(c), str) for row in rows)]
    return max(strings, key=lambda c: sum(len(row.get(c) or "") for row in rows), default=None)


def fetch_rows(dataset_id: str = HUB_DATASET) -> tuple[list[dict] | None, str]:
    """(the dataset's rows as {title, date, text} dicts, the name of the column read as text) or (None, why
    not). Transport only: where the rows are kept is the caller's business (data/sources.py caches them)."""
    if (var := offline_by_env()) is not None:
        return None, f"{var}=1 is set, so the Hub dataset {dataset_id} was not tried"
    if not hub_reachable():
        host, port = hub_address()
        return None, f"the Hub ({host}:{port}) did not answer within {CONNECT_TIMEOUT_S:.0f} s (offline?)"
    try:
        raw = download(dataset_id)
    except Exception as err:  # noqa: BLE001 - any failure here means "fall back", and says why
        return None, f"downloading {dataset_id} failed ({type(err).__name__}: {err})"
    if (column := pick_text_column(raw)) is None:
        columns = ", ".join(raw[0]) if raw else "none"
        return None, f"the Hub dataset {dataset_id} has no column of text (columns: {columns})"
    rows = [{"title": row.get("title") or "", "date": row.get("date") or "", "text": row.get(column) or ""}
            for row in raw]
    return rows, column
