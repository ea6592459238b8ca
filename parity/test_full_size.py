"""Full-size checks: kyutai LMModel vs our Flax LM at the size named by `--full-size-preset`, with random weights
(parity/harness/full_size.py builds and runs them; `--full-size-seed` draws them).

The default suite runs them at the tiny preset, so that they cannot rot; the nightly job (.ci/nightly) and the device
script (bench/gpu_check.sh) run them at 7B: `pytest parity -m full_size --full-size-preset moshi_7b`.

Over a sequence of a few dozen frames:
- the text and audio logits, in kyutai's delay layout (masks and NaN placement exactly, then the values);
- the per-layer drift of both stacks (embedding, every temporal layer, the depth transformer's input and layers),
  propagated and teacher-forced, one record per layer: the report's per-layer chart at full size;
- the streaming step against kyutai `LMGen`, greedy, for a few frames: the step's logits against kyutai's full forward
  of the codes the stream consumed, and the tokens. In float32 every token must equal LMGen's. In bfloat16 a flip
  between two near-equal logits is rounding, not a bug: tokens must agree up to the first difference, and the logits
  that token was sampled from must match kyutai's within the bf16 policy (a wrong model fails there).
bfloat16 always; float32 where the host and the device hold it (`full_size.memory_shortfall`), else skipped saying why.
Where one device cannot hold the Flax weights, they are split over all of the host's (`full_size.mesh_for`: a TPU
v5e's 16 GB chips at 7B); `--full-size-fsdp N` forces N (1: one device).
Bounds: the policy's rows for the preset (`policy.sized`), measured by bench/measure_full_size.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from models_flax import sharding
from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer
from moshi_spec import LMConfig
from parity.harness import full_size, mimi
from parity.harness.codes import assert_codes
from parity.harness.compare import assert_parity, check_parity
from parity.harness.full_size import BATCH, DTYPES, PAIR, STREAM_FRAMES
from parity.harness.implementations import build
from parity.harness.lm_checks import compare_logits, layer_drift
from parity.harness.policy import sized
from parity.harness.streaming_runs import (
    aligned_logits,
    consumed_codes,
    first_token_mismatch,
    kyutai_logits,
    run_lmgen,
    run_steps,
    token_mismatch,
    user_codes,
)

pytestmark = pytest.mark.full_size


@pytest.fixture(scope="module")
def size(request: pytest.FixtureRequest) -> tuple[str, int]:
    """(preset, seed) of the run."""
    return request.config.getoption("full_size_preset"), request.config.getoption("full_size_seed")


@pytest.fixture(scope="module")
def fsdp(request: pytest.FixtureRequest) -> int | None:
    """How many devices the Flax weights are split over (None: as `full_size.shards` decides)."""
    return request.config.getoption("full_size_fsdp")


@pytest.fixture(scope="module", params=DTYPES)
def dtype(request: pytest.FixtureRequest, size: tuple[str, int], fsdp: int | None):
    """The run's dtype, module-scoped so that pytest runs every test of one dtype before the next dtype's, whose models
    are built only after the last one's are released (at 7B each pair holds tens of GB); skipped, saying why, where the
    machine cannot hold that dtype's pair."""
    reason = full_size.memory_shortfall(LMConfig.preset(size[0]), request.param, fsdp)
    if reason:
        pytest.skip(f"{size[0]}: {reason}")
    yield request.param
    full_size.release()


def _config(size: tuple[str, int], dtype: str, fsdp: int | None, **extra) -> dict:
    preset, seed = size
    return {"preset": preset, "seed": seed, "frames": full_size.FRAMES, "batch": BATCH,
            "platform": jax.default_backend(), "kyutai_device": full_size.kyutai_device(),
            "fsdp": full_size.shards(LMConfig.preset(preset), dtype, fsdp), **extra}  # fmt: skip


def test_logits(size, dtype, fsdp):
    models, runs = full_size.drift_runs(size[0], dtype, size[1], fsdp)
    config = _config(size, dtype, fsdp)
    compare_logits(models.cfg, runs["kyutai"], runs["flax"], PAIR, dtype, preset=size[0], config=config)


