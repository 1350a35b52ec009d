"""The ablation harness (ablation/run.py) and its report (ablation/report.py).

One small study end to end: a 2x2 grid on TINY (vocabulary and context shrunk) over the bundled
sample essays copied to tmp, a few steps per run. It must write 4 records, a table and plots;
a second call must skip all 4; deleting one record must re-run only that one; bad grid syntax and
unknown keys must fail with one line before any work. Everything in tmp_path, CPU only.
"""

from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest

from ablation import report as ablation_report
from ablation import run as ablate
from constants import DATA_DIR, PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("offline_no_data_env")

GRID = ["--grid", "kv_latent_dim=8,16", "--grid", "top_k=1,2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bundled sample essays, copied to tmp (their token cache goes to tmp as well)."""
    root = tmp_path_factory.mktemp("ablate_data")
    shutil.copytree(DATA_DIR / "sample", root / "essays")
    return root


def argv(corpus, out, *extra):
    return ["--study", "toy", "--preset", "tiny", *GRID, "--seeds", "0", "--tokens", "192", "--batch-size", "4",
            "--context-length", "16", "--vocab-top", "256", "--data", str(corpus / "essays"),
            "--cache-dir", str(corpus / "cache"), "--out", str(out), *extra]


def count_runs(monkeypatch) -> list:
    """Record the name of every run that really trains."""
    calls, real = [], ablate.run_one

    def spy(spec, *args, **kwargs):
        calls.append(spec.file_name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(ablate, "run_one", spy)
    return calls


def test_grid_records_report_skip_and_resume(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "toy"
    calls = count_runs(monkeypatch)
    # 1) four runs, four records, a report with one table row per run, and the plots
    assert ablate.main(argv(corpus, out, "--report")) == 0
    records = sorted(out.glob("*.json"))
    assert len(records) == 4 and len(calls) == 4
    rec = json.loads(records[0].read_text())
    for field in ("key", "model_config", "seed", "code_version", "budget", "final_val_loss", "best_val_loss",
                  "tokens_per_s", "params", "kv_cache_bytes_per_token", "expert_load", "wall_time_s", "command"):
        assert field in rec, field
    assert rec["budget"]["tokens"] == 192 and rec["budget"]["steps"] == 3          # 192 / (4 * 16)
    assert rec["model_config"]["vocab_size"] == 256 and rec["model_config"]["context_length"] == 16
    assert rec["kv_cache_bytes_per_token"]["fp32"] == 2 * rec["kv_cache_bytes_per_token"]["bf16"]
    assert rec["params"]["active"] < rec["params"]["total"]
    load = rec["expert_load"]
    assert load["layers"] == ["layer1"] and load["final_max_ratio"][0] >= 1.0 and load["series"]
    assert rec["code_version"] == "unknown" or len(rec["code_version"]["commit"]) == 40
    report = (out / "report.md").read_text()
    assert sum(line.startswith("| kv_latent_dim=") for line in report.splitlines()) == 4
    assert "mean ± sample std" in report
    for png in ("val_loss_by_run.png", "loss_vs_kv_cache.png", "loss_vs_active_params.png",
                "expert_load_over_time.png", "expert_load_final.png"):
        assert (out / png).stat().st_size > 1000, png
    # 2) the same command again: every run is skipped
    before = {p.name: p.read_text() for p in records}
    calls.clear()
    capsys.readouterr()
    assert ablate.main(argv(corpus, out)) == 0
    assert calls == [] and capsys.readouterr().out.count(": done (skip)") == 4
    assert {p.name: p.read_text() for p in out.glob("*.json")} == before
    # 3) one record deleted (and one cut short by a kill): only those run again
    records[1].unlink()
    records[2].write_text(records[2].read_text()[:100])
    assert ablate.main(argv(corpus, out)) == 0
    assert sorted(calls) == sorted([records[1].name, records[2].name])
    # 4) a different budget is a different key: nothing is skipped
    calls.clear()
    assert ablate.main(argv(corpus, tmp_path / "other", "--tokens", "64", "--reuse", str(out))) == 0
    assert len(calls) == 4
    # 5) --reuse copies a matching record from another study instead of training it again
    calls.clear()
    assert ablate.main(argv(corpus, tmp_path / "copy", "--reuse", str(out))) == 0
    assert calls == [] and all("reused_from" in json.loads(p.read_text()) for p in (tmp_path / "copy").glob("*.json"))


@pytest.mark.parametrize("bad, message", [
    (["--grid", "top_k"], "--grid 'top_k': expected KEY=V1,V2"),
    (["--grid", "top_k=1,"], "expected KEY=V1,V2"),
    (["--grid", "top_kk=1,2"], "unknown key 'top_kk'"),
    (["--variant", "mha"], "expected NAME:KEY=VALUE"),
    (["--variant", "x:atention=mha"], "unknown key 'atention'"),
    (["--variant", "x:attention=gqa"], "n_kv_heads"),
    (["--set", "top_k=two"], "expects an integer"),
    (["--set", "seed=3"], "set by the harness's own flags"),
    (["--grid", "top_k=1,8"], "top_k"),
])
def test_bad_input_fails_with_one_line_before_any_work(bad, message, monkeypatch, capsys, tmp_path):
    def no_work(*_):
        raise AssertionError("work started despite a bad flag")

    monkeypatch.setattr(ablate, "load_data", no_work)
    assert ablate.main(["--tokens", "64", "--out", str(tmp_path / "x"), *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ablation: error:") and message in err, err
    assert not (tmp_path / "x").exists()


def test_budget_flags_and_report_errors(capsys, tmp_path):
    assert ablate.main(["--grid", "top_k=1,2"]) == 2
    assert "exactly one budget" in capsys.readouterr().err
    assert ablate.main(["--tokens", "10", "--time-budget", "1"]) == 2
    assert ablate.main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert ablate.main(["report", str(tmp_path)]) == 2
    assert "no ablation records" in capsys.readouterr().err


def test_expand_grid_times_variants():
    runs = ablate.expand([("kv_latent_dim", [32, 64]), ("top_k", [1, 2])], [("mha", {"attention": "mha"}), ("mla", {})])
    assert len(runs) == 8
    assert runs[0] == ("mha,kv_latent_dim=32,top_k=1", {"attention": "mha", "kv_latent_dim": 32, "top_k": 1})
    assert ablate.expand([], []) == [("base", {})]


def test_compact_vocabulary_keeps_the_most_frequent_tokens():
    train = np.array([5, 5, 5, 7, 7, 9, 1000])
    val = np.array([7, 9, 1000, 42])
    new_train, new_val, coverage = ablate.compact_vocabulary(train, val, 3)
    assert new_train.tolist() == [0, 0, 0, 1, 1, 2, 2]           # 5 -> 0, 7 -> 1, the rest -> "other" 2
    assert new_val.tolist() == [1, 2, 2, 2]
    assert coverage["val"] == pytest.approx(0.25)


def test_spread_and_table_numbers():
    s = ablation_report.spread([3.0, 3.2])
    assert s["mean"] == pytest.approx(3.1) and s["std"] == pytest.approx(0.1414, abs=1e-4)
    assert (s["min"], s["max"], s["n"]) == (3.0, 3.2, 2)
    assert ablation_report.spread([2.0])["std"] == 0.0


def test_delta_standard_error_and_verdicts():
    def row(name, losses):
        return {"name": name, "val_loss": ablation_report.spread(losses)}

    base = row("base", [5.0, 5.1, 5.2])                          # std 0.1
    far, near = row("far", [5.5, 5.6, 5.7]), row("near", [5.05, 5.15, 5.25])
    c = ablation_report.compare(far, base)
    assert c["delta"] == pytest.approx(0.5) and c["se"] == pytest.approx((2 * 0.01 / 3) ** 0.5)
    assert c["resolved"] is True and ablation_report.verdict_text(c).startswith("resolved (6.1 SE)")
    c = ablation_report.compare(near, base)
    assert c["resolved"] is False and "needs Δ beyond ±0.163" in ablation_report.verdict_text(c)
    assert ablation_report.compare(row("one", [5.9]), base)["resolved"] is None      # one seed: no verdict


def test_fill_tables_rewrites_only_the_marked_blocks(tmp_path):
    import json

    study = tmp_path / "results" / "demo"
    study.mkdir(parents=True)
    for seed, loss in enumerate([5.0, 5.1, 5.2]):
        record = {"key": f"k{seed}", "study": "demo", "name": "base", "seed": seed, "overrides": {},
                  "final_val_loss": loss, "best_val_loss": loss, "kv_cache_bytes_per_token": {"bf16": 96},
                  "params": {"active_non_embedding": 10, "active": 20, "total": 30},
                  "model_config": {"ffn": "dense", "n_routed_experts": 8, "top_k": 2},
                  "budget": {"tokens": 100}, "tokens_per_s": 1.0, "wall_time_s": 1.0}
        (study / f"base__seed{seed}.json").write_text(json.dumps(record))
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- table: demo -->\nstale\n<!-- /table -->\nmiddle\n"
                   "<!-- table: missing -->\nold\n<!-- /table -->\nend\n")
    assert ablation_report.fill_tables(doc, tmp_path / "results") == ["demo"]
    text = doc.read_text()
    assert "stale" not in text and "| base | 3 | 5.100 ± 0.100 | 5.000–5.200 |" in text
    assert "Not run yet at this budget: `bash docs/results/run_studies.sh missing`" in text
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n")
    before = text
    ablation_report.fill_tables(doc, tmp_path / "results")
    assert doc.read_text() == before                                  # idempotent


def test_committed_records_are_what_their_own_command_builds_today():
    """A changed default (e.g. train.py's tuned recipe) must not silently invalidate docs/results/: every
    committed record's model and train configs equal what its own command builds now, so the run keys
    match and `run_studies.sh` still skips the run instead of training it again."""
    paths = sorted((PROJECT_ROOT / "docs" / "results").glob("*/*.json"))
    assert len(paths) >= 100, "the committed study records are missing"
    for path in paths:
        record = json.loads(path.read_text())
        words = shlex.split(record["command"])
        assert words[:3] == ["python", "-m", "ablation"], path
        specs = ablate.build_specs(ablate.build_parser().parse_args(words[3:]))
        spec = next((s for s in specs if (s.name, s.seed) == (record["name"], record["seed"])), None)
        assert spec is not None, f"{path}: its command no longer builds run {record['name']} seed {record['seed']}"
        as_json = lambda cfg: json.loads(json.dumps(cfg.to_dict()))      # noqa: E731 (tuples -> lists)
        assert as_json(spec.train_cfg) == record["train_config"], f"{path}: the train config changed"
        assert as_json(spec.model_cfg) == record["model_config"], f"{path}: the model config changed"
