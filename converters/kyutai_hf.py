"""kyutai <-> hf: kyutai's fused, per-codebook ModuleLists with interleaved rope <-> HF's split, stacked, half-split.

- attention: `in_projs.{c}.weight` rows [q; k; v] -> q/k/v_proj.linear.weight, q and k permuted from interleaved to
  half-split rope per head when cfg.rope (never v; never the depth transformer, which has no rope), stacked over the
  codebooks to (W, out, in) when cfg.flexible; `out_projs.{c}.weight` -> o_proj.linear.weight likewise.
- gating_mlp: `linear_in/linear_out` -> fc1/fc2; flexible: the ModuleList's `{c}.linear_in/out` stacked.
- rmsnorm: `alpha` (1, 1, D) -> `weight` (D,).
- released checkpoints use legacy fused names (`in_proj_weight` (W*(Q+2KV), D), `out_proj.weight` (W*D, Q), codebook
  c at rows c*rows:(c+1)*rows, as kyutai's own `_load_hook` reads them); they are normalized to the current names first.
hf -> kyutai emits the current names. kyutai has no standalone flexible linear (it uses ModuleLists of nn.Linear).
"""

from __future__ import annotations

from converters.registry import Pair, Rule, register_normalizer, register_pairs

TABLE: dict[str, tuple[Pair, ...]] = {
    "rmsnorm": (Pair("alpha", "weight", "alpha_to_weight", "weight_to_alpha"),),
    "gating_mlp": (
        Pair("linear_in.weight", "fc1.weight", when="plain"),
        Pair("linear_out.weight", "fc2.weight", when="plain"),
        Pair("{c}.linear_in.weight", "fc1.weight", "stack", "unstack", when="flexible"),
        Pair("{c}.linear_out.weight", "fc2.weight", "stack", "unstack", when="flexible"),
    ),
    "attention": (
        Pair(
            "in_projs.{c}.weight",
            ("q_proj.linear.weight", "k_proj.linear.weight", "v_proj.linear.weight"),
            "unfuse_qkv",
            "fuse_qkv",
        ),
        Pair("out_projs.{c}.weight", "o_proj.linear.weight", "stack", "unstack"),
    ),
}

LEGACY: tuple[Rule, ...] = (
    Rule("{p}in_proj_weight", "{p}in_projs.{c}.weight", "split_steps"),
    Rule("{p}in_proj.weight", "{p}in_projs.{c}.weight", "split_steps"),
    Rule("{p}out_proj.weight", "{p}out_projs.{c}.weight", "split_steps"),
)

register_pairs("kyutai", "hf", TABLE)
register_normalizer("kyutai", LEGACY)