def test_layer_drift(size, dtype, fsdp):
    """Every layer of both stacks, propagated and teacher-forced; the assertion names the first over budget."""
    models, runs = full_size.drift_runs(size[0], dtype, size[1], fsdp)
    failures = layer_drift(models, runs, PAIR, dtype, preset=size[0], config=_config(size, dtype, fsdp))
    assert not failures, f"{size[0]} {dtype} {PAIR} first diverging: {failures[0]}"


def test_stream_logits_match_kyutai(size, dtype, fsdp):
    """Every frame's step logits against kyutai's full forward of the same history (whatever the tokens were)."""
    _, run, reference = full_size.stream_runs(size[0], dtype, size[1], fsdp)
    cfg = LMConfig.preset(size[0])
    for component, (full, step) in aligned_logits(cfg, reference, run).items():
        # The step's logits are float32, upcast exactly from the model dtype, as kyutai_logits returns kyutai's.
        assert_parity(full, step, component=sized(component, size[0]), pair=("kyutai", "flax[step]"),
                      expected_dtype="float32", compute_dtype=dtype, logits=True,
                      config=_config(size, dtype, fsdp, frames=cfg.max_delay + STREAM_FRAMES))  # fmt: skip


def test_stream_tokens_match_lmgen(size, dtype, fsdp):
    """float32: token for token. bfloat16: equal up to the first difference, which must be a near tie (its logits
    match kyutai's within the policy); the tokens after it follow a different history and are not compared."""
    expected, got, reference = full_size.stream_runs(size[0], dtype, size[1], fsdp)
    cfg = LMConfig.preset(size[0])
    assert got["tokens"].shape == expected.shape
    if first_token_mismatch(cfg, expected, got["tokens"]) is None:
        return
    where, tie = token_mismatch(cfg, expected, got["tokens"], names=PAIR, logits=(got, reference),
                                compute_dtype=dtype, preset=size[0])  # fmt: skip
    if dtype == "float32" or not tie:
        raise AssertionError(f"{size[0]} {dtype}: {where}")


def test_mimi(size):
    """The codec at the preset's Mimi (the real one beside any LM above tiny), float32, kyutai vs Flax, on speech:
    every encoder and decoder stage recorded as a layer of one axis (the report's per-layer chart of the codec; kyutai
    cannot encode in bf16 on a CPU), the codes (equal, or a first difference the latents' difference explains), and the
    decoded audio. The assertion names the first stage over budget."""
    built, encoded, decoded = full_size.mimi_runs(*size)
    codec = full_size.MIMI_PRESETS[size[0]]
    config = _config(size, "float32", 1, codec=codec, frames=full_size.MIMI_FRAMES[codec])
    failures = []
    for layer, name, a, b in full_size.stage_cases(built.cfg, encoded, decoded):
        ok, _, why = check_parity(a, b, component=sized("mimi_stage", codec), pair=PAIR, expected_dtype="float32",
                                  layer=layer, layer_name=name, stage="propagated", config=config)  # fmt: skip
        if not ok:
            failures.append(f"{name} (layer {layer}): {'; '.join(why)}")
    assert not failures, f"{codec} {PAIR} first diverging: {failures[0]}"
    ref, cand = encoded["kyutai"], encoded["flax"]
    assert_codes(ref["codes"], cand["codes"], pair=PAIR, dtype="float32", ref_latent=ref["latent"],
                 cand_latent=cand["latent"], quantizers=mimi.quantizer_tables(built.states["ref"], built.cfg),
                 config=config)  # fmt: skip
    assert_parity(decoded["kyutai"]["audio"], decoded["flax"]["audio"], component=sized("mimi_audio", codec),
                  pair=PAIR, expected_dtype="float32", config=config)  # fmt: skip


