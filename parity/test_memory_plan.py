"""The fine-tuning memory plan (models_flax.memory.train_plan): its parameter counts against independent counts (a
concrete tiny LM with our adapters; kyutai's LMModel with kyutai's LoRA) and its bytes per device against what the
sharding rules say; negative controls show that each check fails when what it checks is broken."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from models_flax import sharding
from models_flax.lm import LM
from models_flax.memory import activation_bytes, train_plan
from models_flax.training.lora import LoRAParam, add_lora
from moshi_spec import LMConfig
from moshi_spec.training import LoRAConfig

TINY = LMConfig.tiny()
ONE_LAYER = TINY.replace(temporal=TINY.temporal.replace(num_layers=1), depth=TINY.depth.replace(num_layers=1))
RANK = 4


def _norms(cfg: LMConfig) -> int:
    """Parameters the rules replicate: every RMSNorm weight (two per layer of both stacks, the final norm)."""
    t, d = cfg.temporal, cfg.depth
    return (2 * t.num_layers + 1) * t.dim + 2 * d.num_layers * d.dim


def _lora_count(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, LoRAParam)))


@pytest.fixture(scope="module")
def concrete_lora_lm() -> LM:
    """The tiny LM cut to one layer per stack (every kind of adapter site, half the compile), with adapters, built with
    real arrays (one jitted construction: faster than op by op)."""
    return nnx.jit(lambda: add_lora(LM(ONE_LAYER, rngs=nnx.Rngs(0)), LoRAConfig(rank=RANK), rngs=nnx.Rngs(1)))()


def test_lora_count_equals_a_concrete_model(concrete_lora_lm):
    plan = train_plan(ONE_LAYER, mode="lora", rank=RANK, param_dtype="float32")
    count = _lora_count(concrete_lora_lm)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(concrete_lora_lm, LoRAParam)))
    assert plan["trained_parameters"] == count > 0
    assert plan["parameters"] == ONE_LAYER.num_params() + count


def test_lora_count_equals_kyutai():
    """kyutai's LoRA (replace_all_linear_with_lora on every nn.Linear of its LMModel) trains as many parameters as the
    plan counts for our adapters; its frozen count is the config's, and mode "full" trains all of them."""
    from models_ref.training import add_lora as kyutai_add_lora
    from parity.harness.implementations import build

    kyutai = build("lm", TINY, "float32", impls=("kyutai",)).module("kyutai")
    kyutai_add_lora(kyutai, LoRAConfig(rank=RANK))
    lora = sum(p.numel() for n, p in kyutai.named_parameters() if ".lora_" in n)
    frozen = sum(p.numel() for n, p in kyutai.named_parameters() if ".lora_" not in n)
    print(f"kyutai tiny: {lora} LoRA parameters (rank {RANK}), {frozen} others")
    assert train_plan(TINY, mode="lora", rank=RANK, param_dtype="float32")["trained_parameters"] == lora
    assert train_plan(TINY, mode="full", param_dtype="float32")["trained_parameters"] == frozen == TINY.num_params()


def test_negative_control_one_missing_adapter_breaks_the_count(concrete_lora_lm):
    model = nnx.clone(concrete_lora_lm)
    model.lm_head.lora = None  # the text head's adapter: 32 x 4 + 4 x 48 parameters
    plan = train_plan(ONE_LAYER, mode="lora", rank=RANK, param_dtype="float32")
    assert plan["trained_parameters"] - _lora_count(model) == RANK * (TINY.temporal.dim + TINY.text_card)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_bytes_per_device_follow_the_rules(mode):
    """Every parameter but the norms is split over fsdp (dp replicates); the fp32 master copy, the Adam moments and the
    gradients follow the trained parameters; activations follow the batch each device computes."""
    batch, norms = 8, _norms(TINY)
    base = train_plan(TINY, mode=mode, rank=RANK, fsdp=1, batch=batch)
    total, trained = base["parameters"], base["trained_parameters"]
    trained_replicated = norms if mode == "full" else 0  # LoRA factors are all split
    for fsdp in (1, 2, 4, 8):
        p = train_plan(TINY, mode=mode, rank=RANK, fsdp=fsdp, batch=batch)
        assert p["weights"] == 2 * (norms + (total - norms) // fsdp)  # bf16
        assert p["master"] == p["gradients"] == 4 * (trained_replicated + (trained - trained_replicated) // fsdp)
        assert p["adam"] == 2 * p["master"]
        assert (p["gathered_layer"] > 0) == (fsdp > 1)
        assert p["activations"] * fsdp == base["activations"]  # the batch is split over the devices
        assert p["total"] == sum(p[k] for k in ("weights", "master", "adam", "gradients", "gathered_layer",
                                                "activations"))  # fmt: skip
    dp = train_plan(TINY, mode=mode, rank=RANK, fsdp=2, dp=2, batch=batch)
    fsdp2 = train_plan(TINY, mode=mode, rank=RANK, fsdp=2, batch=batch)
    fsdp4 = train_plan(TINY, mode=mode, rank=RANK, fsdp=4, batch=batch)
    assert dp["weights"] == fsdp2["weights"] and dp["master"] == fsdp2["master"]
    assert dp["activations"] == fsdp4["activations"]


def test_negative_control_replicating_rules_do_not_shrink():
    """A rule table that splits nothing (the same patterns, every spec replicated) fails the check above."""
    replicated = tuple(dataclasses.replace(r, spec=P(*([None] * len(r.spec)))) for r in sharding.RULES)
    p1 = train_plan(TINY, mode="full", fsdp=1, batch=4, rules=replicated)
    p4 = train_plan(TINY, mode="full", fsdp=4, batch=4, rules=replicated)
    norms = _norms(TINY)
    assert p4["weights"] == p1["weights"] != 2 * (norms + (p1["parameters"] - norms) // 4)
    assert p4["master"] == p1["master"]


def test_activations_remat_and_scaling():
    kw = dict(frames=16, param_dtype="bfloat16", rank=RANK)
    with_remat, without = activation_bytes(TINY, batch=2, remat=True, **kw), activation_bytes(TINY, batch=2, **kw,
                                                                                              remat=False)  # fmt: skip
    assert with_remat["layers"] < without["layers"] and with_remat["heads"] == without["heads"]
    assert activation_bytes(TINY, batch=4, remat=True, **kw)["total"] == 2 * with_remat["total"]  # linear in b
    # the text and audio logits: b * T * (text_card + dep_q * card) * (2 + 8) bytes
    assert with_remat["heads"] == 2 * 16 * (TINY.text_card + TINY.dep_q * TINY.card) * 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch=3, fsdp=2), "multiple of dp \\* fsdp = 2"),
        (dict(mode="adapters"), "mode must be"),
        (dict(param_dtype="float16"), "param_dtype must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_plan(TINY, **kwargs)
