"""Sampling: the sampler alone, and per stream (text and audio each with their own settings and their own noise).

The sampler alone: given torch's own exponential noise, `sample_with_noise` picks kyutai sample_token's token; drawn
with JAX keys, `sample` follows the top-k / temperature law; greedy is argmax.

kyutai LMGen samples the text with (temp_text, top_k_text) and every audio codebook with (temp, top_k); each draw takes
fresh exponential noise from torch's global generator, in a fixed order per step: the text, then codebook 0, 1, ...
(a greedy stream draws none). Our Streamer takes one JAX key per step and splits it, one key per draw. Hence:
(a) sampler level, exact: kyutai LMGen's own draws (its logits and tokens, and its noise replayed from its seed) give
    the same tokens through our `sample_with_noise` with Sampler(temp_text, top_k_text) for the text and
    Sampler(temp, top_k) for every codebook;
(b) step level, statistical: a real `Streamer.step` with text and audio Samplers that differ draws each stream from its
    own law, and no two draws of a step share noise.
Planted controls, at both levels: the text drawn with the audio sampler, the audio draws reusing the text key (noise),
the top-k of one stream applied to the other.
"""

import re
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import models_flax.streaming as streaming
from models_flax.sampling import AUDIO, GREEDY, TEXT, Sampler, sample, sample_with_noise
from models_flax.streaming import Streamer
from moshi_spec import LMConfig
from parity.harness.arrays import to_numpy
from parity.harness.compare import ParityError, assert_parity
from parity.harness.implementations import build
from parity.harness.streaming_runs import run_steps, user_codes

CFG = LMConfig.tiny()  # text_card 48, card 32, dep_q 4
# Different temperatures and top-k; the text's top 32 of 48 and audio's whole vocabulary of 32 both race over 32
# candidates, so a key shared between them would hand both the very same noise, which (b)'s agreement check sees.
SAMPLED = (Sampler(2.0, 32), Sampler(1.2, 0))
SETTINGS = {"sampled": SAMPLED, "greedy_text": (GREEDY, Sampler(0.8, 10)), "lmgen_defaults": (TEXT, AUDIO)}


def _lmgen_kwargs(text: Sampler, audio: Sampler) -> dict:
    """What LMGen is given for our (text, audio) samplers."""
    return {"temp_text": text.temperature, "top_k_text": text.top_k, "temp": audio.temperature, "top_k": audio.top_k}


# the sampler alone: kyutai sample_token given its noise, and the top-k law -----------------------------------------


def _kyutai_and_noise(logits: np.ndarray, temperature: float, top_k: int, seed: int):
    """kyutai sample_token's tokens, and the exponential noise it drew (replayed from the same torch seed)."""
    from moshi.utils.sampling import sample_token

    torch.manual_seed(seed)
    tokens = sample_token(torch.from_numpy(logits), True, temperature, top_k)
    torch.manual_seed(seed)
    k = logits.shape[-1] if top_k == 0 else min(top_k, logits.shape[-1])
    return to_numpy(tokens), to_numpy(torch.empty(logits.shape[0], k).exponential_(1))


SAMPLERS = [TEXT, AUDIO, Sampler(1.0, 0), Sampler(0.5, 1000), GREEDY]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: f"t{s.temperature}-k{s.top_k}")
def test_sampling_matches_kyutai_given_its_noise(sampler):
    logits = np.random.default_rng(0).standard_normal((4096, 300)).astype(np.float32)
    for seed in range(3):
        expected, noise = _kyutai_and_noise(logits, sampler.temperature, sampler.top_k, seed)
        got = sample_with_noise(jnp.asarray(logits), jnp.asarray(noise), sampler)
        assert_parity(expected.astype(np.int64), to_numpy(got).astype(np.int64), component="sampled_tokens",
                      pair=("kyutai", "flax"), expected_dtype="int64", config={"sampler": str(sampler)})  # fmt: skip