def test_checks_pass_on_a_mesh(size, tmp_path):
    """The float32 checks above, rerun in a process with the Flax weights split over 8 CPU devices (`--full-size-fsdp
    8`, as a TPU v5e-8 host splits 7B over its chips): every weight on its shards by its rule (`full_size.models`
    checks it) and the same comparisons against kyutai. The tiny LM's 4 kv heads do not divide 8, so the stream's
    caches are replicated (the other path of `Streamer(mesh=)`; parity/test_sharding.py splits them by heads). At the
    tiny preset only: above it this process's platform decides (`full_size.mesh_for`)."""
    if size[0] != "tiny":
        pytest.skip(f"the mesh twin runs at the tiny preset; at {size[0]} full_size.mesh_for splits by memory")
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not an xdist worker's child
    env = {**inherited, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "pytest", __file__, "-k", "float32 and not mesh", "--full-size-fsdp", "8",
               "--full-size-seed", str(size[1]), "-n", "0", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
               "--no-records"]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and summary.startswith("4 passed"), (result.stdout + result.stderr)[-4000:]


def test_weights_are_split_only_where_one_device_cannot_hold_them(monkeypatch):
    """`full_size.shards` at 7B in bf16 (15.4 GB of weights) on a host of 8 devices: one device where it holds them
    (an 80 GB GPU) or is the host's CPU, all 8 where it does not (a 16 GB TPU v5e chip); a forced size is taken as is
    (more than the host has is an error, and so is a split above the tiny preset on CPU devices), and a shortfall
    names the memory per device."""
    cfg = LMConfig.preset("moshi_7b")
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    for limit, expected in ((None, 1), (80 * 2**30, 1), (16 * 2**30, 8)):
        monkeypatch.setattr(full_size, "_device_limit", lambda limit=limit: limit)
        assert full_size.shards(cfg, "bfloat16") == expected, limit
    with pytest.raises(ValueError, match="fsdp=9, but jax has 8 devices"):
        full_size.shards(cfg, "bfloat16", 9)
    with pytest.raises(ValueError, match="XLA:CPU's collectives deadlock"):  # this process's devices are CPUs
        full_size.shards(LMConfig.preset("small"), "float32", 2)
    assert full_size.shards(LMConfig.tiny(), "float32", 2) == 2
    monkeypatch.setattr(full_size, "_device_limit", lambda: 2**30)
    assert "Flax weights need ~2 GiB per device, each of 8" in full_size.memory_shortfall(cfg, "bfloat16")


def test_build_on_a_mesh_refuses_what_it_cannot_place():
    """`build(mesh=)` places the drawn weights of JAX implementations: a component without weights, or a list without
    a JAX implementation, is an error naming why, not a mesh silently ignored."""
    mesh = sharding.make_mesh(1, 1)
    with pytest.raises(ValueError, match=r"build\(rope, mesh=\).*rope has none"):
        build("rope", LMConfig.tiny().temporal, "float32", impls=("kyutai", "flax"), mesh=mesh)
    with pytest.raises(ValueError, match=r"none of \[.kyutai., .ref.\] is one"):
        build("lm", LMConfig.tiny(), "float32", impls=("kyutai", "ref"), mesh=mesh)


def test_bf16_token_check_fails_on_a_wrong_model():
    """Negative control of the bf16 rule (always at the tiny preset): a near tie is excused, a wrong model is not.
    With the depth transformer's codebook heads reversed, the first differing token's logits fail the policy."""
    models = build("lm", LMConfig.tiny(), "bfloat16", impls=PAIR)
    heads = models.module("flax").depth.lm_heads
    heads.kernel.set_value(heads.kernel[...][::-1])
    cfg = models.cfg
    codes = user_codes(cfg, BATCH, cfg.max_delay + STREAM_FRAMES, seed=2)
    expected = run_lmgen(models.module("kyutai"), codes, use_sampling=False)
    run = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), codes)
    reference = kyutai_logits(models.module("kyutai"), consumed_codes(cfg, codes, run))
    where, tie = token_mismatch(cfg, expected, run["tokens"], names=PAIR, logits=(run, reference),
                                compute_dtype="bfloat16")  # fmt: skip
    assert tie is False, where
