"""Where the essays come from, and how each accepted file format becomes a list of documents.

Resolution order (offline by design: only step 3 touches the network, and a failure there falls
through to step 4):
    1. an explicit path (argument, or the DEEPSEEK_SCRATCH_DATA environment variable), or an explicit
       Hub dataset id (OWNER/NAME that is not an existing file or folder, see `is_hub_id`): its local
       copy in the cache dir, else a download; offline with no copy is an error, never the sample
    2. the local copy of the Hub dataset saved under the cache dir by an earlier download
    3. the Hub dataset itself (hub.py), only when the hub host answers within a few seconds
    4. the bundled stand-in sample in data/sample/, with a loud warning
A `Source` names a file or folder whenever it can, so the token cache can be keyed on the raw
bytes (cheap) and a cache hit never needs to parse the corpus at all.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from common.files import atomic_write
from constants import DATA_DIR, DATA_ENV_VAR, HUB_DATASET, PROJECT_ROOT
from data import hub

SAMPLE_DIR = DATA_DIR / "sample"
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
HOW_TO_GET_ESSAYS = (f"pass --data PATH (or set {DATA_ENV_VAR}) to a CSV/Parquet/JSONL file with a 'text' "
                     "column, a .txt file or a folder of .txt files, or --data OWNER/NAME for a Hub dataset")
# OWNER/NAME as the Hub spells dataset ids; a name ending like a file we read stays a (missing) path
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
FILE_SUFFIXES = (*TABLE_SUFFIXES, ".txt")


def hub_cache_name(dataset_id: str) -> str:
    """The cache file of a Hub dataset: hub_OWNER__NAME.csv."""
    return "hub_" + dataset_id.replace("/", "__") + ".csv"


HUB_CACHE_NAME = hub_cache_name(HUB_DATASET)   # the default dataset's copy, as CSV


def is_hub_id(value: str | os.PathLike) -> bool:
    """--data names a Hub dataset when it reads OWNER/NAME (one slash, no file suffix such as .csv) and no
    file or folder of that name exists: an existing path always wins."""
    text = os.fspath(value)
    return (HUB_ID.fullmatch(text) is not None and not text.lower().endswith(FILE_SUFFIXES)
            and not Path(text).expanduser().exists())

# Python's csv module refuses fields over 128 KiB by default; whole essays can be longer.
csv.field_size_limit(2**31 - 1)


def display_path(path: str | os.PathLike) -> str:
    """A path as printed in messages: relative to the project root when it lies inside the project or
    beside it (data/cache, ../shared/data/essays.csv), so logs and notebook outputs carry no machine's
    absolute paths; anywhere else, absolute. Symlinks are tried both unfollowed and followed (a data
    folder beside the project may be a link to somewhere else)."""
    plain = Path(os.path.abspath(Path(path).expanduser()))
    for candidate in (plain, plain.resolve()):
        for base, prefix in ((PROJECT_ROOT, ""), (PROJECT_ROOT.parent, "../")):
            if candidate.is_relative_to(base):
                return prefix + candidate.relative_to(base).as_posix()
    return str(plain)


@dataclass(frozen=True)
class Source:
    """What the corpus is: a file or folder on disk, or (Hub download without a writable cache) texts."""
    description: str
    path: Path | None = None
    texts: tuple[str, ...] | None = None


def _decode(raw: bytes, name: Path | str) -> str:
    """Strict UTF-8 (a BOM is dropped); anything else is an error that names the file."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} is not UTF-8 text (bad byte at offset {err.start}); "
                         "re-save it as UTF-8") from None


def _texts_from_rows(rows: list[dict], columns: list[str], path: Path) -> list[str]:
    if "text" not in columns:
        raise ValueError(f"{path} has no 'text' column (columns found: {', '.join(map(str, columns)) or 'none'}); "
                         "rename the column holding the essays to 'text'")
    texts = [row.get("text") for row in rows]
    return ["" if text is None else str(text) for text in texts]   # missing cells count as empty


def _read_table(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow); "
                             "or convert it to CSV/JSONL") from None
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable Parquet file ({err})") from None
        return _texts_from_rows(table.to_pylist(), table.column_names, path)
    text = _decode(path.read_bytes(), path)
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        rows = list(reader)
        return _texts_from_rows(rows, list(reader.fieldnames or []), path)
    rows, columns = [], {}
    for line_no, line in enumerate(text.splitlines(), start=1):   # JSONL: one object per line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {line_no} is not JSON ({err.msg}); expected one object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {line_no} is not a JSON object; expected {{\"text\": ...}} per line")
        rows.append(row)
        columns.update(dict.fromkeys(row))
    return _texts_from_rows(rows, list(columns), path)


def read_documents(source: Source) -> list[str]:
    """The documents of a source, in a fixed order (table rows, or .txt files sorted by name)."""
    if source.texts is not None:
        return list(source.texts)
    path = source.path
    if path.is_dir():
        files = _txt_files(path)
        return [_decode(f.read_bytes(), f) for f in files]
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _read_table(path)
    return [_decode(path.read_bytes(), path)]   # any other file: one plain-text document


