"""The head options of kyutai's LMModel: `bias_proj` (a bias on the text head and on every depth head `linears.{k}`),
`text_card_out` (a text head wider or narrower than the text vocabulary; the text embeddings keep text_card + 1 rows),
`extra_heads_num_heads` / `extra_heads_dim` (extra linear heads on the normed temporal output: LMModel.forward leaves
them out, LMGen.step_with_extra_heads returns their softmax; our LMs return their logits as `extra_logits`),
`existing_text_end_padding_id` (read by no layer: carried in the config, read and written with the kwargs, and the id
kyutai's fine-tuning recipe weighs as padding), `demux_second_text_stream` (kyutai's ScaledEmbedding demuxing two text
streams from one id, in the temporal and the depth text embeddings) and a model without user audio (n_q == dep_q).

What it proves, on tiny float32 models: kyutai vs ref vs flax logits and extra heads' logits (bfloat16 too, nightly);
greedy streaming tokens token for token vs kyutai's LMGen (and the extra heads' softmax vs step_with_extra_heads);
conversions kyutai -> ref / flax -> kyutai bit-exact and a CLI conversion from the kyutai kwargs; the kwargs read back
identically; the recipe's text loss weighing the end padding id; HF refusing each option by name; bad values named;
and negative controls (a bias dropped, the depth biases not sliced per codebook in streaming, extra heads swapped, the
demux offset of kyutai's docstring, the end padding id not weighed, the text head read as text_card wide) failing.
The drawn whole-LM comparison (strategies.lm_cases, parity/test_lm_norms.py) samples the head options too."""

import contextlib
from functools import cache

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

import models_flax.embedding
import models_flax.linear
import models_flax.lm
import models_flax.loss
import models_flax.streaming
import models_ref.lm
import models_ref.loss
from converters import ConversionError, convert
from converters.formats import hf_refuses
from converters.lm_config import from_kyutai_kwargs
from converters.upstream_config import to_hf_config, to_kyutai_kwargs, upstream_config
from models_flax.sampling import GREEDY
from models_flax.streaming import UNGENERATED, Streamer
from moshi_spec import LMConfig
from parity.harness import lm_options, strategies
from parity.harness.arrays import to_numpy
from parity.harness.compare import ParityError, assert_parity
from parity.harness.implementations import build
from parity.harness.placement import rule_specs
from parity.harness.policy import sized
from parity.harness.streaming_runs import run_steps, token_mismatch, user_codes
from train.data import DataError, check_codes

TINY = LMConfig.tiny()
# every head option at once: biases, a text head 7 wider than the vocabulary, two extra heads of 5, an end padding id
# and the demuxed text stream (text ids run over (48 + 1) * (48 + 2) muxed pairs; the head's 55 outputs are muxed ids
# too: 49..54 carry a second stream, so streaming feeds both terms back)
HEADS = TINY.replace(
    bias_proj=True,
    text_card_out=TINY.text_card + 7,
    extra_heads=2,
    extra_heads_dim=5,
    existing_text_end_padding_id=1,
    demux_second_text_stream=True,
)
# no user audio: every audio stream is Moshi's (LMGen then takes no user codes)
NO_USER = TINY.replace(n_q=TINY.dep_q, delays=TINY.delays[: 1 + TINY.dep_q], bias_proj=True)
IMPLS = ("kyutai", "ref", "flax")


@cache
def _runs(name: str):
    """The float32 LM `name` ("heads", "no_user") in kyutai, ref and flax, and their outputs."""
    cfg = {"heads": HEADS, "no_user": NO_USER}[name]
    models = build("lm", cfg, "float32", impls=IMPLS)
    return models, {impl: models.run(impl, {"codes": lm_options.codes(cfg)}) for impl in IMPLS}


@pytest.mark.parametrize("impl", ("ref", "flax"))
@pytest.mark.parametrize("name", ("heads", "no_user"))
def test_logits_match_kyutai(name, impl):
    """Text, audio and extra heads' logits (masks and NaN placement exactly, values within the policy)."""
    models, runs = _runs(name)
    assert runs["kyutai"]["text_logits"].shape[-1] == models.cfg.text_out
    lm_options.compare(models.cfg, runs["kyutai"], runs[impl], ("kyutai", impl), "float32")