@pytest.mark.parametrize("planted", [Sampler(0.8, 25), Sampler(0.7, 26)], ids=["audio_temp_for_text", "top_k_plus_1"])
def test_sampling_control_fails(planted):
    """kyutai drew with TEXT (0.7, top 25); a sampler with the wrong temperature or k picks other tokens."""
    logits = np.random.default_rng(0).standard_normal((4096, 300)).astype(np.float32)
    expected, noise = _kyutai_and_noise(logits, TEXT.temperature, TEXT.top_k, 0)
    extra = np.random.default_rng(1).exponential(size=(4096, 1)).astype(np.float32)
    noise = np.concatenate([noise, extra], 1)[:, : planted.top_k]
    got = sample_with_noise(jnp.asarray(logits), jnp.asarray(noise), planted)
    with pytest.raises(ParityError):
        assert_parity(expected.astype(np.int64), to_numpy(got).astype(np.int64), component="sampled_tokens",
                      pair=("kyutai", "flax"), expected_dtype="int64", control=str(planted))  # fmt: skip


def _distribution_failures(sampler: Sampler, expected: Sampler, draws: int = 200_000) -> list[str]:
    """Draws `draws` tokens with `sampler` and checks them against the law of `expected`: zero mass outside its top k,
    every frequency within 5 binomial standard deviations of softmax(logits / T) renormalized over the top k."""
    logits = jnp.asarray(2 * np.random.default_rng(1).standard_normal(40), jnp.float32)
    tokens = sample(jnp.broadcast_to(logits, (draws, 40)), jax.random.key(0), sampler)
    freq = np.bincount(to_numpy(tokens), minlength=40) / draws
    p = np.exp(np.asarray(logits, np.float64) / expected.temperature)
    keep = np.argsort(-p)[: expected.candidates(40)]
    law = np.zeros(40)
    law[keep] = p[keep] / p[keep].sum()
    failures = [f"mass {freq[law == 0].sum():.2e} outside the top {len(keep)}"] if freq[law == 0].sum() else []
    sigma = np.sqrt(law * (1 - law) / draws)
    bad = np.abs(freq - law) > 5 * sigma + 1e-12
    return failures + [f"token {i}: frequency {freq[i]:.4f}, law {law[i]:.4f}" for i in np.flatnonzero(bad)]


def test_sampling_follows_the_top_k_law():
    assert _distribution_failures(Sampler(0.8, 10), Sampler(0.8, 10)) == []
    assert _distribution_failures(Sampler(1.3, 0), Sampler(1.3, 0)) == []


@pytest.mark.parametrize("planted", [Sampler(1.0, 10), Sampler(0.8, 11)], ids=["temperature_ignored", "top_k_plus_1"])
def test_sampling_law_control_fails(planted):
    assert _distribution_failures(planted, Sampler(0.8, 10)) != []


def test_greedy_is_argmax():
    logits = jnp.asarray(np.random.default_rng(2).standard_normal((64, 100)), jnp.float32)
    assert np.array_equal(to_numpy(sample(logits, jax.random.key(0), GREEDY)), np.argmax(to_numpy(logits), -1))


# (a) kyutai LMGen's draws replayed through our sampler ---------------------------------------------------------------

LMGEN_BATCH, LMGEN_STEPS = 64, 6


@cache
def _kyutai_lm():
    return build("lm", CFG, "float32", impls=("kyutai",), seed=0).module("kyutai")


@torch.no_grad()
def _lmgen_draws(text: Sampler, audio: Sampler, seed: int) -> dict:
    """kyutai LMGen with sampling from torch seed `seed`: per step the text logits (B, text_card) and token (B,), the
    audio logits (B, dep_q, card) and tokens (B, dep_q), and the generator's state once done."""
    from moshi.models.lm import LMGen

    lm, draws = _kyutai_lm(), {"text_logits": [], "text": [], "audio_logits": [], "audio": []}
    forward, audio_logits = lm.forward_depformer, []

    def forward_recorded(codebook, tokens, transformer_out):
        logits = forward(codebook, tokens, transformer_out)
        audio_logits.append(to_numpy(logits.float()[:, 0, 0]))
        return logits

    def audio_recorded(tokens):
        draws["audio"].append(to_numpy(tokens))
        draws["audio_logits"].append(np.stack(audio_logits, axis=1))
        audio_logits.clear()

    gen = LMGen(lm, use_sampling=True, **_lmgen_kwargs(text, audio),
                on_text_logits_hook=lambda logits: draws["text_logits"].append(to_numpy(logits.float()[:, 0, 0])),
                on_text_hook=lambda token: draws["text"].append(to_numpy(token)),
                on_audio_hook=audio_recorded)  # fmt: skip
    codes = user_codes(CFG, LMGEN_BATCH, LMGEN_STEPS, seed=seed)
    lm.forward_depformer = forward_recorded  # an instance attribute over the method, removed below
    try:
        torch.manual_seed(seed)
        with gen.streaming(LMGEN_BATCH):
            for t in range(LMGEN_STEPS):
                gen.step(torch.from_numpy(codes[:, :, t : t + 1]))
    finally:
        del lm.forward_depformer
    return {**{name: np.stack(v) for name, v in draws.items()}, "rng": torch.get_rng_state()}


