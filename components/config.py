"""ModelConfig: every size and switch of the model in one frozen, validated dataclass.

Frozen so that an ablation never edits a preset by accident: derive a variant with
`dataclasses.replace(SMALL, top_k=1)`. Sizes that follow from others by default (the head sizes,
the key/value heads, the dense FFN width) stay None in the config and are filled in by
`cfg.resolved()`, so `replace(cfg, n_heads=8)` can never leave a stale head size behind.

Paper symbols (DeepSeek-V2 §2.1-2.2, V3 §2.1) next to each field; the README has the glossary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from components.settings import Settings, bad_field, check

ATTENTION_KINDS = ("mla", "mha", "gqa", "mqa", "linear")
FFN_KINDS = ("moe", "dense")
ROUTER_SCORES = ("softmax", "sigmoid")
BALANCING_KINDS = ("none", "aux_loss", "aux_free", "both")
BALANCE_COEF_FIELDS = ("expert_balance_coef", "seq_balance_coef", "z_loss_coef", "kl_balance_coef")


@dataclass(frozen=True)
class ModelConfig(Settings):
    # --- trunk -----------------------------------------------------------------------------
    vocab_size: int = 50257          # GPT-2 BPE
    context_length: int = 128        # longest sequence the model is trained on
    d_model: int = 256               # d
    n_layers: int = 4                # l
    n_heads: int = 4                 # n_h
    tie_embeddings: bool = True      # share the token embedding with the output head
    dropout: float = 0.0
    norm_eps: float = 1e-6           # RMSNorm eps (DeepSeek uses 1e-6)
    init_std: float = 0.02
    # --- attention -------------------------------------------------------------------------
    attention: str = "mla"           # 'mla' | 'mha' | 'gqa' | 'mqa' | 'linear'
    n_kv_heads: int | None = None    # n_g for GQA (None: n_heads for MHA, 1 for MQA)
    kv_latent_dim: int = 64          # d_c, width of the cached latent c_KV (kv_lora_rank)
    q_latent_dim: int | None = None  # d_c', query latent (q_lora_rank); None = no query compression
    rope_head_dim: int | None = None     # d_h^R (None: head_dim // 2)
    qk_nope_head_dim: int | None = None  # d_h for q/k without RoPE (None: head_dim)
    v_head_dim: int | None = None        # value head size (None: head_dim)
    rope_theta: float = 10000.0
    # --- feed-forward ----------------------------------------------------------------------
    ffn: str = "moe"                 # 'moe' | 'dense'
    n_dense_layers: int = 1          # the first layers use a dense FFN (first_k_dense_replace)
    dense_hidden_dim: int | None = None  # None: expert_hidden_dim * (n_shared + top_k), equal active width
    n_routed_experts: int = 4        # N_r
    n_shared_experts: int = 1        # N_s
    top_k: int = 2                   # K_r
    expert_hidden_dim: int = 1024    # moe_inter_dim
    # --- router ----------------------------------------------------------------------------
    router_score: str = "sigmoid"    # 'softmax' (V2) | 'sigmoid' (V3, weights renormalised)
    route_scale: float = 1.0         # routed_scaling_factor
    n_expert_groups: int = 1         # group-limited routing: groups ...
    topk_groups: int = 1             # ... of which this many are kept per token
    router_noise_std: float = 0.0    # noisy top-k (training only); 0 = off
    capacity_factor: float | None = None  # None = dropless; else slots per expert = cf * N*K/E
    balancing: str = "aux_free"      # 'none' | 'aux_loss' | 'aux_free' | 'both'
    bias_update_rate: float = 1e-3   # gamma of the loss-free bias update (V3 §2.1.2)
    expert_balance_coef: float = 0.01    # Switch / V2 expert-level loss (V2 eq 23-25)
    seq_balance_coef: float = 0.0        # V3 sequence-wise loss (V3 eq 17-20)
    z_loss_coef: float = 0.0             # ST-MoE router z-loss
    kl_balance_coef: float = 0.0         # KL(mean routing prob || uniform)
    # --- multi-token prediction (V3 §2.2) ----------------------------------------------------
    mtp_depth: int = 0               # D; 0 = off
    mtp_loss_weight: float = 0.3     # lambda

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise bad_field(self, name, why)

        check(self, "a positive integer", "vocab_size", "context_length", "d_model", "n_layers", "n_heads",
              "kv_latent_dim", "n_routed_experts", "top_k", "expert_hidden_dim", "n_expert_groups", "topk_groups")
        check(self, "an integer >= 0", "n_shared_experts", "n_dense_layers", "mtp_depth")
        check(self, "None or a positive integer", "q_latent_dim", "rope_head_dim", "qk_nope_head_dim", "v_head_dim",
              "dense_hidden_dim", "n_kv_heads")
        if self.attention not in ATTENTION_KINDS:
            bad("attention", f"choose one of {ATTENTION_KINDS}")
        if self.ffn not in FFN_KINDS:
            bad("ffn", f"choose one of {FFN_KINDS}")
        if self.router_score not in ROUTER_SCORES:
            bad("router_score", f"choose one of {ROUTER_SCORES}")
        if self.balancing not in BALANCING_KINDS:
            bad("balancing", f"choose one of {BALANCING_KINDS}")
        if self.d_model % self.n_heads:
            bad("n_heads", f"must divide d_model={self.d_model}")
        if self.attention == "gqa":
            if self.n_kv_heads is None or self.n_heads % self.n_kv_heads:
                bad("n_kv_heads", f"GQA needs n_kv_heads dividing n_heads={self.n_heads}")
        if self.attention in ("mha", "gqa", "mqa", "linear") and self.head_dim % 2:
            bad("n_heads", f"head_dim={self.head_dim} must be even for RoPE")
        if self._resolved_sizes()["rope_head_dim"] % 2:
            bad("rope_head_dim", "must be even (RoPE rotates pairs)")
        if self.top_k > self.n_routed_experts:
            bad("top_k", f"must be <= n_routed_experts={self.n_routed_experts}")
        if self.n_routed_experts % self.n_expert_groups:
            bad("n_expert_groups", f"must divide n_routed_experts={self.n_routed_experts}")
        if self.topk_groups > self.n_expert_groups:
            bad("topk_groups", f"must be <= n_expert_groups={self.n_expert_groups}")
        if self.top_k > self.topk_groups * (self.n_routed_experts // self.n_expert_groups):
            bad("top_k", "exceeds the experts left after group-limited routing; raise topk_groups")
        if self.n_dense_layers > self.n_layers:
            bad("n_dense_layers", f"must be <= n_layers={self.n_layers}")
        check(self, "None or a finite number > 0", "capacity_factor")     # None: dropless
        check(self, "a number in [0, 1)", "dropout")
        check(self, "a finite number >= 0", "router_noise_std", "bias_update_rate", "expert_balance_coef",
              "seq_balance_coef", "z_loss_coef", "kl_balance_coef", "mtp_loss_weight", "init_std")
        check(self, "a finite number > 0", "route_scale", "norm_eps", "rope_theta")
        if self.bias_update_rate > 1:          # the bias moves by gamma per step on sigmoid scores in (0, 1)
            bad("bias_update_rate", "must be <= 1 (DeepSeek-V3 uses 0.001): a larger step swamps the scores")
        if self.capacity_factor is not None and self.capacity_factor > self.n_routed_experts:
            bad("capacity_factor", f"must be <= n_routed_experts={self.n_routed_experts} (from E/K on every "
                                   "expert can already take every token: use None for dropless)")
        if self.uses_aux_loss and self.ffn == "moe" and not any(self.balance_coefs.values()):
            bad("balancing", "'aux_loss'/'both' needs a balance coefficient > 0 (e.g. expert_balance_coef=0.01)")
        if not self.uses_aux_loss and self.ffn == "moe":
            # 'none' and 'aux_free' add no balance loss: a coefficient set away from its default would be
            # dropped without a word. V3's recipe is the bias AND a small sequence-wise loss (V3 §2.1.2,
            # eq 17-20): that is balancing='both'.
            for f in fields(self):
                if f.name in BALANCE_COEF_FIELDS and getattr(self, f.name) not in (0.0, f.default):
                    fix = ("use balancing='both' for the aux-loss-free bias plus this loss (V3: the bias and a small "
                           "seq_balance_coef)" if self.balancing == "aux_free" else "use balancing='aux_loss'")
                    bad(f.name, f"balancing={self.balancing!r} adds no balance loss, so it would be ignored; {fix}, "
                                f"or leave {f.name} at {f.default}")
        if self.mtp_depth >= self.context_length:
            bad("mtp_depth", f"must be < context_length={self.context_length} (MTP module k predicts token t+k+1 "
                             "of the same window, so depth D leaves context_length - D positions)")

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """d_model // n_heads: head size of the baseline attentions, and the MLA default."""
        return self.d_model // self.n_heads

    def resolved(self) -> ModelConfig:
        """This config with every size left None replaced by the size it stands for (see _resolved_sizes).

        Modules read their sizes from here: `cfg.resolved().rope_head_dim`. The config itself keeps the
        None, on purpose: `replace(SMALL, n_heads=8)` then derives the head sizes from the new n_heads,
        where a value stored at construction would go stale. So make variants of a config, not of a
        resolved one.
        """
        return replace(self, **self._resolved_sizes())

    def _resolved_sizes(self) -> dict[str, int]:
        """The one place the defaults of the sizes that may be None are decided."""
        return {
            # d_h and d_v: the head size d_model // n_heads
            "qk_nope_head_dim": self.qk_nope_head_dim or self.head_dim,
            "v_head_dim": self.v_head_dim or self.head_dim,
            # d_h^R: half a head, as in DeepSeek-V2/V3 (d_h = 128, d_h^R = 64: V2 §3.1.2 and Table 1)
            "rope_head_dim": self.rope_head_dim or self.head_dim // 2,
            # key/value heads of the baseline attentions: MHA n_h, GQA n_g, MQA 1 (MLA has no such heads;
            # it caches one latent per token, and this says n_h)
            "n_kv_heads": {"mqa": 1, "gqa": self.n_kv_heads}.get(self.attention, self.n_heads),
            # a dense FFN as wide as the MoE's active experts (N_s shared + K_r routed)
            "dense_hidden_dim": self.dense_hidden_dim or self.expert_hidden_dim * (self.n_shared_experts + self.top_k),
        }

    @property
    def uses_aux_loss(self) -> bool:
        return self.balancing in ("aux_loss", "both")

    @property
    def uses_bias(self) -> bool:
        """Aux-loss-free balancing: a selection-only bias updated by the trainer (V3 §2.1.2)."""
        return self.balancing in ("aux_free", "both")

    @property
    def balance_coefs(self) -> dict[str, float]:
        """Balance-loss name -> coefficient; all zero unless `balancing` includes 'aux_loss'."""
        coefs = {"expert": self.expert_balance_coef, "sequence": self.seq_balance_coef,
                 "z": self.z_loss_coef, "kl": self.kl_balance_coef}
        if not self.uses_aux_loss:
            return {name: 0.0 for name in coefs}
        return coefs

    def is_moe_layer(self, layer: int) -> bool:
        return self.ffn == "moe" and layer >= self.n_dense_layers
