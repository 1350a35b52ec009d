"""Turn ablation records (the harness's JSON files) into a Markdown table and plots.

    python -m ablation report runs/ablations/latent [more dirs] [--out DIR]

Per run (a variant over its seeds) the table gives the final validation loss as mean ± sample
standard deviation (ddof=1) over seeds, and the min-max range next to it. "Δ vs first" is the
difference of means to the first run listed (the baseline of the study) ± its standard error
SE = sqrt(s_a^2/n_a + s_b^2/n_b) (Welch); the verdict calls a difference *resolved* when
|Δ| > 2 SE, else *not resolved* and says how large it would have had to be. With 3 seeds each
std is itself uncertain (its relative error is about 50%), so a verdict near the line is a lean,
not a proof.
Expert load is max_i(c_i) / mean_i(c_i) per MoE layer per step (1.0 = perfectly balanced),
averaged over the main MoE layers (MTP layers excluded).

Plots (PNG next to report.md): validation loss per run (every seed a dot), loss vs KV-cache
bytes per token and vs active parameters (when the runs differ in them), and for MoE runs the
max/ideal load over training and its final value per run.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

from common.cli import CommandLine, path_arg
from figures import plotting


def load_records(dirs, header: bool = False) -> list[dict]:
    """Every record in the folders, in run order (study, then the order the harness ran them). A *.json that
    is not a file or not JSON is skipped with a warning; a record (a JSON object with a 'key') whose fields
    are not what the harness writes is a RecordError naming the file and the field (header: also the fields
    report.md's header reads)."""
    records = []
    for d in dirs:
        for path in sorted(Path(d).glob("*.json")):
            if not path.is_file():
                print(f"warning: {path} is not a file; skipped", file=sys.stderr)
                continue
            try:
                record = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                print(f"warning: {path} is not valid JSON; skipped", file=sys.stderr)
                continue
            if isinstance(record, dict) and "key" in record:
                check_record(record, path)
                if header:
                    check_record(record, path, HEADER_FIELDS)
                records.append(record)
    return sorted(records, key=lambda r: (r["study"], r.get("order", 0), r["name"], r["seed"]))


class RecordError(ValueError):
    """An ablation record whose fields are missing or of the wrong type (an edited or foreign file)."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value) -> bool:
    return isinstance(value, list) and all(map(_number, value))


def _fields(**tests):
    return lambda value: isinstance(value, dict) and all(test(value.get(k)) for k, test in tests.items())


def _expert_load(value) -> bool:
    if value is None:
        return True
    if not (isinstance(value, dict) and isinstance(value.get("layers"), list)
            and all(isinstance(n, str) for n in value["layers"])):
        return False
    n = len(value["layers"])
    per_layer = all(_numbers(value.get(k)) and len(value[k]) == n
                    for k in ("final_max_ratio", "mean_max_ratio", "final_dead_experts"))
    series = isinstance(value.get("series"), list) and all(
        isinstance(p, dict) and _number(p.get("tokens")) and _numbers(p.get("max_ratio")) and len(p["max_ratio"]) == n
        for p in value["series"])
    return per_layer and series


# field -> (what it must be, the test): every field the report reads from a record
RECORD_FIELDS = {
    "study": ("a string", lambda v: isinstance(v, str)),
    "name": ("a string", lambda v: isinstance(v, str)),
    "seed": ("an integer", _integer),
    "order": ("an integer", lambda v: v is None or _integer(v)),
    "final_val_loss": ("a finite number (a run that diverged has no loss to compare)", _number),
    "best_val_loss": ("None or a finite number", lambda v: v is None or _number(v)),
    "tokens_per_s": ("a finite number", _number),
    "wall_time_s": ("a finite number", _number),
    "overrides": ("an object", lambda v: isinstance(v, dict)),
    "kv_cache_bytes_per_token": ("an object with a bf16 number", _fields(bf16=_number)),
    "params": ("an object with the numbers active_non_embedding, active, total",
               _fields(active_non_embedding=_number, active=_number, total=_number)),
    "model_config": ("an object with ffn, n_routed_experts and top_k",
                     _fields(ffn=lambda v: isinstance(v, str), n_routed_experts=_integer,
                             top_k=lambda v: _integer(v) and v > 0)),
    "budget": ("an object with an integer tokens", _fields(tokens=_integer)),
    "expert_load": ("None or per-layer lists of numbers", _expert_load),
}
# and what report.md's header reads besides (fill_tables' tables do not)
HEADER_FIELDS = {
    "budget": ("an object with the integers tokens, steps, tokens_per_step",
               _fields(tokens=_integer, steps=_integer, tokens_per_step=_integer)),
    "code_version": ("a string or an object with commit and dirty",
                     lambda v: isinstance(v, str) or _fields(commit=lambda c: isinstance(c, str),
                                                            dirty=lambda d: isinstance(d, bool))(v)),
    "machine": ("an object with device, dtype, threads and torch",
                lambda v: isinstance(v, dict) and all(k in v for k in ("device", "dtype", "threads", "torch"))),
}


def check_record(record: dict, path, rules: dict = RECORD_FIELDS) -> None:
    for field, (expected, test) in rules.items():
        if field not in record and field not in ("order", "expert_load", "best_val_loss"):
            raise RecordError(f"{path}: the record has no '{field}'; re-run it with python -m ablation, or move "
                              "the file out of the folder")
        if not test(record.get(field)):
            value = record[field]
            shown = repr(value) if isinstance(value, (str, int, float)) and len(repr(value)) < 40 \
                else f"a {type(value).__name__}"
            raise RecordError(f"{path}: its '{field}' is {shown}, expected {expected}; re-run it with "
                              "python -m ablation, or move the file out of the folder")


def spread(values: list[float]) -> dict:
    """Mean, sample std (ddof=1; 0 for one value), min and max of a list of numbers."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def main_layer_load(record: dict, which: str = "final_max_ratio") -> float | None:
    """Mean over the main MoE layers of a per-layer load statistic (None for a dense model)."""
    load = record.get("expert_load")
    if not load:
        return None
    values = [v for name, v in zip(load["layers"], load[which], strict=True) if name.startswith("layer")]
    return statistics.fmean(values) if values else None


def summarize(records: list[dict]) -> list[dict]:
    """One row per (study, run name): spreads over seeds of the numbers the table shows."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["study"], r["name"]), []).append(r)
    rows = []
    for (study, name), group in groups.items():
        first = group[0]
        dead = [sum(v for n, v in zip(r["expert_load"]["layers"], r["expert_load"]["final_dead_experts"],
                                      strict=True) if n.startswith("layer")) if r.get("expert_load") else None
                for r in group]
        rows.append({
            "study": study, "name": name, "overrides": first["overrides"], "seeds": [r["seed"] for r in group],
            "val_loss": spread([r["final_val_loss"] for r in group]),
            "val_losses": [r["final_val_loss"] for r in group],
            "best_val_loss": spread([r["best_val_loss"] for r in group]),
            "kv_bytes_bf16": first["kv_cache_bytes_per_token"]["bf16"],
            "active_non_embedding": first["params"]["active_non_embedding"],
            "active": first["params"]["active"], "total": first["params"]["total"],
            "load_final": spread([main_layer_load(r) for r in group]),
            "load_mean": spread([main_layer_load(r, "mean_max_ratio") for r in group]),
            "dead_final": spread(dead),
            "collapse_ratio": (first["model_config"]["n_routed_experts"] / first["model_config"]["top_k"]
                               if first["model_config"]["ffn"] == "moe" else None),
            "tokens": first["budget"]["tokens"], "tokens_per_s": spread([r["tokens_per_s"] for r in group]),
            "wall_time_s": spread([r["wall_time_s"] for r in group]),
        })
    return rows


def _pm(s: dict, digits: int = 3) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _range(s: dict, digits: int = 3) -> str:
    return "–" if s["mean"] is None else f"{s['min']:.{digits}f}–{s['max']:.{digits}f}"


COLUMNS = ("run", "seeds", "val loss (mean ± std)", "min–max", "Δ vs first", "verdict", "KV cache B/token (bf16)",
           "active params (non-emb.)", "total params", "max/ideal load, final", "max/ideal, run mean",
           "dead experts", "tokens/s")


def compare(row: dict, base: dict) -> dict:
    """Δ = mean(row) - mean(base), its standard error and the verdict (resolved: |Δ| > 2 SE).

    SE needs a spread on both sides (>= 2 seeds each); without it the verdict is 'one seed'.
    """
    a, b = row["val_loss"], base["val_loss"]
    if a["mean"] is None or b["mean"] is None:
        return {"delta": None, "se": None, "resolved": None}
    delta = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return {"delta": delta, "se": None, "resolved": None}
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    return {"delta": delta, "se": se, "resolved": abs(delta) > 2 * se}


def delta_digits(c: dict) -> int:
    """Decimals for Δ ± SE: 3, or 4 where Δ and SE rounded to 3 would give another ratio than the verdict's
    (0.0172 ± 0.0085 is 2.0 SE; printed as 0.017 ± 0.009 a reader would compute 1.9). Only a resolved row
    prints a ratio; the others keep 3."""
    if not c.get("se") or not c.get("resolved"):
        return 3
    shown = round(abs(c["delta"]), 3) / max(round(c["se"], 3), 1e-12)
    return 3 if round(shown, 1) == round(abs(c["delta"]) / c["se"], 1) else 4


def delta_text(c: dict) -> str:
    """Δ ± SE with the decimals of `delta_digits`, so that their ratio reads as the verdict says."""
    d = delta_digits(c)
    return f"{c['delta']:+.{d}f}" if c["se"] is None else f"{c['delta']:+.{d}f} ± {c['se']:.{d}f}"


def verdict_text(c: dict) -> str:
    if c["delta"] is None:
        return "–"
    if c["resolved"] is None:
        return "one seed: no spread to judge"
    if c["resolved"]:
        return f"resolved ({abs(c['delta']) / c['se']:.1f} SE)"
    return f"not resolved (needs Δ beyond ±{2 * c['se']:.{delta_digits(c)}f})"


def table_cells(rows: list[dict]) -> list[dict]:
    """Each row's formatted cells by column name; Δ and the verdict are against the first row."""
    cells = []
    for i, row in enumerate(rows):
        c = compare(row, rows[0])
        delta = "–" if c["delta"] is None or i == 0 else delta_text(c)
        dead = row["dead_final"]["mean"]
        values = (row["name"], len(row["seeds"]), _pm(row["val_loss"]), _range(row["val_loss"]), delta,
                  "baseline" if i == 0 else verdict_text(c), f"{row['kv_bytes_bf16']:,}",
                  f"{row['active_non_embedding']:,}", f"{row['total']:,}", _pm(row["load_final"], 2),
                  _pm(row["load_mean"], 2), "–" if dead is None else f"{dead:.1f}",
                  f"{row['tokens_per_s']['mean']:,.0f}")
        cells.append(dict(zip(COLUMNS, map(str, values), strict=True)))
    return cells


def markdown_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """The study table (all COLUMNS, or the ones named): mean ± std (ddof=1) over seeds, min-max, Δ."""
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {COLUMNS}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells[c] for c in columns) + " |" for cells in table_cells(rows)]
    return "\n".join(lines)