def _replayed_noise(text: Sampler, audio: Sampler, seed: int) -> list[list]:
    """kyutai's noise, drawn again in LMGen's order: per step [text, codebook 0, ...], (B, candidates) each, None for a
    greedy stream. Ends with the generator's state (which must be LMGen's: the same draws, no more, no fewer)."""
    torch.manual_seed(seed)
    steps = []
    for _ in range(LMGEN_STEPS):
        step = []
        for sampler, vocab in [(text, CFG.text_card)] + [(audio, CFG.card)] * CFG.dep_q:
            shape = (LMGEN_BATCH, sampler.candidates(vocab))
            step.append(None if sampler.greedy else to_numpy(torch.empty(shape).exponential_(1)))
        steps.append(step)
    return [*steps, torch.get_rng_state()]


def _fit(noise: np.ndarray | None, k: int) -> np.ndarray:
    """noise cut or extended (fresh exponentials, fixed seed) to k candidates: the width a planted sampler needs."""
    extra = np.random.default_rng(9).exponential(size=(LMGEN_BATCH, max(k - noise.shape[1], 0)))
    return np.concatenate([noise, extra.astype(np.float32)], axis=1)[:, :k]


def _replay(draws: dict, noise: list, text: Sampler, audio: Sampler, plant: str | None = None) -> dict:
    """Our tokens for kyutai's logits and noise: the text with `text`, every codebook with `audio` and its own noise,
    unless `plant` routes one of them wrongly (the controls)."""
    if plant == "text_with_audio_sampler":
        text = audio
    elif plant == "top_k_swapped":
        text, audio = Sampler(text.temperature, audio.top_k), Sampler(audio.temperature, text.top_k)
    out = {"text": [], "audio": []}
    for t, (text_noise, *audio_noise) in enumerate(noise[:LMGEN_STEPS]):
        if plant == "audio_reuses_text_noise":
            audio_noise = [text_noise] * CFG.dep_q
        logits = draws["text_logits"][t]
        text_noise = logits[:, :1] if text.greedy else _fit(text_noise, text.candidates(CFG.text_card))
        out["text"].append(to_numpy(sample_with_noise(jax.numpy.asarray(logits), jax.numpy.asarray(text_noise), text)))
        codebooks = []
        for c, q in enumerate(audio_noise):
            logits = draws["audio_logits"][t][:, c]
            q = logits[:, :1] if audio.greedy else _fit(q, audio.candidates(CFG.card))
            codebooks.append(to_numpy(sample_with_noise(jax.numpy.asarray(logits), jax.numpy.asarray(q), audio)))
        out["audio"].append(np.stack(codebooks, axis=1))
    return {name: np.stack(v) for name, v in out.items()}


def _assert_same_draws(draws: dict, ours: dict, setting: str, **kw) -> None:
    expected = np.concatenate([draws["text"][..., None], draws["audio"]], axis=-1).astype(np.int64)
    got = np.concatenate([ours["text"][..., None], ours["audio"]], axis=-1).astype(np.int64)
    assert_parity(expected, got, component="sampled_tokens", pair=("kyutai", "flax"), expected_dtype="int64",
                  config={"lmgen": _lmgen_kwargs(*SETTINGS[setting]), "steps": LMGEN_STEPS}, **kw)  # fmt: skip


