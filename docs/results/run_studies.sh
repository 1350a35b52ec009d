#!/usr/bin/env bash
# Regenerate every ablation study of docs/results.md. Finished runs are skipped (delete a study's
# *.json to recompute it); each study then writes its report.md and plots next to its records.
# Run from the repository root with the venv active:
#     bash docs/results/run_studies.sh [study ...]        # default: the learning-rate sweep, then all nine
#     JOBS=2 bash docs/results/run_studies.sh             # two runs side by side (one thread each)
#     EXTRA=--dry-run bash docs/results/run_studies.sh    # list the runs only
# Budget: 983,040 tokens per run (480 optimizer steps of 16 x 128), seeds 0 1 2: 72 distinct runs (the
# base run is trained once and reused). Measured on a 2-core CPU, one thread per run: a median of 3.3
# minutes a run (2.4-14 minutes with the model and the machine's load), about 5 hours of single-thread
# time in all, so about 2.5-3 hours of wall time with JOBS=2; records resume, so it can be spread over
# several sittings.
set -euo pipefail
DATA=${DATA:-../shared/data/paul_graham_essays.csv}
JOBS=${JOBS:-1}
R=docs/results
# Peak learning rate of every study, picked once by the sweep on the base model (study lr_sweep:
# 1e-3 4.579, 2e-3 4.464, 4e-3 4.411, 8e-3 4.482 validation loss, seed 0, full budget).
LR=${LR:-0.004}
# The study base: TINY widened to d_model 128, 3 layers (1 dense + 2 MoE), 8 routed experts of width
# 128 + 1 shared, top-2, MLA with a 64-wide latent; the dense layer fixed at 384 (= the MoE's active
# width) so no study changes it by accident; the router-bias rate gamma = 0.01 (the presets' value).
MODEL=d_model=128,n_layers=3,kv_latent_dim=64,n_routed_experts=8,expert_hidden_dim=128,dense_hidden_dim=384,bias_update_rate=0.01
COMMON=(--preset tiny --context-length 128 --batch-size 16 --vocab-top 4096 --tokens 983040 --evals 4
        --data "$DATA" --report)
BASE=("${COMMON[@]}" --set "$MODEL,lr=$LR" --seeds 0 1 2)
REUSE=(--reuse $R/lr_sweep --reuse $R/latent_width)      # the base run appears in every study: train it once

lr_sweep()       { python -m ablation --study lr_sweep --out $R/lr_sweep "${COMMON[@]}" --set "$MODEL" --seeds 0 "$@" \
    --grid lr=0.001,0.002,0.004,0.008; }
latent_width()   { python -m ablation --study latent_width --out $R/latent_width "${BASE[@]}" "${REUSE[@]}" "$@" \
    --variant mla-c64:kv_latent_dim=64 --variant mla-c32:kv_latent_dim=32 --variant mla-c128:kv_latent_dim=128 \
    --variant mha:attention=mha --variant gqa-2kv:attention=gqa,n_kv_heads=2 --variant mqa:attention=mqa; }
# MLA's latent chosen so that its cache (d_c + d_R = d_c + 16 values per layer and token) equals each
# baseline's (MHA 2 x 4 heads x 32 = 256, GQA-2 128, MQA 64): the comparison DeepSeek-V2 argues from.
equal_kv_cache() { python -m ablation --study equal_kv_cache --out $R/equal_kv_cache "${BASE[@]}" "${REUSE[@]}" "$@" \
    --variant mha:attention=mha --variant mla-c240:kv_latent_dim=240 \
    --variant gqa-2kv:attention=gqa,n_kv_heads=2 --variant mla-c112:kv_latent_dim=112 \
    --variant mqa:attention=mqa --variant mla-c48:kv_latent_dim=48; }
granularity()    { python -m ablation --study granularity --out $R/granularity "${BASE[@]}" "${REUSE[@]}" "$@" \
    --variant 8x128-top2:n_routed_experts=8,expert_hidden_dim=128,top_k=2,n_shared_experts=1 \
    --variant 16x64-top4:n_routed_experts=16,expert_hidden_dim=64,top_k=4,n_shared_experts=2 \
    --variant 32x32-top8:n_routed_experts=32,expert_hidden_dim=32,top_k=8,n_shared_experts=4; }
shared_experts() { python -m ablation --study shared_experts --out $R/shared_experts "${BASE[@]}" "${REUSE[@]}" "$@" \
    --grid n_shared_experts=1,0,2; }
top_k()          { python -m ablation --study top_k --out $R/top_k "${BASE[@]}" "${REUSE[@]}" "$@" --grid top_k=2,1,4; }
balancing()      { python -m ablation --study balancing --out $R/balancing "${BASE[@]}" "${REUSE[@]}" "$@" \
    --grid balancing=aux_free,none,aux_loss,both; }
bias_rate()      { python -m ablation --study bias_rate --out $R/bias_rate "${BASE[@]}" "${REUSE[@]}" "$@" \
    --variant gamma-0.01:bias_update_rate=0.01 --variant gamma-0.001:bias_update_rate=0.001 \
    --variant gamma-0.1:bias_update_rate=0.1; }
dense_vs_moe()   { python -m ablation --study dense_vs_moe --out $R/dense_vs_moe "${BASE[@]}" "${REUSE[@]}" "$@" \
    --variant moe: --variant dense-equal-active:ffn=dense,dense_hidden_dim=384 \
    --variant dense-equal-total:ffn=dense,dense_hidden_dim=896; }
mtp()            { python -m ablation --study mtp --out $R/mtp "${BASE[@]}" "${REUSE[@]}" "$@" \
    --variant no-mtp:mtp_depth=0 --variant mtp-d1:mtp_depth=1,mtp_loss_weight=0.3; }

# One study: JOBS shards side by side (each takes every JOBS-th run), then one pass that finds every
# run finished and writes the report.
study() {
  local name=$1 pids=() k
  echo "=== $name ($(date +%T))"
  if [ "$JOBS" -gt 1 ]; then
    for ((k = 0; k < JOBS; k++)); do "$name" --shard "$k/$JOBS" ${EXTRA:-} & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
  fi
  "$name" ${EXTRA:-}
}

for s in ${@:-lr_sweep latent_width equal_kv_cache granularity shared_experts top_k balancing bias_rate dense_vs_moe mtp}; do
  study "$s"
done

# The tables of docs/results.md, from whatever records exist now (the prose around them is not touched).
python -m ablation report --fill docs/results.md $R
