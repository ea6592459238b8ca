"""Sharding rules: every parameter has exactly one rule, bad rules fail loudly, the 7B plan divides by the mesh, and the
tiny LM sharded over a (dp=2, fsdp=4) mesh of 8 CPU devices computes what it computes unsharded (with XLA attention,
with the Pallas kernels in a shard_map over the batch, loaded onto the mesh by from_checkpoint, streaming
(Streamer(mesh=)), and its LoRA train step).

The 8-device run is a subprocess (`parity.harness.sharding_check`): this process initialised jax with one device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from models_flax import sharding
from models_flax.lm import LM
from moshi_spec import LMConfig
from parity.harness.placement import flat

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    return nnx.eval_shape(lambda: LM(LMConfig.tiny(), rngs=nnx.Rngs(0)))


def test_sharded_lm_matches_unsharded():
    flags = os.environ.get("XLA_FLAGS", "")  # the suite's own (conftest.py: O0 compiles on CPU) plus 8 devices
    env = os.environ | {
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-m", "parity.harness.sharding_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(measured, indent=1))
    assert measured["split"] >= 40  # every kernel and embedding of the tiny LM (49 params, 9 norms)
    for diffs in measured["max_diff_over_rms"].values():
        assert diffs["text"] <= measured["bound"]["text"] and diffs["audio"] <= measured["bound"]["audio"]
    assert measured["checkpoint"] == {"split": measured["split"], "bit_exact": True}  # from_checkpoint(mesh=)
    assert measured["stream"] == {"frames": 20, "tokens_equal": True, "pallas_tokens_equal": True,
                                  "split": measured["split"], "step_compiles": 1}  # fmt: skip
    pallas = measured["pallas"]  # attention="pallas" sharded: the kernels in a shard_map over the batch
    assert all(pallas["max_diff_over_rms"][k] <= measured["bound"][k] for k in ("text", "audio"))
    assert pallas["shard_maps"] > 0 and "batch 4 is not divisible by the data axes" in pallas["indivisible_batch_error"]
    assert all(pallas["rolled_rows_control"][k] > measured["bound"][k] for k in ("text", "audio"))
    train = measured["train"]  # the sharded train step (parity/harness/train_sharding_check.py)
    assert train["split"] >= 100  # master, mu and nu leaves with a split axis
    assert all(train["max_diff_over_rms"][w] <= train["bound"][w] for w in train["bound"])
    assert all(train["doubled_shard_control"][w] > train["bound"][w] for w in train["bound"])
    assert train["compiles"] == 1  # one program for every step


def test_7b_plan_covers_every_param_and_splits_8_ways():
    abstract = nnx.eval_shape(lambda: LM(LMConfig.moshi_7b(), rngs=nnx.Rngs(0)))
    placements = sharding.describe(abstract, sharding.abstract_mesh(1, 8))
    total, per_device = sharding.totals(placements)
    replicated = sum(p.bytes for p in placements if all(e is None for e in p.spec))
    print(f"7B fp32: {total / 2**30:.2f} GiB, per device on fsdp=8: {per_device / 2**30:.3f} GiB ", end="")
    print(f"(ratio {per_device / total:.5f}), replicated {replicated} bytes")
    assert len(placements) == len(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    assert total == 4 * 7_687_729_152
    assert per_device == (total - replicated) // 8 + replicated
    assert 1 / 8 <= per_device / total < 1 / 8 + 1e-4
    # dp replicates: a (2, 4) mesh holds 1/4 per device
    _, per_device_dp = sharding.totals(sharding.describe(abstract, sharding.abstract_mesh(2, 4)))
    assert per_device_dp == (total - replicated) // 4 + replicated


def test_tiny_specs_follow_the_table(tiny):
    specs = flat(sharding.param_specs(tiny, {"dp": 2, "fsdp": 4}))
    assert specs["embed_tokens.0.weight"] == P(None, "fsdp")
    assert specs["layers.1.self_attn.q_proj.kernel"] == P(None, "fsdp")
    assert specs["layers.1.self_attn.o_proj.kernel"] == P("fsdp", None)
    assert specs["layers.0.mlp.fc1.kernel"] == P(None, "fsdp")
    assert specs["layers.0.mlp.fc2.kernel"] == P("fsdp", None)
    assert specs["norm.weight"] == P(None)
    assert specs["depth.layers.0.mlp.fc1.kernel"] == P(None, None, "fsdp")
    assert specs["depth.input_projections.kernel"] == P(None, "fsdp", None)
    assert specs["depth.lm_heads.kernel"] == P(None, None, "fsdp")


def _with(rules, *extra, drop=()):
    return tuple(r for r in rules if r.pattern not in drop) + extra


def test_unmatched_param_is_an_error(tiny):
    rules = _with(sharding.RULES, drop=(r"norm\.weight",))
    with pytest.raises(ValueError, match=r"1 parameter\(s\) match no sharding rule:\n  norm\.weight$"):
        sharding.param_specs(tiny, {"dp": 1, "fsdp": 4}, rules=rules)


def test_param_matching_two_rules_is_an_error(tiny):
    rules = _with(sharding.RULES, sharding.Rule(r".*norm\.weight", P(None)))
    with pytest.raises(
        ValueError,
        match=r"9 parameter\(s\) match more than one rule:\n  depth\.layers\.0\.input_layernorm\.weight matches ",
    ):
        sharding.param_specs(tiny, {"dp": 1, "fsdp": 4}, rules=rules)


def test_indivisible_dimension_is_an_error_unless_the_rule_replicates(tiny):
    # the embedding rows are V + 1 = 33: shard them over fsdp = 4
    pattern = r"(depth\.)?(text_)?embed_tokens(\.\d+)?\.weight"
    rows = sharding.Rule(pattern, P("fsdp", None))
    with pytest.raises(
        ValueError,
        match=r"embed_tokens\.0\.weight: shape \(33, 32\), dimension 33 is not divisible by "
        r"mesh axis fsdp of size 4",
    ):
        sharding.param_specs(tiny, {"dp": 1, "fsdp": 4}, rules=_with(sharding.RULES, rows, drop=(pattern,)))
    lenient = sharding.Rule(pattern, P("fsdp", None), replicate_if_indivisible=True)
    specs = sharding.param_specs(tiny, {"dp": 1, "fsdp": 4}, rules=_with(sharding.RULES, lenient, drop=(pattern,)))
    assert flat(specs)["embed_tokens.0.weight"] == P(None, None)
    # the final norm (D = 32) over dp x fsdp = 3: the only error (the other rules use fsdp = 1)
    norm = sharding.Rule(r"norm\.weight", P(("dp", "fsdp")))
    with pytest.raises(
        ValueError,
        match=r"1 spec error\(s\) on mesh \{'dp': 3, 'fsdp': 1\}:\n  norm\.weight: shape \(32,\), dimension 32 is "
        r"not divisible by mesh axis \('dp', 'fsdp'\) of size 3$",
    ):
        sharding.param_specs(tiny, {"dp": 3, "fsdp": 1}, rules=_with(sharding.RULES, norm, drop=(r"norm\.weight",)))


def test_rank_mismatch_and_unknown_axis_are_errors(tiny):
    wrong_rank = sharding.Rule(r"lm_head\.kernel", P(None, None, "fsdp"))
    with pytest.raises(ValueError, match=r"lm_head\.kernel: shape \(32, 48\) has rank 2"):
        sharding.param_specs(
            tiny, {"dp": 1, "fsdp": 4}, rules=_with(sharding.RULES, wrong_rank, drop=(r"lm_head\.kernel",))
        )
    tp = sharding.Rule(r"lm_head\.kernel", P(None, "tp"))
    with pytest.raises(ValueError, match=r"lm_head\.kernel: rule .* names mesh axes \['tp'\]"):
        sharding.param_specs(tiny, {"dp": 1, "fsdp": 4}, rules=_with(sharding.RULES, tp, drop=(r"lm_head\.kernel",)))


def test_head_split_refuses_heads_its_axis_does_not_divide():
    """A cache split by kv heads over 'fsdp' (what `Streamer(mesh=)` gives the Pallas kernels) needs the heads to divide
    it: the cache and the kernel both refuse by name (an abstract mesh of 8: this process has one device);
    `for_heads` keeps such heads whole on every device."""
    from models_flax.cache import HeadSplit, KVCache
    from models_flax.kernels.decode import decode_attention

    mesh = sharding.abstract_mesh(1, 8)
    assert HeadSplit.for_heads(mesh, 16) == HeadSplit(mesh, "fsdp") and HeadSplit.for_heads(mesh, 4).axis is None
    with pytest.raises(ValueError, match=r"axis 'tp' is not one of the mesh's \('dp', 'fsdp'\)"):
        HeadSplit(mesh, "tp")
    with pytest.raises(ValueError, match=r"4 kv heads cannot split over mesh axis 'fsdp' of size 8"):
        KVCache.init(1, 8, 4, 16, dtype=jnp.float32, split=HeadSplit(mesh, "fsdp"))
    q, kv, pos = jnp.zeros((1, 1, 8, 16)), jnp.zeros((1, 4, 8, 16)), jnp.zeros((1, 1), jnp.int32)
    with pytest.raises(ValueError, match=r"over mesh axis 'fsdp' \(8 devices\): 8 query and 4 kv heads do not both"):
        decode_attention(q, kv, kv, q_positions=pos, k_positions=jnp.zeros((1, 8), jnp.int32), context=None,
                         kv_layout="BHSD", split=HeadSplit(mesh, "fsdp"))  # fmt: skip


def test_make_mesh_needs_every_device():
    with pytest.raises(ValueError, match=r"dp \* fsdp must equal the device count"):
        sharding.make_mesh(2, 4, devices=[object()])