@pytest.mark.parametrize("setting", SETTINGS)
def test_lmgen_draws_replayed_through_our_sampler(setting):
    """Every text and audio token LMGen drew (6 steps of 64 rows) is ours given its logits and its noise; replaying
    exactly LMGen's draws (text then each codebook, none for a greedy stream) leaves torch's generator where LMGen
    did."""
    text, audio = SETTINGS[setting]
    draws, noise = _lmgen_draws(text, audio, seed=1), _replayed_noise(text, audio, seed=1)
    assert torch.equal(noise[-1], draws["rng"]), "the replay drew other noise than LMGen"
    assert len(np.unique(draws["audio"])) > 10, "degenerate draws: the comparison would prove little"
    _assert_same_draws(draws, _replay(draws, noise, text, audio), setting)


@pytest.mark.parametrize("plant", ["text_with_audio_sampler", "audio_reuses_text_noise", "top_k_swapped"])
def test_lmgen_replay_control_fails(plant):
    draws, noise = _lmgen_draws(*SAMPLED, seed=1), _replayed_noise(*SAMPLED, seed=1)
    with pytest.raises(ParityError):
        _assert_same_draws(draws, _replay(draws, noise, *SAMPLED, plant=plant), "sampled", control=plant)


# (b) Streamer.step: each stream's law, independent noise -------------------------------------------------------------

BATCH, STEPS = 512, 4  # 2048 draws per stream (the logits differ by row and step: each row has its own codes)


@cache
def _flax_lm():
    return build("lm", CFG, "float32", impls=("flax",), seed=0).module("flax")


@cache
def _streamer(setting: str) -> Streamer:
    text, audio = SETTINGS[setting]
    return Streamer(_flax_lm(), text=text, audio=audio)