def _txt_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no .txt files; put one essay per .txt file there, or {HOW_TO_GET_ESSAYS}")
    return files


def fingerprint(source: Source) -> str:
    """sha256 of the raw input: file bytes, or names+bytes of a folder's .txt files, or the texts."""
    digest = hashlib.sha256()
    if source.texts is not None:
        for text in source.texts:
            digest.update(text.encode("utf-8") + b"\0")
    elif source.path.is_dir():
        for f in _txt_files(source.path):
            digest.update(f.name.encode("utf-8") + b"\0" + f.read_bytes() + b"\0")
    else:
        digest.update(source.path.read_bytes())
    return digest.hexdigest()


def keep_hub_copy(rows: list[dict], cache_dir: Path | None, dataset_id: str = HUB_DATASET,
                  column: str = "text") -> Source:
    """Save downloaded Hub rows as cache_dir/hub_OWNER__NAME.csv (title, date, text); in memory when the
    cache is not writable. `column`: the dataset's column the texts came from (said in the description)."""
    name = f"Hub dataset {dataset_id}" + ("" if column == "text" else f" (column {column!r} as text)")
    if cache_dir is not None:
        target = cache_dir / hub_cache_name(dataset_id)

        def write_csv(handle):
            writer = csv.DictWriter(handle, fieldnames=hub.HUB_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(target, write_csv, mode="w")
            return Source(f"{name} (saved to {display_path(target)})", path=target)
        except OSError:
            pass   # not writable: keep the essays in memory, the token cache will say so too
    return Source(f"{name} (in memory)", texts=tuple(row["text"] for row in rows))


def hub_source(dataset_id: str, cache_dir: Path | None, use_hub: bool, via: str = "") -> Source:
    """An explicitly named Hub dataset: its local copy, else a download; else a one-line error naming the fix."""
    copy = cache_dir / hub_cache_name(dataset_id) if cache_dir is not None else None
    if copy is not None and copy.is_file():
        return Source(f"Hub dataset {dataset_id}{via} (local copy {display_path(copy)})", path=copy)
    why = "the Hub was not tried (--no-hub)"
    if use_hub:
        rows, why = hub.fetch_rows(dataset_id)
        if rows is not None:
            return keep_hub_copy(rows, cache_dir, dataset_id, column=why)
    where = f" at {display_path(copy)}" if copy is not None else ""
    raise FileNotFoundError(f"cannot read the Hub dataset {dataset_id}{via}: {why}, and it has no local copy{where}; "
                            f"download it once where the Hub is reachable (python -m data --data {dataset_id}, "
                            "without HF_HUB_OFFLINE=1), or pass --data PATH to a local copy")


def resolve_source(data_path: str | os.PathLike | None, cache_dir: Path | None, use_hub: bool) -> Source:
    """Pick the corpus by the resolution order in the module docstring."""
    # 1) an explicit path wins; a wrong one is an error, never a silent fallback
    from_env = data_path is None and bool(os.environ.get(DATA_ENV_VAR))
    if from_env:
        data_path = os.environ[DATA_ENV_VAR]
    if data_path is not None and is_hub_id(data_path):
        return hub_source(os.fspath(data_path), cache_dir, use_hub, f" (from {DATA_ENV_VAR})" if from_env else "")
    if data_path is not None:
        path = Path(data_path).expanduser()
        if not path.exists():
            via = f" (from {DATA_ENV_VAR})" if from_env else ""
            raise FileNotFoundError(f"data path {path}{via} does not exist; {HOW_TO_GET_ESSAYS}")
        if not path.is_dir() and not path.is_file():
            # a FIFO, a socket or a device: reading it can block forever or never end; refuse before opening it
            raise ValueError(f"data path {path} is not a regular file or a folder (a pipe, socket or device); "
                             f"save the text to a file first, or {HOW_TO_GET_ESSAYS}")
        kind = "folder" if path.is_dir() else "file"
        return Source(f"{kind} {display_path(path)}" + (f" (from {DATA_ENV_VAR})" if from_env else ""), path=path)
    # 2) a copy of the Hub dataset saved by an earlier run
    if cache_dir is not None and (cache_dir / HUB_CACHE_NAME).is_file():
        return Source(f"Hub dataset {HUB_DATASET} (local copy {display_path(cache_dir / HUB_CACHE_NAME)})",
                      path=cache_dir / HUB_CACHE_NAME)
    # 3) the Hub, only if asked and reachable
    why = "the Hub was not tried (use_hub=False / --no-hub)"
    if use_hub:
        rows, why = hub.fetch_rows()
        if rows is not None:
            return keep_hub_copy(rows, cache_dir, column=why)
    # 4) the stand-in sample, loudly
    warnings.warn(f"USING THE BUNDLED SAMPLE CORPUS, NOT THE REAL ESSAYS: no data path was given, no local copy "
                  f"was found and {why}. The sample is short stand-in text; to train on the real essays, "
                  f"{HOW_TO_GET_ESSAYS}.", stacklevel=3)
    return Source("bundled sample data/sample/ (stand-in text, not the essays)", path=SAMPLE_DIR)