@pytest.mark.nightly  # ~8 s on CPU (the drawn lm_cases cover bf16 with head options too, 1 draw in ci)
def test_bf16_logits_match_kyutai():
    """The heads model in bfloat16 (kyutai's bf16 biases and demux sums), kyutai vs flax, within the bf16 policy."""
    models = build("lm", HEADS, "bfloat16", impls=("kyutai", "flax"))
    runs = {impl: models.run(impl, {"codes": lm_options.codes(HEADS)}) for impl in ("kyutai", "flax")}
    lm_options.compare(HEADS, runs["kyutai"], runs["flax"], ("kyutai", "flax"), "bfloat16")


def test_no_user_stream_tokens_match_lmgen():
    """float32 greedy streaming without user streams (LMGen takes (B, 0, 1) codes), token for token against LMGen."""
    lm_options.assert_stream_tokens_match_lmgen(_runs("no_user")[0])


@pytest.mark.nightly  # the scan's compile takes ~4 s on CPU
def test_no_user_generate_equals_steps():
    """Streamer.generate over (B, 0, T) user codes (one compiled loop) gives the step loop's tokens."""
    models, _ = _runs("no_user")
    streamer = Streamer(models.module("flax"), text=GREEDY, audio=GREEDY)
    user = user_codes(NO_USER, 2, NO_USER.max_delay + lm_options.STREAM_FRAMES, seed=2)
    assert user.shape[1] == 0
    generated, _ = streamer.generate(user)
    assert np.array_equal(np.asarray(generated.tokens), run_steps(streamer, user)["tokens"])


@cache
@torch.no_grad()
def _lmgen_with_extra_heads() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kyutai LMGen.step_with_extra_heads (greedy) of the heads model over user codes (B, U, T) -> the user codes,
    tokens (B, 1 + dep_q, T), UNGENERATED where it returned None, and the extra heads (B, heads, dim, T - max_delay)
    of the steps that return them."""
    from moshi.models.lm import LMGen

    kyutai_lm = _runs("heads")[0].module("kyutai")
    user = user_codes(HEADS, 2, HEADS.max_delay + lm_options.STREAM_FRAMES, seed=2)
    gen = LMGen(kyutai_lm, use_sampling=False)
    batch, _, frames = user.shape
    tokens, extra = np.full((batch, 1 + kyutai_lm.dep_q, frames), UNGENERATED), []
    with gen.streaming(batch):
        for t in range(frames):
            out = gen.step_with_extra_heads(torch.from_numpy(user[:, :, t : t + 1]))
            if out is not None:
                tokens[:, :, t] = out[0][:, :, 0].numpy()
                extra.append(torch.stack(out[1], dim=1)[:, :, 0].numpy())  # each head (B, 1, dim)
    return user, tokens, np.stack(extra, axis=-1)


def test_stream_tokens_and_extra_heads_match_lmgen():
    """float32 greedy streaming of the heads model against kyutai's LMGen.step_with_extra_heads: the tokens token for
    token (text sampled from the 55-wide biased head and fed back through both demux embeddings, audio through the
    biased depth heads), and the extra heads' softmax on each step's normed temporal output, compared as
    log-probabilities (logits up to a shift) under the text logits' policy."""
    models, _ = _runs("heads")
    user, tokens, extra = _lmgen_with_extra_heads()
    got = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), user)
    where, _ = token_mismatch(HEADS, tokens, got["tokens"], names=("kyutai", "flax[step]"))
    assert np.array_equal(tokens, got["tokens"]), where
    assert (got["text"] >= HEADS.text_card + 1).any(), "no sampled text token carries a second stream"
    assert got["extra_heads"].shape == (2, HEADS.extra_heads, HEADS.extra_heads_dim, user.shape[2])
    returned = got["extra_heads"][..., HEADS.max_delay :]  # LMGen returns them from step max_delay on
    assert_parity(np.log(extra), np.log(returned), component=sized("text_logits", "tiny"), pair=("kyutai", "flax"),
                  expected_dtype="float32", logits=True, config={"preset": "tiny", "what": "extra_heads softmax"},
                  inputs={"user_codes": user.shape})  # fmt: skip


def test_cli_converts_a_heads_checkpoint(tmp_path):
    """kyutai kwargs with every head option as --config (demux under loaders' older name demux_second_stream): the
    Flax LM loaded from the CLI's output computes kyutai's logits and extra heads."""
    models, runs = _runs("heads")
    kwargs = to_kyutai_kwargs(HEADS)
    assert {k: kwargs[k] for k in ("bias_proj", "text_card_out", "extra_heads_num_heads", "extra_heads_dim")} == {
        "bias_proj": True, "text_card_out": 55, "extra_heads_num_heads": 2, "extra_heads_dim": 5,
    }  # fmt: skip
    assert (kwargs["existing_text_end_padding_id"], kwargs.pop("demux_second_text_stream")) == (1, True)
    cand = lm_options.cli_converted_logits(models, kwargs | {"demux_second_stream": True}, tmp_path)
    lm_options.compare(HEADS, runs["kyutai"], cand, ("kyutai", "flax"), "float32")


