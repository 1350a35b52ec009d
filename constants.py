"""Named model presets and project-wide defaults (non-model constants).

Presets are frozen `ModelConfig`s. Make a variant with `dataclasses.replace`, never by editing:
    from dataclasses import replace
    cfg = replace(SMALL, top_k=1)
Head dim = d_model / n_heads; qk_nope_head_dim = v_head_dim = head dim, rope_head_dim = head dim / 2
(sizes left None; `cfg.resolved()` fills them in).

Router-bias rate: DeepSeek-V3 uses gamma = 0.001 over ~100K+ optimizer steps. Our runs last hundreds
of steps, where 0.001 lets the bias move by ~0.1 only and the routers stay collapsed; 0.01 balances
them as well as an auxiliary loss does (docs/results.md, study 5b). ModelConfig keeps V3's value.
"""

from __future__ import annotations

from pathlib import Path

from components.config import ModelConfig

# TINY: for tests, CI and notebooks in CI mode (seconds on a CPU). 2 layers: 1 dense + 1 MoE.
TINY = ModelConfig(
    context_length=64, d_model=64, n_layers=2, n_heads=4, kv_latent_dim=16,
    n_routed_experts=4, n_shared_experts=1, top_k=2, expert_hidden_dim=128, bias_update_rate=0.01,
)
# SMALL: the book chapter's model (minutes of CPU training).
SMALL = ModelConfig(
    context_length=128, d_model=256, n_layers=4, n_heads=4, kv_latent_dim=64,
    n_routed_experts=4, n_shared_experts=1, top_k=2, expert_hidden_dim=1024, bias_update_rate=0.01,
)
DEFAULT = ModelConfig(
    context_length=256, d_model=512, n_layers=6, n_heads=8, kv_latent_dim=128,
    n_routed_experts=8, n_shared_experts=1, top_k=2, expert_hidden_dim=2048, bias_update_rate=0.01,
)
LARGE = ModelConfig(
    context_length=512, d_model=1024, n_layers=12, n_heads=16, kv_latent_dim=128,
    n_routed_experts=16, n_shared_experts=2, top_k=4, expert_hidden_dim=4096, bias_update_rate=0.01,
)
PRESETS: dict[str, ModelConfig] = {"tiny": TINY, "small": SMALL, "default": DEFAULT, "large": LARGE}

# --- non-model constants -------------------------------------------------------------------
SEED = 1337
# Where the project is published: the Colab badges and clone cells of every notebook are written from
# this one address by `python scripts/colab.py` (edit it, run the script, commit the notebooks).
REPOSITORY_URL = "https://github.com/deepseek-from-scratch/deepseek-from-scratch"
PROJECT_ROOT = Path(__file__).resolve().parent
DATA_DIR = PROJECT_ROOT / "data"
DATA_CACHE_DIR = DATA_DIR / "cache"            # git-ignored: essays and token ids built from them
DATA_ENV_VAR = "DEEPSEEK_SCRATCH_DATA"        # path to a local essays file/folder (CI sets it)
HUB_DATASET = "sgoel9/paul_graham_essays"
VAL_FRACTION = 0.1
TOKENIZER_NAME = "gpt2"
EOT_TOKEN_ID = 50256
# Set to 1 by CI (and by readers who want speed) to make notebooks pick TINY and few steps.
FAST_ENV_VAR = "DEEPSEEK_SCRATCH_FAST"
