"""Everything lowers for TPU (Mosaic) and CUDA (Triton) from this CPU host, on abstract shapes
(parity/harness/lowering.py): both attention kernels at Moshi's real shapes, the 7B forward and the 7B streaming step
with either attention, and the 7B forward sharded over an abstract ('dp', 'fsdp') mesh of 8 TPU devices. Each export
must carry the platform's own kernel source and no other (the `jax.lax.platform_dependent` switch), and a block shape
Mosaic's (8, 128) tiling refuses, which the CPU and TPU interpreters both run, must fail here.
"""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec as P

import models_flax.kernels.mosaic as mosaic_module
from models_flax import sharding
from models_flax.kernels import dispatch
from moshi_spec import LMConfig
from parity.harness.lowering import (
    ATTENTION_SHAPES,
    PLATFORMS,
    attention_export,
    kernel_custom_calls,
    lm_forward_export,
    stream_step_export,
)

MOSHI_7B = LMConfig.moshi_7b()
NIGHTLY = pytest.mark.nightly
SOURCE = {"tpu": "mosaic", "cuda": "triton"}


def _only_source(exported: jax.export.Exported, platform: str, impl: str = "pallas") -> None:
    calls = kernel_custom_calls(exported)
    expected_source = SOURCE[platform] if impl == "pallas" else None
    assert all((count > 0) == (source == expected_source) for source, count in calls.items()), (
        f"{platform} export with attention={impl}: kernel calls {calls}, expected {expected_source or 'none'} only"
    )


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("stack", sorted(ATTENTION_SHAPES))
@pytest.mark.parametrize("kernel", ("prefill", "decode"))
def test_kernel_lowers(kernel, stack, platform):
    _only_source(attention_export(kernel, stack, platform), platform)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("impl", ("xla", "pallas"))
def test_7b_forward_lowers(impl, platform):
    _only_source(lm_forward_export(MOSHI_7B, impl, platform), platform, impl)


# ~6 s each (the 7B traced twice: its parameters and its step): the TPU step with the Pallas kernels in the default
# suite; the CUDA and XLA-attention steps nightly, with the tiny LM's steps as their default-suite twins.
@pytest.mark.parametrize(
    ("impl", "platform"),
    [("pallas", "tpu"), pytest.param("pallas", "cuda", marks=NIGHTLY), pytest.param("xla", "tpu", marks=NIGHTLY)],
)
def test_7b_stream_step_lowers(impl, platform):
    _only_source(stream_step_export(MOSHI_7B, impl, platform), platform, impl)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("impl", ("xla", "pallas"))
def test_tiny_stream_step_lowers(impl, platform):
    _only_source(stream_step_export(LMConfig.tiny(), impl, platform), platform, impl)


def test_7b_forward_lowers_sharded_for_tpu():
    """FSDP over 8 abstract TPU devices: the parameters carry their rule's sharding into the program."""
    _assert_sharded(lm_forward_export(MOSHI_7B, "xla", "tpu", batch=8, mesh=sharding.abstract_mesh(2, 4)))


def _assert_sharded(exported: jax.export.Exported) -> None:
    assert exported.nr_devices == 8
    text = exported.mlir_module()
    assert '{"fsdp"}' in text and '{"dp", "fsdp"}' in text, "parameter or batch sharding missing from the program"


def test_7b_stream_step_lowers_sharded_for_tpu():
    """`Streamer(lm, mesh=)`'s step over 8 abstract TPU devices (fsdp 8: each holds 1/8 of the weights, the KV caches
    split by kv heads), as a 7B stream on 16 GB chips runs: the program carries the placement."""
    exported = stream_step_export(MOSHI_7B, "xla", "tpu", batch=1, mesh=sharding.abstract_mesh(1, 8))
    assert exported.nr_devices == 8 and '{"fsdp"}' in exported.mlir_module()


@pytest.mark.parametrize("platform", ["tpu", pytest.param("cuda", marks=NIGHTLY)])
def test_7b_stream_step_with_pallas_lowers_sharded(platform):
    """The same with the Pallas kernels: a stream's caches are split by kv heads (`KVCache.split`), and each kernel
    runs in a shard_map over them. Its control: the same TPU export without that shard_map raises Mosaic's refusal."""
    exported = stream_step_export(MOSHI_7B, "pallas", platform, batch=1, mesh=sharding.abstract_mesh(1, 8))
    assert exported.nr_devices == 8 and '{"fsdp"}' in exported.mlir_module()
    source = "mosaic" if platform == "tpu" else "triton"
    assert kernel_custom_calls(exported)[source] > 0 and "manual_computation" in exported.mlir_module()


