"""Streaming generation (models_flax.streaming) against kyutai LMGen and against the full-sequence forward.

(a) step-by-step logits equal the full forward of the codes the stream consumed, over 40 frames (context 8);
(b) greedy tokens equal kyutai LMGen's token for token over 60 frames (tiny fp32, both attention impls);
(c) at 3100 frames (nightly), the step against kyutai's forward of what it consumed;
(d) a later input never changes an earlier output.
The sampler itself (kyutai's sample_token given its noise, the top-k law, per-stream settings): parity/test_sampling.py.
Each has negative controls (planted delay-buffer, rope, cache and mask bugs); bad input is a clear error.
"""

import copy
import warnings
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models_flax.attention
import models_flax.rope
import models_flax.streaming as streaming
from models_flax.cache import KVCache
from models_flax.sampling import AUDIO, GREEDY, TEXT, Sampler
from models_flax.streaming import UNGENERATED, Streamer, split_codebooks
from moshi_spec import LMConfig
from parity.harness.adapters import Impl
from parity.harness.arrays import to_numpy
from parity.harness.compare import ParityError, assert_parity
from parity.harness.implementations import build
from parity.harness.streaming_runs import (
    aligned_logits,
    consumed_codes,
    kyutai_logits,
    run_lmgen,
    run_steps,
    token_mismatch,
    user_codes,
)

CFG = LMConfig.tiny()  # temporal context 8, delays (0, 0, 1, 1, 1, 0, 1, 1, 1)
FRAMES = 60
IMPLS = ("flax", "flax[attention=pallas]")


@cache
def _lms(dtype: str, seed: int, impl: str):
    """kyutai's LMModel and our Flax LM (`impl`) with the same weights, by implementation name."""
    models = build("lm", CFG, dtype, impls=("kyutai", impl), seed=seed)
    return {name: models.module(name) for name in ("kyutai", impl)}


@cache
def _lmgen_tokens(seed: int) -> np.ndarray:
    return run_lmgen(_lms("float32", seed, "flax")["kyutai"], user_codes(CFG, 2, FRAMES, seed=seed), use_sampling=False)


@cache
def _greedy(dtype: str, seed: int, impl: str) -> Streamer:
    """Cached: one compile per dtype and impl. Negative controls build their own Streamer (a patch must precede the
    trace).

    The weights are arguments of the Streamer's compiled programs, not constants: the LM of another seed has the same
    structure (graphdef, asserted) and runs seed 0's programs with its own weights, split by `split_codebooks` as
    `Streamer.__init__` splits them, instead of compiling an identical step again (~1.5 s a seed)."""
    lm = _lms(dtype, seed, impl)[impl]
    if seed == 0:
        return Streamer(lm, text=GREEDY, audio=GREEDY)
    base = _greedy(dtype, 0, impl)
    graphdef, depth_weights, params = split_codebooks(lm)
    assert graphdef == split_codebooks(_lms(dtype, 0, impl)[impl])[0], "seeds differ in structure, not only weights"
    streamer = copy.copy(base)
    streamer.depth_weights, streamer.params = depth_weights, params
    return streamer


def _greedy_run(seed: int, impl: str, streamer: Streamer | None = None) -> dict[str, np.ndarray]:
    """Greedy `run_steps` over FRAMES frames of the seed's user codes (on the cached Streamer unless given one)."""
    return run_steps(streamer or _greedy("float32", seed, impl), user_codes(CFG, 2, FRAMES, seed=seed))


def _kyutai_logits_of(seed: int, impl: str, run: dict[str, np.ndarray]):
    """(run, kyutai's full-forward logits of the codes `run` consumed): what a token mismatch's logits are judged by."""
    consumed = consumed_codes(CFG, user_codes(CFG, 2, FRAMES, seed=seed), run)
    return run, kyutai_logits(_lms("float32", seed, impl)["kyutai"], consumed)


def _assert_tokens(expected: np.ndarray, got: np.ndarray, impl: str, *, logits=None, **kw) -> None:
    """Tokens equal, token for token; a failure names the first wrong token (row, stream, column, frame, sampling
    step) and, given `logits` (a callable returning `token_mismatch`'s pair), the logits it came from."""
    try:
        assert_parity(expected.astype(np.int64), got.astype(np.int64), component="stream_tokens", pair=("kyutai", impl),
                      expected_dtype="int64", config={"preset": "tiny", "frames": FRAMES}, **kw)  # fmt: skip
    except ParityError as e:
        where, _ = token_mismatch(CFG, expected, got, names=("kyutai", impl),
                                  logits=None if logits is None else logits())  # fmt: skip
        raise ParityError(f"{e}\n{where}", metrics=e.metrics, failures=[*e.failures, where]) from None