def load_series(records: list[dict], name: str) -> tuple[list, list]:
    """Seed-mean over time of the main-layer-mean max/ideal load of one run (x = training tokens)."""
    per_seed = []
    for r in records:
        if r["name"] != name or not r.get("expert_load"):
            continue
        layers = r["expert_load"]["layers"]
        per_seed.append([(p["tokens"], statistics.fmean(v for n, v in zip(layers, p["max_ratio"], strict=True)
                                                        if n.startswith("layer"))) for p in r["expert_load"]["series"]])
    if not per_seed:
        return [], []
    n = min(len(s) for s in per_seed)
    return [per_seed[0][i][0] for i in range(n)], [statistics.fmean(s[i][1] for s in per_seed) for i in range(n)]


PLOTS = ("val_loss_by_run.png", "loss_vs_kv_cache.png", "loss_vs_active_params.png", "expert_load_over_time.png",
         "expert_load_final.png")


def make_plots(records: list[dict], rows: list[dict], out: Path, title: str) -> list[str]:
    """Save the study's PNGs into `out`; return their file names."""
    import matplotlib.pyplot as plt  # each figure is saved and closed: nothing is shown

    saved = []
    for stale in PLOTS:                                              # plots of an earlier report of this folder
        (out / stale).unlink(missing_ok=True)

    def save(fig, name):
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        saved.append(name)

    save(plotting.plot_ablation_losses({r["name"]: r["val_losses"] for r in rows}, title=f"{title}: validation loss"),
         "val_loss_by_run.png")
    for key, name, xlabel, what in (
            ("kv_bytes_bf16", "loss_vs_kv_cache.png", "KV cache per token, all layers (bytes, bf16)", "KV cache"),
            ("active_non_embedding", "loss_vs_active_params.png",
             "active parameters per token, output head excluded (count)", "active parameters")):
        values = [r[key] for r in rows]
        if min(values) > 0 and max(values) / min(values) > 1.05:       # runs that really differ in this cost
            points = [{"label": r["name"], "x": r[key], "y": r["val_loss"]["mean"], "yerr": r["val_loss"]["std"],
                       "seeds": r["val_losses"]} for r in rows]
            save(plotting.plot_loss_vs_cost(points, xlabel=xlabel, title=f"{title}: loss vs {what}"),
                 name)
    moe_rows = [r for r in rows if r["load_final"]["mean"] is not None]
    if moe_rows:
        ceilings = {r["collapse_ratio"] for r in moe_rows}
        ceiling = ceilings.pop() if len(ceilings) == 1 else None
        series = {r["name"]: load_series(records, r["name"]) for r in moe_rows}
        save(plotting.plot_expert_load_over_time(series, title=f"{title}: expert load over training",
                                                 ceiling=ceiling), "expert_load_over_time.png")
        bars = [{"label": r["name"], "y": r["load_final"]["mean"], "yerr": r["load_final"]["std"]} for r in moe_rows]
        save(plotting.plot_expert_load_final(bars, title=f"{title}: final expert load", ceiling=ceiling),
             "expert_load_final.png")
    return saved


