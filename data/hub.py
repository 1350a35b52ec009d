"""Downloading the essays from the Hugging Face Hub, without ever hanging an offline machine.

`datasets` is heavy and, offline, retries for a long while before giving up. So before importing
it we honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (not trying at all) and make one quick TCP
connection to the hub host; only if that answers within a few seconds do we call
`datasets.load_dataset`. The result is saved to the cache as a CSV with the dataset's columns
(title, date, text) by data/sources.py, so later runs read it from disk like any local file.
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


def fetch_rows() -> tuple[list[dict] | None, str]:
    """(the dataset's rows as {title, date, text} dicts, "") or (None, why not). Transport only: where the
    rows are kept is the caller's business (data/sources.py saves them to the cache)."""
    if (var := offline_by_env()) is not None:
        return None, f"{var}=1 is set, so the Hub dataset {HUB_DATASET} was not tried"
    if not hub_reachable():
        host, port = hub_address()
        return None, f"the Hub ({host}:{port}) did not answer within {CONNECT_TIMEOUT_S:.0f} s (offline?)"
    try:
        import datasets  # imported only when a download is really attempted

        rows = [{c: (row.get(c) or "") for c in HUB_COLUMNS}
                for row in datasets.load_dataset(HUB_DATASET, split="train")]
    except Exception as err:  # noqa: BLE001 - any failure here means "fall back", and says why
        return None, f"downloading {HUB_DATASET} failed ({type(err).__name__}: {err})"
    return rows, ""