def _step_draws(streamer: Streamer) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tokens (N,), logits (N, V)) of the text and of each codebook, N = BATCH * STEPS rows."""
    run = run_steps(streamer, user_codes(CFG, BATCH, STEPS, seed=3), jax.random.split(jax.random.key(4), STEPS))
    rows = [(run["text"], run["text_logits"])] + [(run["audio"][:, c], run["audio_logits"][:, c]) for c in range(4)]
    return [(np.moveaxis(tok, -1, 0).reshape(-1), np.moveaxis(lg, -1, 0).reshape(-1, lg.shape[1])) for tok, lg in rows]


def _law(logits: np.ndarray, sampler: Sampler) -> np.ndarray:
    """(N, V) float64 probabilities of kyutai's rule: softmax(logits / T) kept on the top k, renormalized (one-hot
    argmax when greedy)."""
    if sampler.greedy:
        return np.eye(logits.shape[1])[np.argmax(logits, axis=1)]
    z = logits.astype(np.float64) / sampler.temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    np.put_along_axis(p, np.argsort(-p, axis=1)[:, sampler.candidates(logits.shape[1]) :], 0.0, axis=1)
    return p / p.sum(axis=1, keepdims=True)


def _beyond(count: float, p: np.ndarray) -> str | None:
    """`count` events against per-row probabilities p (N,) of independent draws (a martingale: each draw is fresh noise
    given its logits): their mean +- 5 standard deviations, or a word on how far off the count is."""
    mean, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
    return None if abs(count - mean) <= 5 * sd + 1e-6 * len(p) else f"{count} where {mean:.1f} +- {sd:.1f} is expected"


def _law_failures(name: str, tokens: np.ndarray, law: np.ndarray) -> list[str]:
    """Zero draws outside the law's support; the frequency of every rank (by law, descending) within 5 sigma. Ranks
    expected fewer than 25 times are pooled, so that the normal bound is not put on a handful of rare events."""
    rows = np.arange(len(tokens))
    failures = [f"{name}: {n} draws outside its top k" for n in [int((law[rows, tokens] == 0).sum())] if n]
    order = np.argsort(-law, axis=1, kind="stable")
    ranks, by_rank = np.argmax(order == tokens[:, None], axis=1), np.take_along_axis(law, order, axis=1)
    rare = by_rank.sum(axis=0) < 25
    bins = [([j], f"rank {j}") for j in np.flatnonzero(~rare)]
    bins += [(np.flatnonzero(rare), "the rare ranks")] if rare.any() else []
    for members, label in bins:
        off = _beyond(int(np.isin(ranks, members).sum()), by_rank[:, members].sum(axis=1))
        failures += [f"{name}: {label} drawn {off}"] if off else []
    return failures


def _race(tokens: np.ndarray, law: np.ndarray, sampler: Sampler) -> tuple[np.ndarray, np.ndarray]:
    """Race positions (N,) and the law over them (N, candidates): noise j goes to the j-th most probable token (to
    token j when top_k is 0, kyutai's vocabulary order)."""
    if sampler.top_k == 0:
        return tokens, law
    order = np.argsort(-law, axis=1, kind="stable")[:, : sampler.candidates(law.shape[1])]
    return np.argmax(order == tokens[:, None], axis=1), np.take_along_axis(law, order, axis=1)


def _failures(draws: list[tuple[np.ndarray, np.ndarray]], text: Sampler, audio: Sampler) -> list[str]:
    """Each stream against its own law, and each pair of sampled draws of a row for shared noise: draw b lands on draw
    a's race position with probability law_b(position_a) when their noises are independent, far more often when
    shared (with flat laws the smallest noise wins both races)."""
    names = ["text"] + [f"audio {c}" for c in range(CFG.dep_q)]
    samplers = [text] + [audio] * CFG.dep_q
    laws = [_law(logits, s) for (_, logits), s in zip(draws, samplers, strict=True)]
    failures = [
        f for name, (tokens, _), law in zip(names, draws, laws, strict=True) for f in _law_failures(name, tokens, law)
    ]
    races = [_race(tokens, law, s) for (tokens, _), law, s in zip(draws, laws, samplers, strict=True)]
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if samplers[a].greedy or samplers[b].greedy:
                continue
            (pos_a, _), (pos_b, law_b) = races[a], races[b]
            p = np.where(pos_a < law_b.shape[1], law_b[np.arange(len(pos_a)), np.minimum(pos_a, law_b.shape[1] - 1)], 0)
            off = _beyond(int((pos_a == pos_b).sum()), p)
            failures += [f"{names[a]} and {names[b]} share noise: same race position {off}"] if off else []
    return failures


@pytest.mark.parametrize("setting", ["sampled", "greedy_text"])
def test_each_stream_draws_its_own_law_with_its_own_noise(setting):
    """Streamer.step, text and audio Samplers that differ (one greedy in "greedy_text"): every stream follows its own
    law, and no two draws of a step share noise."""
    draws = _step_draws(_streamer(setting))
    assert _failures(draws, *SETTINGS[setting]) == []
    assert all(len(np.unique(tokens)) > 5 for tokens, _ in draws[1:]), "degenerate draws: the check would prove little"


def _planted(plant: str, text: Sampler, audio: Sampler):
    """streaming.sample with one routing bug. The step calls it for the text, then for each codebook in order; the text
    logits are the only ones text_card wide."""
    text_key = []

    def planted_sample(logits, key, sampler):
        is_text = logits.shape[-1] == CFG.text_card
        if is_text:
            text_key[:] = [key]
        if plant == "text_with_audio_sampler" and is_text:
            sampler = audio
        elif plant == "audio_reuses_text_key" and not is_text:
            key = text_key[0]
        elif plant == "top_k_swapped":
            sampler = Sampler(sampler.temperature, (audio if is_text else text).top_k)
        return sample(logits, key, sampler)

    return planted_sample


@pytest.mark.parametrize(
    ("plant", "setting", "expected"),
    [
        ("text_with_audio_sampler", "greedy_text", r"text: \d+ draws outside its top k"),
        ("audio_reuses_text_key", "sampled", "text and audio 0 share noise"),
        ("top_k_swapped", "sampled", r"text: (\d+ draws outside its top k|rank \d+ drawn)"),
    ],
)
def test_step_control_fails(plant, setting, expected, monkeypatch):
    """Each planted routing bug fails (b) for its own reason. The plant is traced by a fresh Streamer only (its own
    jit), so plain monkeypatch suffices and the cached Streamers keep their compiled steps."""
    text, audio = SETTINGS[setting]
    monkeypatch.setattr(streaming, "sample", _planted(plant, text, audio))
    failures = _failures(_step_draws(Streamer(_flax_lm(), text=text, audio=audio)), text, audio)
    assert any(re.match(expected, f) for f in failures), failures
