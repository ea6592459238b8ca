"""The real 7B: the Flax LM instantiates abstractly with exactly kyutai's parameter count; the memory plan adds up."""

import jax
import numpy as np
from flax import nnx

from models_flax.lm import LM
from models_flax.memory import plan
from moshi_spec import LMConfig

PARAMS_7B = 7_687_729_152  # kyutai LMModel(**loaders._lm_kwargs) and HF MoshiForConditionalGeneration without Mimi


def test_flax_7b_abstract_parameter_count():
    abstract = nnx.eval_shape(lambda: LM(LMConfig.moshi_7b(), rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(int(np.prod(leaf.shape)) for leaf in leaves) == PARAMS_7B


def test_config_count_matches():
    assert LMConfig.moshi_7b().num_params() == PARAMS_7B


def test_memory_plan_bf16():
    p = plan(LMConfig.moshi_7b(), dtype="bfloat16", batch=1)
    assert p["weights"] == 2 * PARAMS_7B
    # 32 layers x (k, v) x 3000 steps x 4096 x 2 bytes
    assert p["temporal_kv_cache"] == 32 * 2 * 3000 * 4096 * 2
    assert p["total"] == p["weights"] + p["temporal_kv_cache"] + p["depth_kv_cache"]