def test_stream_pallas_without_head_shard_map_does_not_lower_sharded(monkeypatch):
    """The tiny LM over fsdp 4 (which divides its 4 kv heads) lowers, and without the heads' shard_map does not: the
    refusal needs no 7B trace."""
    mesh = sharding.abstract_mesh(1, 4)
    assert "manual_computation" in stream_step_export(LMConfig.tiny(), "pallas", "tpu", mesh=mesh).mlir_module()
    monkeypatch.setattr(dispatch, "per_head_shard", lambda kernel, split, kv_layout: kernel)
    with pytest.raises(NotImplementedError, match="cannot be automatically partitioned"):
        stream_step_export(LMConfig.tiny(), "pallas", "tpu", mesh=mesh)


def test_7b_forward_with_pallas_lowers_sharded_for_tpu():
    """The same with the Mosaic kernels: XLA cannot partition a Pallas call ("Mosaic kernels cannot be automatically
    partitioned. Please wrap the call in a shard_map.", the strict xfail this replaces), so in the mesh's context each
    kernel runs in a shard_map over the batch (models_flax/kernels/dispatch.py). Its control: the same export with the
    shard_map dropped raises that error."""
    exported = lm_forward_export(MOSHI_7B, "pallas", "tpu", batch=8, mesh=sharding.abstract_mesh(2, 4))
    _assert_sharded(exported)
    assert kernel_custom_calls(exported)["mosaic"] > 0 and "manual_computation" in exported.mlir_module()


def test_pallas_without_shard_map_does_not_lower_sharded(monkeypatch):
    # run_kernel calls per_batch_shard while the export traces the model (a fresh jit each export): no cache to clear
    monkeypatch.setattr(dispatch, "per_batch_shard", lambda kernel: kernel)
    with pytest.raises(NotImplementedError, match="cannot be automatically partitioned"):
        lm_forward_export(MOSHI_7B, "pallas", "tpu", batch=8, mesh=sharding.abstract_mesh(2, 4))


def test_block_breaking_tpu_tiling_fails_to_lower(patch):
    """Negative control, a TPU-only mistake: 4-row query blocks (not a multiple of 8 sublanes) run in both
    interpreters, yet Mosaic refuses them. The same export passes unpatched."""
    attention_export("prefill", "temporal", "tpu")
    layout = mosaic_module.MosaicBlockSizes.layout
    patch.setattr(mosaic_module.MosaicBlockSizes, "layout", lambda self, *a: (4, layout(self, *a)[1]))
    jax.clear_caches()
    try:
        with pytest.raises(ValueError, match="divisible by 8 and 128"):
            attention_export("prefill", "temporal", "tpu")
    finally:
        jax.clear_caches()


def test_kernel_source_switch_control_fails(patch):
    """Negative control of the kernel switch: with its TPU branch dropped, a TPU export takes the default branch, the
    Triton source (compiled, as the export asks), whose per-head blocks the TPU lowering refuses."""
    switch = jax.lax.platform_dependent
    patch.setattr(jax.lax, "platform_dependent", lambda *args, tpu, **branches: switch(*args, **branches))
    jax.clear_caches()
    try:
        with pytest.raises(ValueError, match="Pallas TPU lowering"):
            _only_source(attention_export("prefill", "depth", "tpu"), "tpu")
    finally:
        jax.clear_caches()


def test_sharded_export_control_fails(monkeypatch):
    """Negative control of the sharded export's check: rules that replicate every parameter leave no 'fsdp' sharding
    in the program."""
    specs = sharding.param_specs
    replicated = lambda *a, **kw: jax.tree.map(lambda spec: P(*(None,) * len(spec)), specs(*a, **kw))  # noqa: E731
    monkeypatch.setattr(sharding, "param_specs", replicated)
    exported = lm_forward_export(MOSHI_7B, "xla", "tpu", batch=8, mesh=sharding.abstract_mesh(2, 4))
    with pytest.raises(AssertionError, match="sharding missing"):
        _assert_sharded(exported)