@pytest.mark.parametrize("dst", ("ref", "flax"))
def test_conversion_round_trips_bit_exact(dst):
    """kyutai -> dst -> kyutai gives back every key of the heads model bit for bit (biases, extra heads, demux)."""
    models, _ = _runs("heads")
    state = models.states["kyutai"]
    back = convert(convert(state, src="kyutai", dst=dst, cfg=HEADS, component="lm"), src=dst, dst="kyutai", cfg=HEADS,
                   component="lm")  # fmt: skip
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state)
    assert {"text_linear.bias", "linears.3.bias", "extra_heads.1.weight", "depformer_text_emb.out2.weight"} <= set(back)


@pytest.mark.parametrize("cfg", (HEADS, NO_USER, TINY.replace(extra_heads_dim=3, text_card_out=TINY.text_card)))
def test_kyutai_kwargs_read_back(cfg):
    """The kwargs writer's output reads back as the same LMConfig (every head field, the defaults left out)."""
    assert from_kyutai_kwargs(to_kyutai_kwargs(cfg)) == cfg
    assert upstream_config("kyutai", cfg) is not None


def test_parameter_count():
    """LMConfig.num_params counts the biases, the wider text head, the extra heads and both demux pairs as kyutai
    lays them out."""
    models, _ = _runs("heads")
    assert sum(v.size for v in models.states["kyutai"].values()) == HEADS.num_params()


RECIPE = {"first_codebook_weight_multiplier": 100.0, "text_padding_weight": 0.5}  # moshi-finetune's 7B example


@torch.no_grad()
def _recipe_text_loss(out, codes: np.ndarray, lm) -> torch.Tensor:
    """moshi-finetune's text loss of a kyutai LMOutput: kyutai's cross_entropy over the text head's outputs, positions
    whose target is the LM's text_padding_token_id or end_of_text_padding_id weighed by the padding weight."""
    from moshi.utils.compile import no_compile
    from moshi.utils.utils import cross_entropy

    targets = torch.from_numpy(codes[:, :1])
    with no_compile():
        ce = cross_entropy(out.text_logits, targets, out.text_mask)
    weights = out.text_mask.float()
    for padding_id in (lm.text_padding_token_id, lm.end_of_text_padding_id):
        weights[targets == padding_id] *= RECIPE["text_padding_weight"]
    return (ce * weights).sum() / weights.sum()


@pytest.mark.parametrize(
    ("impl", "padding_ids"), [("ref", HEADS.text_padding_ids), ("flax", HEADS.text_padding_ids), ("flax", (3,))]
)
def test_loss_weighs_the_end_padding_id_as_the_recipe(impl, padding_ids):
    """The training loss on kyutai's own output for the heads model (targets muxed text ids the 55-wide head scores,
    the end padding id 1 and the padding id 3 among them), weighted with `text_padding_ids` from the config, equals
    moshi-finetune's text loss, which reads both ids from kyutai's LM. Negative control: the padding id alone (the
    end padding id not weighed) fails."""
    models, _ = _runs("heads")
    assert HEADS.text_padding_ids == (1, 3) and TINY.text_padding_ids == (0, 3)
    codes = strategies.loss_codes(HEADS, 2, lm_options.LENGTH, seed=0, padding_ids=HEADS.text_padding_ids)
    codes[:, 0] = np.where(codes[:, 0] >= 0, codes[:, 0] % HEADS.text_out, codes[:, 0])  # targets the head scores
    assert all((codes[:, 0] == i).any() for i in HEADS.text_padding_ids)
    kyutai = models.module("kyutai")
    with torch.no_grad():
        out = kyutai(torch.from_numpy(codes))
    expected = _recipe_text_loss(out, codes, kyutai)
    fields = {"text_logits": out.text_logits, "text_mask": out.text_mask, "audio_logits": out.logits,
              "audio_mask": out.mask}  # fmt: skip
    if impl == "ref":
        _, parts = models_ref.loss.lm_loss(models_ref.lm.LMOutput(**fields), torch.from_numpy(codes), **RECIPE,
                                           text_padding_ids=padding_ids)  # fmt: skip
    else:
        output = models_flax.lm.LMOutput(**{name: jnp.asarray(to_numpy(x)) for name, x in fields.items()})
        _, parts = models_flax.loss.lm_loss(output, jnp.asarray(codes), **RECIPE, text_padding_ids=padding_ids)
    got, control = to_numpy(parts["text"]).reshape(-1), padding_ids != HEADS.text_padding_ids
    with pytest.raises(ParityError) if control else contextlib.nullcontext():
        assert_parity(to_numpy(expected).reshape(-1), got, component="lm_loss_same_logits", pair=("kyutai", impl),
                      expected_dtype="float32", config={"preset": "tiny", "part": "text"},
                      control="end_padding_not_weighed" if control else None)  # fmt: skip