# (b) greedy generation vs kyutai LMGen ------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "impl"), [(0, "flax"), (1, "flax"), (2, "flax"), (0, "flax[attention=pallas]")])
def test_greedy_tokens_match_lmgen(seed, impl):
    expected = _lmgen_tokens(seed)
    run = _greedy_run(seed, impl)
    got = run["tokens"]
    assert got.shape == expected.shape == (2, 1 + CFG.dep_q, FRAMES)
    valid = expected[0, 0] != UNGENERATED
    assert valid.sum() == FRAMES - CFG.max_delay  # LMGen returns None for the first max_delay steps, as we do
    assert len(np.unique(expected[:, :, valid])) > 10, "degenerate generation: the comparison would prove little"
    _assert_tokens(expected, got, impl, logits=lambda: _kyutai_logits_of(seed, impl, run))


# (a) step-by-step logits vs the full forward ------------------------------------------------------------------------


@nnx.jit
def _full_forward(lm, codes):
    """The LM's full forward, compiled once per model and shape (eager, the tiny LM costs ~3x the compile per shape)."""
    return lm(codes)


def _step_vs_full(dtype: str, impl: str, seed: int = 0, frames: int = 40, *, streamer: Streamer | None = None):
    lm = _lms(dtype, seed, impl)[impl]
    codes = user_codes(CFG, 2, frames, seed=seed)
    run = run_steps(streamer or _greedy(dtype, seed, impl), codes)
    full = _full_forward(lm, jnp.asarray(consumed_codes(CFG, codes, run)))
    full = {name: to_numpy(getattr(full, name)) for name in ("text_logits", "audio_logits")}
    aligned = aligned_logits(CFG, full, run)
    return aligned["text_logits"], aligned["audio_logits"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_logits_match_full_forward(dtype, impl):
    """Past the context window: 40 frames through ring caches of 8 slots against one masked full forward."""
    text, audio = _step_vs_full(dtype, impl)
    for component, (full, step) in (("stream_text_logits", text), ("stream_audio_logits", audio)):
        # The step returns float32 logits upcast (exactly) from the model dtype: compare in the model dtype.
        pair = (str(Impl.parse(impl).variant("full")), str(Impl.parse(impl).variant("step")))
        assert_parity(full, step.astype(full.dtype), component=component, pair=pair, expected_dtype=dtype, logits=True,
                      config={"preset": "tiny", "frames": 40, "impl": impl})  # fmt: skip


def _step_vs_kyutai_at_long_positions(impl: str, *, control: str | None = None) -> None:
    """The Streamer's own step at 3100 frames (positions past 3000, its 8-slot rings wrapped ~390 times) against
    kyutai's full forward of the codes it consumed: kyutai, not our full forward, so that a bug the step and our
    forward share is seen (rope positions rounded to bf16 passes the step-vs-full comparison)."""
    frames, seed = 3100, 0
    lm = _lms("float32", seed, impl)[impl]
    codes = user_codes(CFG, 2, frames, seed=seed)
    run = run_steps(Streamer(lm, text=GREEDY, audio=GREEDY), codes)
    ref = kyutai_logits(_lms("float32", seed, impl)["kyutai"], consumed_codes(CFG, codes, run))
    for component, (expected, step) in aligned_logits(CFG, ref, run).items():
        assert_parity(expected, step, component=component, pair=("kyutai", str(Impl.parse(impl).variant("step"))),
                      expected_dtype="float32", logits=True, config={"preset": "tiny", "frames": frames},
                      control=control)  # fmt: skip


@pytest.mark.nightly
@pytest.mark.parametrize("impl", IMPLS)
def test_step_logits_match_kyutai_at_long_positions(impl):
    """Nightly (~10-20 s each on CPU); the 40-frame tests above are its tiny twins."""
    _step_vs_kyutai_at_long_positions(impl)


# generate loop, (d) causality ----------------------------------------------------------------------------------------


@cache
def _sampling_streamer() -> Streamer:
    return Streamer(_lms("float32", 0, "flax")["flax"], text=TEXT, audio=AUDIO)


def test_generate_equals_step_loop():
    streamer, codes, key = _sampling_streamer(), user_codes(CFG, 2, 30, seed=5), jax.random.key(7)
    steps = run_steps(streamer, codes, jax.random.split(key, 30))
    gen, state = streamer.generate(codes, key)
    assert np.array_equal(to_numpy(gen.tokens), steps["tokens"])
    assert np.array_equal(to_numpy(gen.text), steps["text"]) and np.array_equal(to_numpy(gen.audio), steps["audio"])
    assert np.asarray(state.offsets).tolist() == [30, 30]


def _reset_rows(rows=(False, True), streamer: Streamer | None = None):
    """Tokens of a fresh stream, of a stream whose `rows` are reset after 12 steps, and of one never reset (on the
    cached greedy Streamer unless given one)."""
    streamer = streamer or _greedy("float32", 0, "flax")
    first, second = user_codes(CFG, 2, 12, seed=21), user_codes(CFG, 2, 20, seed=22)
    state = streamer.init_state(2)
    for t in range(12):
        _, state = streamer.step(state, first[:, :, t])
    state = streamer.reset(state, np.array(rows))
    after = []
    for t in range(20):
        out, state = streamer.step(state, second[:, :, t])
        after.append(to_numpy(out.tokens))
    fresh = run_steps(streamer, second)["tokens"]
    unreset = run_steps(streamer, np.concatenate([first, second], axis=2))["tokens"][:, :, 12:]
    return fresh, np.stack(after, axis=-1), unreset


def test_reset_restarts_rows_independently():
    """After `reset` of row 1 at step 12, row 1 generates what a fresh stream does with the same codes (greedy), and
    row 0 what it would have without the reset. Checked past the context (20 steps after the reset, context 8).

    After its first frame, the whole session (three fresh states, 84 frames, a reset) compiles nothing: a stream
    never compiles mid-conversation. Counted as the jitted functions' cache sizes (a private jax API) on a Streamer of
    its own, whose step is its own (one program); its commit is jax.jit of a module-level function, whose cache every
    Streamer shares, so only what the session adds to it is counted."""
    streamer = Streamer(_lms("float32", 0, "flax")["flax"], text=GREEDY, audio=GREEDY)
    streamer.step(streamer.init_state(2), user_codes(CFG, 2, 1, seed=20)[:, :, 0])
    compiled = (streamer._step._cache_size(), streamer._commit._cache_size())
    fresh, after, unreset = _reset_rows(streamer=streamer)
    assert compiled[0] == 1 and (streamer._step._cache_size(), streamer._commit._cache_size()) == compiled
    _assert_tokens(fresh[1:], after[1:], "flax")
    _assert_tokens(unreset[:1], after[:1], "flax")
    assert not np.array_equal(unreset[1:], after[1:]), "the reset changed nothing: the check would prove little"
    with pytest.raises(ValueError, match=r"rows must be a \(2,\) bool mask"):
        _greedy("float32", 0, "flax").reset(_greedy("float32", 0, "flax").init_state(2), np.array([1, 0]))


def test_reset_control_fails():
    """Resetting the wrong row (an index mix-up) fails the same check."""
    fresh, after, _ = _reset_rows(rows=(True, False))
    with pytest.raises(ParityError):
        _assert_tokens(fresh[1:], after[1:], "flax", control="reset_wrong_row")


def _first_change(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> int | None:
    """The first step (trailing axis) at which any output differs, or None."""
    steps = [int(np.argmax(np.any(a[k] != b[k], axis=tuple(range(a[k].ndim - 1))))) for k in a if np.any(a[k] != b[k])]
    return min(steps) if steps else None


@pytest.mark.parametrize("change_at", [1, 9, 25])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_later_input_never_changes_earlier_outputs(mode, change_at):
    """Codes that differ from step `change_at` on leave every earlier output bit-identical, and do change later ones."""
    streamer = _greedy("float32", 0, "flax") if mode == "greedy" else _sampling_streamer()
    a = user_codes(CFG, 2, 30, seed=11)
    b = a.copy()
    b[:, :, change_at:] = user_codes(CFG, 2, 30 - change_at, seed=12)
    keys = jax.random.split(jax.random.key(3), 30)
    assert _first_change(run_steps(streamer, a, keys), run_steps(streamer, b, keys)) == change_at


# bad input ----------------------------------------------------------------------------------------------------------


def _codes(batch=2, streams=CFG.n_q - CFG.dep_q, value=0):
    return np.full((batch, streams), value, np.int64)


@pytest.mark.parametrize(
    ("codes", "error", "match"),
    [
        (_codes(streams=5), ValueError, r"n_q - dep_q = 4 user codebooks, got shape \(2, 5\)"),
        (_codes()[:, :, None], ValueError, r"must be \(B, n_q - dep_q\)"),
        (
            _codes(value=32),
            ValueError,
            r"audio ids must be in \[0, 32\) or -1 \(the zero token\); got 32 at index \(0, 0\)",
        ),
        (_codes(value=-2), ValueError, r"got -2 at index \(0, 0\) \(8 out of range\)"),
        (_codes(batch=3), ValueError, "user codes have batch 3, the state has batch 2"),
        (_codes().astype(np.float32), TypeError, r"must be integers, got float32 of shape \(2, 4\)"),
        (_codes().tolist(), TypeError, r"user_codes must be a jax or numpy integer array \(B, n_q - dep_q\), got list"),
    ],
    ids=["codebooks", "rank", "code_eq_card", "code_below_zero_token", "batch", "float", "list"],
)
def test_bad_step_input(codes, error, match):
    streamer = _greedy("float32", 0, "flax")
    with pytest.raises(error, match=match):
        streamer.step(streamer.init_state(2), codes)


def test_step_checks_codes_on_the_host_and_is_not_traced():
    """Codes are checked on the host, so the compiled step carries no check (no effect: JAX's fast dispatch, no host
    callback); numpy's default int64 codes pass without JAX's truncation warning (cast once checked); a step traced
    by an outer jit is refused: its codes could not be checked on the host, and the step compiles its own programs."""
    streamer = _greedy("float32", 0, "flax")
    state, codes = streamer.init_state(2), _codes(value=31)
    traced = streamer._step.trace(
        streamer.params, streamer.depth_weights, state, codes.astype(np.int32), jax.random.key(0)
    )
    assert traced.jaxpr.effects == set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamer.step(state, codes)
    with pytest.raises(TypeError, match=r"Streamer.step: called with traced values \(inside jax.jit"):
        jax.jit(lambda codes: streamer.step(streamer.init_state(2), codes)[0].tokens)(_codes())


def test_consumed_state_is_a_clear_error():
    """A step consumes its state (its caches are updated in place); reusing it is a clear error."""
    streamer = _greedy("float32", 0, "flax")
    state = streamer.init_state(2)
    streamer.step(state, _codes())
    with pytest.raises(ValueError, match="consumed by an earlier step"):
        streamer.step(state, _codes())


def test_bad_generate_and_state_input():
    streamer = _greedy("float32", 0, "flax")
    with pytest.raises(ValueError, match=r"\(B, n_q - dep_q, T\)"):
        streamer.generate(_codes())
    with pytest.raises(ValueError, match="capacity 7 < context 8"):
        streamer.init_state(2, capacity=7)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        streamer.init_state(0)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        _sampling_streamer().step(_sampling_streamer().init_state(2), _codes())
    other = Streamer(build("lm", LMConfig.tiny(context=4), "float32", impls=("flax",)).module("flax"), text=GREEDY,
                     audio=GREEDY)  # fmt: skip
    with pytest.raises(ValueError, match="not made for this model"):
        streamer.step(other.init_state(2), _codes())
    with pytest.raises(TypeError, match="expected a models_flax LM"):
        Streamer(object())


def test_unbounded_context_needs_and_respects_capacity():
    lm = build("lm", LMConfig.tiny(context=None), "float32", impls=("flax",)).module("flax")
    streamer = Streamer(lm, text=GREEDY, audio=GREEDY)
    with pytest.raises(ValueError, match="unbounded; pass capacity"):
        streamer.init_state(1)
    with pytest.raises(ValueError, match="5 frames would overwrite visible keys"):
        streamer.generate(np.zeros((1, 4, 5), np.int64), state=streamer.init_state(1, capacity=4))


@pytest.mark.parametrize(
    ("args", "match"),
    [((-0.1, 5), "temperature must be >= 0"), ((float("nan"), 5), "temperature must be >= 0"), ((0.7, -1), "top_k")],
)
def test_bad_sampler(args, match):
    with pytest.raises(ValueError, match=match):
        Sampler(*args)


# negative controls planted in traced code -------------------------------------------------------------------------
# Last in the module: the `patch` fixture drops every compiled program (jax.clear_caches) before and after each of
# them, so the tests above run first on the cached Streamers' compiled steps instead of recompiling them.


def _slot_without_init(tokens, offsets, delays, initial):  # the initial token for offset < delay instead of <=
    batch, _, width = tokens.shape
    values = tokens[jnp.arange(batch), :, offsets % width]
    return jnp.where(offsets[:, None] < delays[None], initial[None].astype(tokens.dtype), values)


def _user_codes_undelayed(tokens, codes, offsets, delays):  # the user's codes written without their delays
    return _ORIGINAL_WRITE_USER(tokens, codes, offsets, jnp.zeros_like(delays))


def _outputs_undelayed(tokens, offsets, delays):  # the output read back without undoing the delays
    return _ORIGINAL_READ_OUTPUTS(tokens, offsets, jnp.zeros_like(delays))


_ORIGINAL_WRITE_USER = streaming.write_user_codes
_ORIGINAL_READ_OUTPUTS = streaming.read_outputs
_ORIGINAL_UPDATE = KVCache.update


def _update_one_behind(self, k, v, positions):
    return _ORIGINAL_UPDATE(self, k, v, positions - 1)


STREAM_MUTANTS = {
    "initial_token_off_by_one": ("read_inputs", _slot_without_init),
    "user_codes_without_delay": ("write_user_codes", _user_codes_undelayed),
    "output_not_undelayed": ("read_outputs", _outputs_undelayed),
}


# The first wrong token each planted bug makes, as its failure names it, and the verdict on the logits it was drawn
# from: a wrong model (FAIL: the history fed in is wrong), or right logits with the token filed in a wrong place (pass).
STREAM_MUTANT_PLACES = {
    "initial_token_off_by_one": r"text \(stream 0, delay 0\), column 1 = frame 0, sampled at step 0: .*FAIL: candidate"
    r" has 48 non-finite",  # an ungenerated (-1) token is fed in: its embedding is NaN, never a clamped id
    "user_codes_without_delay": r"text \(stream 0, delay 0\), column 3 = frame 2, sampled at step 2: .*FAIL: max_abs",
    "output_not_undelayed": r"audio codebook 2 \(stream 3, delay 1\), column 1 = frame 0, sampled at step 1: .*: pass",
    "cache_positions_minus_one": r"text \(stream 0, delay 0\), column 2 = frame 1, sampled at step 1: .*FAIL: max_abs",
}


@pytest.mark.parametrize("name", STREAM_MUTANT_PLACES)
def test_greedy_control_fails(name, patch):
    """Each planted streaming bug makes the LMGen comparison fail. (A rope shifted by one for queries and keys alike
    is no bug: rotary scores depend on position differences only.) The ring bookkeeping bug must also fail (a), step
    by step against the full forward: on the same patched Streamer, so that the patched step compiles once for both."""
    if name == "cache_positions_minus_one":  # ring bookkeeping one frame behind: the oldest visible key drops out
        patch.setattr(KVCache, "update", _update_one_behind)
    else:
        patch.setattr(streaming, *STREAM_MUTANTS[name])
    streamer = Streamer(_lms("float32", 0, "flax")["flax"], text=GREEDY, audio=GREEDY)  # traced under the patch
    run = _greedy_run(0, "flax", streamer)
    with pytest.raises(ParityError, match=STREAM_MUTANT_PLACES[name]):
        _assert_tokens(_lmgen_tokens(0), run["tokens"], "flax", logits=lambda: _kyutai_logits_of(0, "flax", run),
                       control=name)  # fmt: skip
    if name == "cache_positions_minus_one":
        text, _ = _step_vs_full("float32", "flax", streamer=streamer)
        with pytest.raises(ParityError):
            assert_parity(*text, component="stream_text_logits", pair=("flax[full]", "flax[step]"),
                          expected_dtype="float32", logits=True, control=name)  # fmt: skip


@pytest.mark.nightly
def test_long_positions_control_fails(patch):
    """Rope positions rounded to bf16 (exact below 256, 16 apart past 2048): the step and our own full forward agree
    on it, kyutai does not (text logits measured 4.6 apart)."""
    angles = models_flax.rope.rotation_angles
    patch.setattr(models_flax.rope, "rotation_angles",
                  lambda p, *a: angles(p.astype(jnp.bfloat16).astype(p.dtype), *a))  # fmt: skip
    with pytest.raises(ParityError):
        _step_vs_kyutai_at_long_positions("flax", control="rope_positions_in_bf16")


def test_causality_control_fails(patch):
    """The same check on the full forward with a mask that sees the next frame reports a change before change_at."""
    lm = _lms("float32", 0, "flax")["flax"]
    a = jnp.asarray(np.random.default_rng(0).integers(0, CFG.card, (1, 1 + CFG.n_q, 16)))
    b = a.at[:, :, 9:].set(0)
    original = models_flax.attention.attention_mask
    patch.setattr(models_flax.attention, "attention_mask", lambda q, k, ctx: original(q + 1, k, ctx))
    # Jitted (traced under the patch: the fixture dropped every earlier trace), one compile for both inputs; eager,
    # the two forwards cost ~3x as much.
    outs = [{"text": np.moveaxis(to_numpy(_full_forward(lm, c).text_logits)[0, 0], 0, -1)} for c in (a, b)]
    assert _first_change(*outs) < 9
