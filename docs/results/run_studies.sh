#!/usr/bin/env bash
# Regenerate every ablation study of docs/results.md (about 35-45 minutes on a shared 2-core CPU).
# Finished runs are skipped (delete a study's *.json to recompute it); each study then writes its
# report.md and plots next to its records. Run from the repository root with the venv active:
#     bash docs/results/run_studies.sh [study ...]        # default: all eight, in this order
#     EXTRA=--dry-run bash docs/results/run_studies.sh    # list the runs only
set -euo pipefail
DATA=${DATA:-../shared/data/paul_graham_essays.csv}
R=docs/results
# The study base: TINY widened to d_model 128, 3 layers (1 dense + 2 MoE), 8 routed experts of width
# 128 + 1 shared, top-2, MLA with a 64-wide latent; the dense layer fixed at 384 (= the MoE's active
# width) so no study changes it by accident; lr 3e-3 (better than 1e-3 at this budget, measured);
# the router-bias rate pinned to V3's 0.001 (the presets now use 0.01, see study 5b).
BASE=(--preset tiny --set d_model=128,n_layers=3,kv_latent_dim=64,n_routed_experts=8,expert_hidden_dim=128,dense_hidden_dim=384,bias_update_rate=0.001,lr=0.003
      --context-length 128 --batch-size 16 --vocab-top 4096 --tokens 196608 --seeds 0 1 --data "$DATA" --report)
REUSE=(--reuse $R/latent_width)      # the base run appears in every study: train it once

latent_width()   { python ablate.py --study latent_width --out $R/latent_width "${BASE[@]}" ${EXTRA:-} \
    --variant mla-c32:kv_latent_dim=32 --variant mla-c64:kv_latent_dim=64 --variant mla-c128:kv_latent_dim=128 \
    --variant mha:attention=mha --variant gqa-2kv:attention=gqa,n_kv_heads=2 --variant mqa:attention=mqa; }
granularity()    { python ablate.py --study granularity --out $R/granularity "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" \
    --variant 8x128-top2:n_routed_experts=8,expert_hidden_dim=128,top_k=2,n_shared_experts=1 \
    --variant 16x64-top4:n_routed_experts=16,expert_hidden_dim=64,top_k=4,n_shared_experts=2 \
    --variant 32x32-top8:n_routed_experts=32,expert_hidden_dim=32,top_k=8,n_shared_experts=4; }
shared_experts() { python ablate.py --study shared_experts --out $R/shared_experts "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" \
    --grid n_shared_experts=1,0,2; }
top_k()          { python ablate.py --study top_k --out $R/top_k "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" --grid top_k=2,1,4; }
balancing()      { python ablate.py --study balancing --out $R/balancing "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" \
    --grid balancing=aux_free,none,aux_loss,both; }
bias_rate()      { python ablate.py --study bias_rate --out $R/bias_rate "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" \
    --variant gamma-0.001:bias_update_rate=0.001 --variant gamma-0.01:bias_update_rate=0.01; }
dense_vs_moe()   { python ablate.py --study dense_vs_moe --out $R/dense_vs_moe "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" \
    --variant moe: --variant dense-equal-active:ffn=dense,dense_hidden_dim=384 \
    --variant dense-equal-total:ffn=dense,dense_hidden_dim=896; }
mtp()            { python ablate.py --study mtp --out $R/mtp "${BASE[@]}" ${EXTRA:-} "${REUSE[@]}" \
    --variant no-mtp:mtp_depth=0 --variant mtp-d1:mtp_depth=1,mtp_loss_weight=0.3; }

for study in "${@:-latent_width granularity shared_experts top_k balancing bias_rate dense_vs_moe mtp}"; do
  for s in $study; do echo "=== $s ($(date +%T))"; $s; done
done