OPTIONS = {
    "bias_proj": {"bias_proj": True},
    "text_card_out": {"text_card_out": 40},
    "extra_heads_num_heads": {"extra_heads": 1},
    "demux_second_text_stream": {"demux_second_text_stream": True},
}


@pytest.mark.parametrize("option", OPTIONS)
def test_hf_refuses_each_option(option):
    """HF's Moshi has none of the head options: the format, the HF config writer and the harness refuse each, naming
    it; an end padding id HF cannot hold makes the HF config lose a field, named."""
    cfg = TINY.replace(**OPTIONS[option])
    assert option in hf_refuses("lm", cfg)
    with pytest.raises(ValueError, match=option):
        to_hf_config(cfg)
    with pytest.raises(ValueError, match=option):
        build("lm", cfg, "float32", impls=("hf",))


def test_hf_refuses_conversion():
    """Converting the heads model's kyutai weights to hf fails naming the option; an end padding id is lost by an HF
    config, which says so."""
    models, _ = _runs("heads")
    with pytest.raises(ValueError, match=r"convert kyutai->hf \(lm\): .*bias_proj=True cannot be converted to hf"):
        convert(models.states["kyutai"], src="kyutai", dst="hf", cfg=HEADS, component="lm")
    with pytest.raises(ValueError, match=r"existing_text_end_padding_id=1"):
        upstream_config("hf", TINY.replace(existing_text_end_padding_id=1))


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"text_card_out": 0}, r"text_card_out must be >= 1 or None, got 0"),
        ({"extra_heads_dim": 0}, r"extra_heads_dim must be >= 1, got 0"),
        ({"extra_heads": -1}, r"extra_heads must be >= 0, got -1"),
        ({"existing_text_end_padding_id": 48}, r"existing_text_end_padding_id must be a text token \(< text_card 48\)"),
        ({"bias_proj": 1}, r"bias_proj"),
        ({"demux_second_text_stream": True, "norm_emb": True}, r"demux_second_text_stream has no embedding norm"),
    ],
)
def test_bad_values_are_named(changes, said):
    with pytest.raises(ValueError, match=said):
        TINY.replace(**changes)


def test_kyutai_kwargs_refused_naming_the_key():
    kwargs = to_kyutai_kwargs(HEADS)
    with pytest.raises(ValueError, match=r"extra_heads_dim=0 is not a positive integer"):
        from_kyutai_kwargs(kwargs | {"extra_heads_dim": 0})
    with pytest.raises(ValueError, match=r"demux_second_stream=False contradicts demux_second_text_stream=True"):
        from_kyutai_kwargs(kwargs | {"demux_second_stream": False})
    with pytest.raises(ValueError, match=r"existing_text_end_padding_id must be a text token"):
        from_kyutai_kwargs(kwargs | {"existing_text_end_padding_id": 48})


def test_streamer_refuses_a_text_head_wider_than_its_embedding():
    """A text head with more outputs than the text embedding takes (no demux): a sampled token could not be fed back
    (kyutai's LMGen would raise an IndexError embedding it); refused up front, naming text_card_out."""
    cfg = TINY.replace(text_card_out=TINY.text_card + 2)
    lm = nnx.eval_shape(lambda: models_flax.lm.LM(cfg, rngs=nnx.Rngs(0)))  # refused before any weight is read
    with pytest.raises(ValueError, match=r"50 outputs \(text_card_out\) but the text embedding takes 49 ids"):
        Streamer(lm)


# Negative controls: each plants a bug a port of these options could make, and the comparison must fail.


def _bias_dropped(monkeypatch):
    """The text head's bias left out (flax Linear)."""
    original = models_flax.linear.Linear.__call__

    def no_bias(self, x, *, layer_idx=None):
        y = original(self, x, layer_idx=layer_idx)
        return y if self.bias is None else (y - self.bias[...]).astype(y.dtype)

    monkeypatch.setattr(models_flax.linear.Linear, "__call__", no_bias)


