"""The essay pipeline (data/): input formats, source resolution, the essay-level split, the token
cache, batches, the command line, and a clear one-line error for each kind of bad input.

Synthetic corpora in tmp_path keep most tests fast; one integration test reads the real essays
when they are present (DEEPSEEK_SCRATCH_DATA, or ../shared/data/ next to the repository).
Every test passes its own cache_dir, so nothing is written under data/cache/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from constants import DATA_ENV_VAR, EOT_TOKEN_ID, HUB_DATASET, PROJECT_ROOT
from data import DataSummary, TrainBatches, eval_batches, hub, prepare_data, sources
from data.__main__ import main as cli_main
from data.split import split_documents

pytestmark = pytest.mark.usefixtures("offline_no_data_env")


def essay(i: int, words: int = 60) -> str:
    """A synthetic essay whose every line carries its own marker word (mk0007), so any piece of
    it can be traced back to essay i after tokenizing and decoding."""
    return "\n\n".join(f"Paragraph {p} of mk{i:04d}. " + " ".join(["some plain words"] * (words // 3))
                       for p in range(3))


def write_csv(path: Path, texts: list[str], columns=("title", "date", "text")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({"title": f"Title {i}", "date": "", "text": t, "body": t} for i, t in enumerate(texts))
    return path


def prep(path, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return prepare_data(path, use_hub=False, quiet=True, **kw)


def markers(tokenizer, ids) -> set[str]:
    return {word[:6] for word in tokenizer.decode(ids.tolist()).split() if word.startswith("mk")}


# --- input formats ------------------------------------------------------------------------------

def test_csv_title_optional_and_separators(tmp_path, tokenizer):
    texts = [essay(i) for i in range(10)]
    with_title = prep(write_csv(tmp_path / "a.csv", texts), tmp_path)
    only_text = prep(write_csv(tmp_path / "b.csv", texts, columns=("text",)), tmp_path)
    np.testing.assert_array_equal(with_title.train_ids, only_text.train_ids)
    s = with_title.summary
    assert (s.n_essays_train, s.n_essays_val) == (9, 1)
    assert s.chars_train + s.chars_val == sum(map(len, texts))
    assert with_title.train_ids.dtype == np.uint16 and with_title.train_ids.ndim == 1
    # documents are joined by <|endoftext|>: n_docs - 1 separators per split
    assert int((with_title.train_ids == EOT_TOKEN_ID).sum()) == 8
    assert int((with_title.val_ids == EOT_TOKEN_ID).sum()) == 0


def test_parquet_and_jsonl_match_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [essay(i) for i in range(6)]
    pq.write_table(pa.table({"title": [str(i) for i in range(6)], "text": texts}), tmp_path / "e.parquet")
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n", encoding="utf-8")
    reference = prep(write_csv(tmp_path / "e.csv", texts), tmp_path)
    for name in ("e.parquet", "e.jsonl"):
        got = prep(tmp_path / name, tmp_path)
        np.testing.assert_array_equal(got.train_ids, reference.train_ids)
        np.testing.assert_array_equal(got.val_ids, reference.val_ids)


def test_folder_of_txt_sorted_by_name(tmp_path, tokenizer):
    folder = tmp_path / "essays"
    folder.mkdir()
    for i in (3, 1, 2, 0):
        (folder / f"{i:02d}.txt").write_text(essay(i), encoding="utf-8")
    (folder / "notes.md").write_text("not an essay", encoding="utf-8")
    got = prep(folder, tmp_path, val_fraction=0.25)
    assert (got.summary.n_essays_train, got.summary.n_essays_val) == (3, 1)
    docs = sources.read_documents(sources.Source("x", path=folder))
    assert docs == [essay(i) for i in range(4)]


def test_single_txt_splits_at_a_paragraph(tmp_path, tokenizer):
    path = tmp_path / "one.txt"
    path.write_text("\n\n".join(f"Paragraph mk{i:04d} " + "word " * 20 for i in range(20)), encoding="utf-8")
    with pytest.warns(UserWarning, match="only one document"):
        got = prep(path, tmp_path, val_fraction=0.2)
    assert "paragraph boundary" in got.summary.note and "note:" in str(got.summary)
    train, val = markers(tokenizer, got.train_ids), markers(tokenizer, got.val_ids)
    assert not train & val and len(train) == 16 and len(val) == 4      # cut between paragraphs


def test_env_var_supplies_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(write_csv(tmp_path / "e.csv", [essay(i) for i in range(4)])))
    got = prepare_data(cache_dir=tmp_path / "cache", use_hub=False, quiet=True)
    assert DATA_ENV_VAR in got.summary.source and got.summary.n_essays_train == 3


def test_printed_paths_are_relative_to_the_project_when_inside_or_beside_it(tmp_path):
    from data.sources import display_path

    assert display_path(PROJECT_ROOT / "data" / "cache") == "data/cache"
    assert display_path(PROJECT_ROOT.parent / "shared" / "data" / "essays.csv") == "../shared/data/essays.csv"
    elsewhere = Path("/") / "elsewhere" / "essays.csv"
    assert display_path(elsewhere) == str(elsewhere)          # not near the project: absolute
    link = tmp_path / "shared_link"                           # ../shared may be a symlink to elsewhere
    link.symlink_to(PROJECT_ROOT / "data", target_is_directory=True)
    assert display_path(link / "cache") == "data/cache"       # followed when the link itself is elsewhere


# --- source resolution without a path -------------------------------------------------------------

def test_bundled_sample_fallback_is_loud(tmp_path):
    with pytest.warns(UserWarning, match=f"BUNDLED SAMPLE.*{DATA_ENV_VAR}"):
        got = prepare_data(cache_dir=tmp_path, use_hub=False, quiet=True, context_length=256)
    assert "sample" in got.summary.source and got.summary.n_essays_val >= 1
    files = sorted(sources.SAMPLE_DIR.glob("*.txt"))
    assert len(files) >= 8 and sum(f.stat().st_size for f in files) >= 40_000
    assert all("standin" in f.name for f in files)


def test_hub_offline_never_connects(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: pytest.fail("tried to connect while offline"))
    with pytest.warns(UserWarning, match="HF_HUB_OFFLINE=1 is set"):
        got = prepare_data(cache_dir=tmp_path, use_hub=True, quiet=True)
    assert "sample" in got.summary.source


def test_hub_unreachable_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # a closed local port: refused at once
    started = time.perf_counter()
    assert hub.hub_reachable(timeout=3.0) is False
    assert time.perf_counter() - started < 3.5


def test_hub_unreachable_or_failing_falls_back_to_sample(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)   # CI sets both
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.warns(UserWarning, match="did not answer.*BUNDLED|BUNDLED.*did not answer"):
        assert "sample" in prepare_data(cache_dir=tmp_path, quiet=True).summary.source

    def load_dataset(name, split):
        raise ConnectionError("simulated outage")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: True)
    with pytest.warns(UserWarning, match="simulated outage"):
        assert "sample" in prepare_data(cache_dir=tmp_path, quiet=True).summary.source


def test_hub_download_is_saved_then_reused(tmp_path, monkeypatch):
    texts = [essay(i) for i in range(5)]
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"title": f"T{i}", "date": None, "text": t} for i, t in enumerate(texts)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)   # CI sets both
    first = prepare_data(cache_dir=tmp_path, quiet=True)
    assert calls == [(HUB_DATASET, "train")] and "saved to" in first.summary.source
    assert (tmp_path / sources.HUB_CACHE_NAME).is_file()
    second = prepare_data(cache_dir=tmp_path, use_hub=False, quiet=True)       # local copy, no download
    assert len(calls) == 1 and "local copy" in second.summary.source and second.summary.from_cache
    np.testing.assert_array_equal(first.train_ids, second.train_ids)


def test_hub_id_is_told_from_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sources.is_hub_id("sgoel9/paul_graham_essays") and sources.is_hub_id("a-b/c.d_e")
    for path in ("essays", "data/essays.csv", "notes/x.txt", "/abs/name", "a/b/c", "./a/b", "a/", "~/x"):
        assert not sources.is_hub_id(path), path
    (tmp_path / "owner" / "name").mkdir(parents=True)        # an existing folder of that name wins
    assert not sources.is_hub_id("owner/name")


def test_text_column_is_text_else_the_longest_string_column():
    assert hub.pick_text_column([{"title": "a much longer title", "text": "x"}]) == "text"
    rows = [{"id": 1, "title": "Short", "body": "A long essay body.", "url": "http://x"},
            {"id": 2, "title": "Tiny", "body": None, "url": "http://y/z"}]
    assert hub.pick_text_column(rows) == "body"
    assert hub.pick_text_column([{"id": 1, "score": 2.0}]) is None


def fake_hub(monkeypatch, rows):
    """The Hub reachable, and `hub.download` returning `rows` (recording each call): no network."""
    calls = []

    def download(dataset_id):
        calls.append(dataset_id)
        return [dict(row) for row in rows]

    monkeypatch.setattr(hub, "download", download)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)   # CI sets both
    return calls


def test_data_hub_id_downloads_to_the_cache_keyed_by_id_then_reuses_it(tmp_path, monkeypatch, capsys):
    rows = [{"id": i, "title": f"T{i}", "body": essay(i)} for i in range(6)]   # no 'text' column: 'body'
    calls = fake_hub(monkeypatch, rows)
    cache = tmp_path / "cache"
    assert cli_main(["--data", "someone/essays", "--cache-dir", str(cache)]) == 0       # python -m data --data ID
    copy = cache / "hub_someone__essays.csv"
    assert calls == ["someone/essays"] and copy.is_file()
    out = capsys.readouterr().out
    assert "Hub dataset someone/essays (column 'body' as text) (saved to" in out and "tokenized now" in out
    with open(copy, encoding="utf-8", newline="") as f:
        saved = list(csv.DictReader(f))
    assert [r["text"] for r in saved] == [r["body"] for r in rows] and saved[0]["title"] == "T0"
    first = prepare_data("someone/essays", cache_dir=cache, quiet=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                                           # a second run, offline
    second = prepare_data("someone/essays", cache_dir=cache, quiet=True)
    assert calls == ["someone/essays"]                                                  # never downloaded again
    assert "local copy" in second.summary.source and second.summary.from_cache
    np.testing.assert_array_equal(first.train_ids, second.train_ids)
    assert second.summary.n_essays_train + second.summary.n_essays_val == 6
    monkeypatch.setenv(DATA_ENV_VAR, "someone/essays")                                  # the env var takes ids too
    assert f"someone/essays (from {DATA_ENV_VAR})" in prepare_data(cache_dir=cache, quiet=True).summary.source


def test_data_hub_id_offline_without_a_copy_is_one_line_naming_the_fix(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data", "--data", "someone/essays", "--cache-dir",
                             str(tmp_path / "cache")], capture_output=True, text=True, cwd=PROJECT_ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cannot read the Hub dataset someone/essays: HF_HUB_OFFLINE=1 is set")
    assert "python -m data --data someone/essays" in line and "BUNDLED SAMPLE" not in line
    assert not (tmp_path / "cache").exists()
    with pytest.raises(FileNotFoundError, match="the Hub was not tried"):
        prepare_data("someone/essays", cache_dir=tmp_path / "cache", use_hub=False, quiet=True)


def test_data_hub_id_without_a_text_column_says_so(tmp_path, monkeypatch):
    fake_hub(monkeypatch, [{"id": 1, "score": 0.5}])
    with pytest.raises(FileNotFoundError, match=r"no column of text \(columns: id, score\)"):
        prepare_data("someone/numbers", cache_dir=tmp_path, quiet=True)


# --- the split ----------------------------------------------------------------------------------

def test_split_is_deterministic_and_seeded():
    docs = [essay(i, words=3) for i in range(50)]
    a, b = split_documents(docs, 0.2, seed=1), split_documents(docs, 0.2, seed=1)
    assert a == b and len(a[1]) == 10
    assert split_documents(docs, 0.2, seed=2)[1] != a[1]
    for n, fraction in ((2, 0.01), (2, 0.99), (3, 0.5)):
        train, val, _ = split_documents(docs[:n], fraction, seed=0)
        assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n


def test_split_is_by_essay(tmp_path, tokenizer):
    got = prep(write_csv(tmp_path / "e.csv", [essay(i) for i in range(30)]), tmp_path, val_fraction=0.2)
    train, val = markers(tokenizer, got.train_ids), markers(tokenizer, got.val_ids)
    assert not train & val and len(train | val) == 30 and len(val) == 6


# --- the cache ----------------------------------------------------------------------------------

def test_second_call_loads_from_cache(tmp_path, capsys):
    path = write_csv(tmp_path / "e.csv", [essay(i) for i in range(8)])
    first = prepare_data(path, cache_dir=tmp_path / "cache", use_hub=False)
    second = prepare_data(path, cache_dir=tmp_path / "cache", use_hub=False)
    assert not first.summary.from_cache and second.summary.from_cache
    assert "loaded from cache" in capsys.readouterr().out and "loaded from cache" in str(second.summary)
    np.testing.assert_array_equal(first.train_ids, second.train_ids)
    assert first.summary.n_essays_train == second.summary.n_essays_train
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]


def test_cache_key_follows_input_and_split(tmp_path):
    path = write_csv(tmp_path / "e.csv", [essay(i) for i in range(8)])
    key = prep(path, tmp_path).cache_key
    assert prep(path, tmp_path).cache_key == key
    assert prep(path, tmp_path, seed=7).cache_key != key
    assert prep(path, tmp_path, val_fraction=0.3).cache_key != key
    write_csv(path, [essay(i) for i in range(9)])
    changed = prep(path, tmp_path)
    assert changed.cache_key != key and not changed.summary.from_cache


def test_corrupt_cache_is_rebuilt(tmp_path):
    path = write_csv(tmp_path / "e.csv", [essay(i) for i in range(8)])
    first = prep(path, tmp_path)
    (tmp_path / "cache" / f"tokens-{first.cache_key}-train.npy").write_bytes(b"garbage")
    again = prep(path, tmp_path)
    assert not again.summary.from_cache
    np.testing.assert_array_equal(again.train_ids, first.train_ids)


def test_unwritable_cache_dir_falls_back(tmp_path):
    (tmp_path / "a_file").write_text("x")
    path = write_csv(tmp_path / "e.csv", [essay(i) for i in range(4)])
    for _ in range(2):
        with pytest.warns(UserWarning, match="not writable"):
            got = prepare_data(path, cache_dir=tmp_path / "a_file" / "cache", use_hub=False, quiet=True)
        assert not got.summary.from_cache and got.train_ids.size > 0


# --- bad input: one-line errors, nothing written ----------------------------------------------------

def _no_text_column(tmp):
    return write_csv(tmp / "e.csv", ["a"], columns=("title", "body"))


def _not_utf8(tmp):
    folder = tmp / "essays"
    folder.mkdir()
    (folder / "good.txt").write_text(essay(0), encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return folder


BAD_INPUTS = {
    "missing path": (lambda t: t / "nope.csv", {}, FileNotFoundError, "does not exist.*--data"),
    "no txt in dir": (lambda t: (t / "d").mkdir() or t / "d", {}, ValueError, "no .txt files"),
    "no text column": (_no_text_column, {}, ValueError, "no 'text' column.*columns found: title, body"),
    "empty corpus": (lambda t: write_csv(t / "e.csv", ["", "  \n\t", ""]), {}, ValueError, "holds no text"),
    "too short": (lambda t: write_csv(t / "e.csv", ["a b c", "d e f"]), {"context_length": 64},
                  ValueError, "needs at least 65"),
    "not utf-8": (_not_utf8, {}, ValueError, "latin1.txt is not UTF-8"),
    "not utf-8 csv": (lambda t: (t / "e.csv").write_bytes(b"text\ncaf\xe9\n") and t / "e.csv", {},
                      ValueError, "e.csv is not UTF-8"),
    "val fraction 0": (lambda t: write_csv(t / "e.csv", ["a", "b"]), {"val_fraction": 0.0}, ValueError, "between 0"),
    "val fraction 1": (lambda t: write_csv(t / "e.csv", ["a", "b"]), {"val_fraction": 1.0}, ValueError, "between 0"),
    "val fraction -": (lambda t: write_csv(t / "e.csv", ["a", "b"]), {"val_fraction": -0.1}, ValueError, "between 0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, case):
    make, kwargs, error, pattern = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(error, match=pattern) as err:
        prep(path, tmp_path, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_missing_env_var_path_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "gone.csv"))
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR):
        prepare_data(cache_dir=tmp_path / "cache", use_hub=False, quiet=True)


# --- batches ------------------------------------------------------------------------------------

RAMP = np.arange(5000, dtype=np.uint16)          # ids equal to their position: windows are checkable


def test_train_batches_shapes_and_shift():
    batches = TrainBatches(RAMP, batch_size=4, context_length=16, seed=0)
    x, y = batches.next()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    torch.testing.assert_close(y, x + 1)                                   # y is x shifted by one
    torch.testing.assert_close(x, x[:, :1] + torch.arange(16))             # contiguous windows
    assert int(y.max()) < len(RAMP)
    assert batches.tokens_seen == 64 and batches.epoch == pytest.approx(64 / 5000)


def test_train_batches_resume_exactly():
    batches = TrainBatches(RAMP, batch_size=3, context_length=8, seed=5)
    [batches.next() for _ in range(3)]
    buffer = io.BytesIO()
    torch.save(batches.state_dict(), buffer)
    expected = [batches.next() for _ in range(3)]
    buffer.seek(0)
    resumed = TrainBatches(RAMP, batch_size=3, context_length=8, seed=999)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.tokens_seen == 3 * 3 * 8
    for (x, y), (rx, ry) in zip(expected, [resumed.next() for _ in range(3)], strict=True):
        torch.testing.assert_close(rx, x)
        torch.testing.assert_close(ry, y)
    with pytest.raises(ValueError, match="batch_size saved 3 vs now 4"):
        TrainBatches(RAMP, batch_size=4, context_length=8).load_state_dict(batches.state_dict())


def test_batches_need_one_window():
    with pytest.raises(ValueError, match="at least context_length\\+1 = 17"):
        TrainBatches(RAMP[:16], batch_size=2, context_length=16)
    with pytest.raises(ValueError, match="at least"):
        next(eval_batches(RAMP[:16], 2, 16))


def test_eval_batches_cover_the_split_in_order():
    ids = RAMP[:1000]
    batches = list(eval_batches(ids, batch_size=4, context_length=32))
    xs, ys = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    n_windows = (1000 - 1) // 32
    assert xs.shape == (n_windows, 32) and batches[-1][0].shape[0] == n_windows % 4
    torch.testing.assert_close(ys.flatten(), torch.arange(1, 1 + n_windows * 32))   # each target once, in order
    assert len(list(eval_batches(ids, 4, 32, max_batches=2))) == 2


# --- command line -----------------------------------------------------------------------------------

def test_cli_prints_summary(tmp_path, capsys):
    path = write_csv(tmp_path / "e.csv", [essay(i) for i in range(5)])
    assert cli_main(["--data", str(path), "--cache-dir", str(tmp_path / "c"), "--no-hub"]) == 0
    out = capsys.readouterr().out
    assert "essays" in out and "tokens" in out and "tokenized now" in out and str(path) in out


def test_cli_error_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data", "--data", str(tmp_path / "nope.csv"), "--no-hub"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


# --- the real essays ------------------------------------------------------------------------------

def _real_corpus() -> Path | None:
    candidates = [os.environ.get(DATA_ENV_VAR), PROJECT_ROOT.parent / "shared" / "data" / "paul_graham_essays.csv"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


REAL = _real_corpus()


@pytest.mark.skipif(REAL is None, reason=f"real essays not found (set {DATA_ENV_VAR})")
def test_real_essays(tmp_path):
    first = prepare_data(REAL, cache_dir=tmp_path, use_hub=False, quiet=True, context_length=512)
    s = first.summary
    assert s.n_essays_train + s.n_essays_val == 176 and s.n_essays_val == 18
    assert 450_000 < s.tokens_train + s.tokens_val < 560_000
    second = prepare_data(REAL, cache_dir=tmp_path, use_hub=False, quiet=True)
    assert second.summary.from_cache and isinstance(second.summary, DataSummary)
    np.testing.assert_array_equal(first.val_ids, second.val_ids)
    docs = sources.read_documents(sources.Source("real", path=REAL))
    assert split_documents(docs, 0.1, 1337) == split_documents(docs, 0.1, 1337)
    assert split_documents(docs, 0.1, 1337)[1] != split_documents(docs, 0.1, 1338)[1]