def write_report(dirs, out, plots: bool = True) -> Path:
    """report.md (+ PNGs) in `out` from the records in `dirs`; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(dirs, header=True)
    if not records:
        raise ValueError(f"no ablation records (*.json with a 'key') in {', '.join(map(str, dirs))}")
    parts = []
    for study in dict.fromkeys(r["study"] for r in records):
        recs = [r for r in records if r["study"] == study]
        rows = summarize(recs)
        first = recs[0]
        version = first["code_version"]
        if not isinstance(version, str):
            version = version["commit"][:10] + (" (dirty)" if version["dirty"] else "")
        machine = first["machine"]
        parts += [f"## {study}", "",
                  f"Budget: {first['budget']['tokens']:,} training tokens per run "
                  f"({first['budget']['steps']} steps of {first['budget']['tokens_per_step']:,}); "
                  f"{machine['device']} {machine['dtype']}, {machine['threads']} thread(s), torch {machine['torch']}; "
                  f"code {version}. Spread: mean ± sample std (ddof=1) over seeds, and min–max.", ""]
        if first.get("command"):
            parts += ["```", first["command"], "```", ""]
        parts += [markdown_table(rows), ""]
        if plots:
            sub = out if len({r["study"] for r in records}) == 1 else out / study
            sub.mkdir(parents=True, exist_ok=True)
            for name in make_plots(recs, rows, sub, study):
                rel = (sub / name).relative_to(out)
                parts.append(f"![{name}]({rel.as_posix()})")
            parts.append("")
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


DOC_COLUMNS = ("run", "seeds", "val loss (mean ± std)", "min–max", "Δ vs first", "verdict", "KV cache B/token (bf16)",
               "active params (non-emb.)", "max/ideal load, final", "max/ideal, run mean", "dead experts")
_TABLE_BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def fill_tables(doc: Path, results_root: Path) -> list[str]:
    """Rewrite every `<!-- table: STUDY -->...<!-- /table -->` block of `doc` with the current table of
    results_root/STUDY (or a 'not run yet' line); returns the studies filled. The prose around the
    blocks is left alone, so the numbers in a document can never drift from its records."""
    filled = []

    def table(match: re.Match) -> str:
        study = match.group(2)
        records = load_records([results_root / study]) if (results_root / study).is_dir() else []
        if records:
            body = markdown_table(summarize(records), columns=DOC_COLUMNS) + "\n"
            filled.append(study)
        else:
            body = f"*Not run yet at this budget: `bash docs/results/run_studies.sh {study}`.*\n"
        return match.group(1) + body + match.group(4)

    text = doc.read_text()
    doc.write_text(_TABLE_BLOCK.sub(table, text))
    return filled


def main(argv: list[str] | None = None) -> int:
    p = CommandLine(prog="python -m ablation report", description="Markdown table and plots from ablation records")
    p.add_argument("dirs", nargs="+", help="folders holding the harness's JSON records")
    p.add_argument("--out", type=path_arg, help="where report.md and the PNGs go (default: the first folder)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--fill", metavar="DOC", help="instead: rewrite the '<!-- table: STUDY -->' blocks of DOC "
                   "from the study folders under the one folder given")
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        print(f"ablation report: error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.fill:
        if len(args.dirs) != 1 or not Path(args.fill).is_file():
            print("ablation report: error: --fill DOC needs an existing DOC and one folder holding the study "
                  "folders, e.g. --fill docs/results.md docs/results", file=sys.stderr)
            return 2
        try:
            filled = fill_tables(Path(args.fill), Path(args.dirs[0]))
        except ValueError as err:
            print(f"ablation report: error: {err}", file=sys.stderr)
            return 2
        print(f"filled the tables of {', '.join(filled) or 'no study'} in {args.fill}")
        return 0
    try:
        path = write_report(args.dirs, args.out or args.dirs[0], plots=not args.no_plots)
    except (OSError, ValueError) as err:           # a bad record, or an --out that cannot be written
        print(f"ablation report: error: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