def _extra_heads_swapped(monkeypatch, models):
    """The extra heads in the wrong order (a ModuleList index mapped wrongly)."""
    lm = models.module("flax")
    monkeypatch.setattr(lm, "extra_heads", nnx.List(list(lm.extra_heads)[::-1]))


def _demux_docstring_offset(monkeypatch):
    """The demux read as kyutai's docstring says, `tok2 * card + tok1`, without the code's -1 on the second stream
    (which makes id // V == 0 mean "no second stream")."""

    def demuxed(self, ids):
        table, v = self.weight[...].astype(self.dtype), self.num_embeddings
        first, second = jnp.maximum(ids, 0) % v, jnp.minimum(jnp.maximum(ids, 0) // v, v - 1)
        y = self.out1(table[first]) + self.out2(table[second])
        return jnp.where((ids >= 0)[..., None], y, 0.0).astype(self.dtype)

    monkeypatch.setattr(models_flax.embedding.Embedding, "_demuxed", demuxed)


@pytest.mark.parametrize(
    ("control", "components"),
    [(_bias_dropped, ("text_logits",)), (_demux_docstring_offset, ("text_logits",)), (_extra_heads_swapped, ())],
    ids=lambda x: x.__name__.strip("_") if callable(x) else None,
)
def test_negative_control(monkeypatch, control, components):
    models, runs = _runs("heads")
    if control is _extra_heads_swapped:
        control(monkeypatch, models)
    else:
        control(monkeypatch)
    cand = models.run("flax", {"codes": lm_options.codes(HEADS)})
    lm_options.assert_control_fails(HEADS, runs["kyutai"], cand, control=lm_options.control_name(control),
                                    components=components)  # fmt: skip


def test_negative_control_depth_biases_not_sliced(monkeypatch):
    """Streaming with the depth heads' biases left out of the per-codebook slices (every codebook would read
    codebook 0's bias): the greedy tokens leave kyutai's."""
    original = models_flax.streaming.is_depth_weight
    kernels_only = lambda path, value: original(path, value) and path[-1] == "kernel"  # noqa: E731
    monkeypatch.setattr(models_flax.streaming, "is_depth_weight", kernels_only)
    user, tokens, _ = _lmgen_with_extra_heads()
    got = run_steps(Streamer(_runs("heads")[0].module("flax"), text=GREEDY, audio=GREEDY), user)["tokens"]
    where, _ = token_mismatch(HEADS, tokens, got, names=("kyutai", "flax[step]"))
    assert where and "audio codebook" in where, where  # the first wrong token is an audio one


def test_negative_control_text_head_width():
    """A port that ignores text_card_out (a text_card-wide head) does not fit kyutai's weights: the strict accounting
    names the text head."""
    models, _ = _runs("heads")
    with pytest.raises(ConversionError, match=r"text_linear\.weight"):
        convert(
            models.states["kyutai"], src="kyutai", dst="flax", cfg=HEADS.replace(text_card_out=None), component="lm"
        )


def test_head_options_have_a_sharding_rule():
    """Every parameter of the heads model matches one sharding rule (fsdp 2): the biases and extra heads replicated,
    the demux linears split on their output like the embeddings."""
    models, _ = _runs("heads")
    flat = rule_specs(models.module("flax"), {"dp": 1, "fsdp": 2})
    assert (flat["lm_head.bias"], flat["depth.lm_heads.bias"], flat["extra_heads.1.kernel"]) == (
        P(None), P(None, None), P(None, None),
    )  # fmt: skip
    assert flat["depth.text_embed_tokens.out2.kernel"] == P(None, "fsdp")


def test_training_data_text_ids():
    """Training data of a heads model may hold any text id the embedding takes and the head scores (muxed ids below
    text_out 55); one beyond is a DataError naming both limits."""
    codes = (
        strategies.random_codes(HEADS, 2, 4, seed=0) % np.array([HEADS.text_out] + [HEADS.card] * HEADS.n_q)[:, None]
    )
    codes[0, 0, 0] = HEADS.text_out - 1
    check_codes(codes, HEADS, "heads.npy")
    codes[1, 0, 2] = HEADS.text_out
    with pytest.raises(DataError, match=r"heads\.npy.*text id.*\[0, 55\) \(text_vocab and text_out\)"):
        check_codes(codes, HEADS, "heads.npy")
