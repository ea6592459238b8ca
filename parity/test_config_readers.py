"""Config readers against every layout upstream writes (issue 17, class 9).

Each layout is a config file as an upstream version wrote it, or as its loader takes it. What converters/lm_config.py
reads from it is compared field by field with the model that upstream builds from the same file: kyutai `LMModel`
through `loaders.CheckpointInfo` / `get_moshi_lm`, HF `MoshiConfig.from_pretrained` ->
`MoshiForConditionalGeneration` (both on the meta device, tiny sizes). Sizes come from the built modules' weight
shapes, rope from the rotary module upstream builds, context windows from the cache upstream makes, delays from HF's
delay pattern: the reader must agree with what upstream builds, not with what we expect it to build. A file upstream
builds into something this port cannot run must be refused, never read as another model. Each negative control plants
one reader bug and must be caught on the layout and field named.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from converters import lm_config
from converters.lm_config import from_hf_config
from moshi_spec import LMConfig, kyutai
from parity.harness.config_layouts import (
    HF4,
    HF_LAYOUTS,
    HF_REFUSED,
    HF_SPARSE,
    KYUTAI_LAYOUTS,
    KYUTAI_REFUSED,
    NO_WINDOW,
)

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}

# ----------------------------------------------------------------------------------------------------------------------
# what each side says, field by field


def _sig(x: float) -> float:
    """Five significant digits: rope periods recovered from float32 frequencies compare exactly."""
    return float(f"{x:.5g}")


def _activation(fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    x = torch.linspace(-3, 3, 13)
    return next((name for name, ref in ACTIVATIONS.items() if torch.equal(fn(x), ref(x))), repr(fn))


def _stack(name: str, **fields: Any) -> dict[str, Any]:
    return {f"{name}.{k}": v for k, v in fields.items()}


def ours(cfg: LMConfig, *, padding: bool) -> dict[str, Any]:
    """The fields of an LMConfig that `kyutai_built` / `hf_built` measure (HF has no text padding id, nor kyutai's
    head options: `padding` adds them)."""
    out = {}
    for name in ("temporal", "depth"):
        s = getattr(cfg, name)
        out |= _stack(
            name, dim=s.dim, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, head_dim=s.head_dim,
            num_layers=s.num_layers, ffn_dim=s.ffn_dim, weight_sets=s.weight_sets, context=s.context,
            rope_theta=_sig(s.rope_theta) if s.rope else None, activation=s.activation if s.gated else "ungated",
            norm_eps=s.norm_eps, causal=True, positions=kyutai.positional_embedding(s),
            rope_interleaved=not s.rope_concat if s.rope else None,
            sin_period=_sig(s.rope_theta) if s.sin_embedding else None,
            positional_scale=s.positional_scale if s.sin_embedding else None,
        )  # fmt: skip
    out |= {"n_q": cfg.n_q, "dep_q": cfg.dep_q, "card": cfg.card, "text_card": cfg.text_card, "delays": [*cfg.delays]}
    if not padding:
        return out
    heads = [(cfg.extra_heads_dim, cfg.temporal.dim)] * cfg.extra_heads
    return out | {
        "existing_text_padding_id": cfg.existing_text_padding_id, "text_out": cfg.text_out, "bias_proj": cfg.bias_proj,
        "extra_heads": heads, "existing_text_end_padding_id": cfg.existing_text_end_padding_id,
        "demux_second_text_stream": cfg.demux_second_text_stream,
    }  # fmt: skip


def kyutai_built(lm: torch.nn.Module) -> dict[str, Any]:
    """The fields of a built kyutai LMModel, from its modules' weight shapes and attributes."""
    out = {}
    for name, stack in (("temporal", lm.transformer), ("depth", lm.depformer)):
        layer = stack.layers[0]
        attn = layer.self_attn
        rows, dim = attn.in_projs[0].weight.shape  # q (dim rows), then k and v (kv heads * head_dim each)
        head_dim = dim // attn.num_heads
        if layer.gating is None:  # gating "none": a plain linear1 / linear2 MLP
            ffn_dim, activation = layer.linear1.weight.shape[0], "ungated"
        else:
            gating = layer.gating[0] if isinstance(layer.gating, torch.nn.ModuleList) else layer.gating
            hidden = gating.linear_out.weight.shape[1]  # kyutai's gated hidden width, as built
            assert gating.linear_in.weight.shape == (2 * hidden, dim)
            ffn_dim, activation = 2 * hidden, _activation(gating.activation)
        out |= _stack(
            name, dim=dim, num_heads=attn.num_heads, num_kv_heads=(rows - dim) // (2 * head_dim), head_dim=head_dim,
            num_layers=len(stack.layers), ffn_dim=ffn_dim, weight_sets=len(attn.in_projs), context=attn.context,
            rope_theta=_sig(stack.rope.max_period) if stack.rope is not None else None, activation=activation,
            norm_eps=layer.norm1.eps, causal=attn.causal, **_kyutai_positions(stack),
        )  # fmt: skip
    return out | {
        "n_q": len(lm.emb), "dep_q": len(lm.linears), "card": lm.emb[0].weight.shape[0] - 1,
        "text_card": lm.text_emb.weight.shape[0] - 1, "delays": list(lm.delays),
        "existing_text_padding_id": lm.existing_text_padding_id,
        # the head options: the text head's width and bias, the extra heads' shapes, the end padding id, the demux
        "text_out": lm.text_linear.weight.shape[0], "bias_proj": lm.text_linear.bias is not None,
        "extra_heads": [tuple(head.weight.shape) for head in lm.extra_heads],
        "existing_text_end_padding_id": lm.existing_text_end_padding_id,
        "demux_second_text_stream": lm.text_emb.demux_second_stream,
    }  # fmt: skip


def _kyutai_positions(stack: torch.nn.Module) -> dict[str, Any]:
    """A built StreamingTransformer's positions: its kind, the rope's pairing, the sinusoidal embedding's period and
    scale (None without one)."""
    sin = stack.positional_embedding in ("sin", "sin_rope")
    return {
        "positions": stack.positional_embedding,
        "rope_interleaved": stack.rope.interleave if stack.rope is not None else None,
        "sin_period": _sig(stack.max_period) if sin else None,
        "positional_scale": stack.positional_scale if sin else None,
    }


def _hf_rope_theta(rotary: torch.nn.Module | None, head_dim: int) -> float | str | None:
    """The period of HF's rotary module if it is the plain rope over the whole head, else what it is instead."""
    if rotary is None:
        return None
    rotary = type(rotary)(rotary.config)  # rebuilt on the CPU: the meta-device one has no values
    if rotary.rope_type != "default" or rotary.attention_scaling != 1.0:
        return f"{rotary.rope_type} rope"
    inv_freq = rotary.inv_freq.double()
    theta = float(inv_freq[1]) ** (-head_dim / 2)  # inv_freq[i] = theta ** (-2i / head_dim)
    plain = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if inv_freq.shape != plain.shape or not torch.allclose(inv_freq, plain, rtol=1e-5):
        return "rope over part of the head"
    return _sig(theta)


def hf_built(model: torch.nn.Module) -> dict[str, Any]:
    """The fields of a built HF MoshiForConditionalGeneration: weight shapes, its rotary module, the window of the
    cache it makes (DynamicCache(config)), the delay pattern it applies to each audio stream."""
    from transformers import DynamicCache

    K = model.depth_decoder.lm_heads.weight.shape[0]
    out = {}
    stacks = (("temporal", model.decoder.model, NO_WINDOW), ("depth", model.depth_decoder, K))
    for name, stack, steps in stacks:  # steps: the longest sequence the stack sees
        layer = stack.layers[0]
        attn = layer.self_attn
        q, k = attn.q_proj.linear.weight, attn.k_proj.linear.weight  # (out, in), or (K, out, in) per codebook
        head_dim = q.shape[-2] // attn.num_heads
        window = getattr(DynamicCache(config=stack.config).layers[0], "sliding_window", None)
        out |= _stack(
            name, dim=q.shape[-1], num_heads=attn.num_heads, num_kv_heads=k.shape[-2] // head_dim, head_dim=head_dim,
            num_layers=len(stack.layers), ffn_dim=layer.mlp.fc1.weight.shape[-2],
            weight_sets=q.shape[0] if q.ndim == 3 else 1, context=window if window and window < steps else None,
            rope_theta=_hf_rope_theta(attn.rotary_emb, head_dim), activation=_activation(layer.mlp.activation_fn),
            norm_eps=layer.input_layernorm.eps, causal=attn.is_causal,
            positions="rope" if attn.rotary_emb is not None else "none",  # (its q/k layout is always HF's own)
            sin_period=None, positional_scale=None,  # HF's Moshi has no sinusoidal embedding
        )  # fmt: skip
    codes = 100 + torch.arange(K).reshape(1, K, 1)
    _, shifted = model.build_delay_pattern_mask(codes, bos_token_id=-2, pad_token_id=-3, max_length=3)
    stream = [int((shifted[0, c] == 100 + c).nonzero()[0]) for c in range(K)]
    # text goes in undelayed; the user's and Moshi's audio both go through this one pattern
    return out | {
        "n_q": len(model.embed_tokens), "dep_q": K, "card": model.embed_tokens[0].weight.shape[0] - 1,
        "text_card": model.decoder.lm_head.weight.shape[0], "delays": [0, *stream, *stream],
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# upstream builds, once per layout


def build_kyutai(raw: dict[str, Any]) -> torch.nn.Module:
    """kyutai's LM from a config.json holding `raw`, through the loader's own path (CheckpointInfo pops the loader
    keys; nothing is downloaded: every path is local); `loaders._lm_kwargs` itself goes straight to get_moshi_lm."""
    from moshi.models import loaders

    kwargs = None
    if raw is not loaders._lm_kwargs:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(raw))
            none = Path(tmp) / "unused"
            info = loaders.CheckpointInfo.from_hf_repo(
                "unused/repo", config_path=Path(tmp) / "config.json", moshi_weights=none, mimi_weights=none,
                tokenizer=none,
            )  # fmt: skip
        kwargs = info.lm_config
    with torch.device("meta"):
        return loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=torch.float32)


def build_hf(raw: dict[str, Any]) -> torch.nn.Module:
    """HF's model from a config.json holding `raw`, read as from_pretrained reads a local checkpoint's config."""
    from transformers import MoshiConfig, MoshiForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(raw))
        config = MoshiConfig.from_pretrained(tmp)
    with torch.device("meta"):
        return MoshiForConditionalGeneration(config)


@cache
def kyutai_layout(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = KYUTAI_LAYOUTS[name]()
    return raw, kyutai_built(build_kyutai(raw))


@cache
def hf_layout(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = HF_LAYOUTS[name]()
    return raw, hf_built(build_hf(raw))


def disagreements(read: dict[str, Any], built: dict[str, Any]) -> list[str]:
    return [f"{key}: read {read.get(key)!r}, upstream built {value!r}" for key, value in built.items()
            if read.get(key) != value]  # fmt: skip


def kyutai_misreads(name: str) -> list[str]:
    """`{field}: read ..., upstream built ...` for each field where the reader (as patched now) disagrees."""
    raw, built = kyutai_layout(name)
    return disagreements(ours(lm_config.from_kyutai_kwargs(raw), padding=True), built)


def hf_misreads(name: str) -> list[str]:
    raw, built = hf_layout(name)
    return disagreements(ours(lm_config.from_hf_config(raw), padding=False), built)


# ----------------------------------------------------------------------------------------------------------------------
# the reader agrees with upstream on every layout


@pytest.mark.parametrize("name", KYUTAI_LAYOUTS)
def test_kyutai_layout_reads_as_kyutai_builds_it(name):
    assert kyutai_misreads(name) == []


@pytest.mark.parametrize("name", HF_LAYOUTS)
def test_hf_layout_reads_as_hf_builds_it(name):
    assert hf_misreads(name) == []


def test_layouts_differ_where_they_should():
    """The layouts exercise what they claim: distinct fields, the absent keys' defaults, and the 5.x writer's keys."""
    hf5 = hf_layout("transformers 5 save_pretrained")[0]
    assert "rope_parameters" in hf5 and "rope_theta" not in hf5 and hf5["depth_decoder_config"]["input_size"] == 32
    built = {name: hf_layout(name)[1] for name in HF_LAYOUTS}
    assert built["transformers 5 save_pretrained"]["depth.head_dim"] == 16
    assert built["transformers 4.x to_json_string"]["temporal.rope_theta"] == 500.0
    assert built["rope_scaling with its theta"]["temporal.rope_theta"] == 77.0
    assert built["sparse hand-made dict"]["temporal.context"] == 3000  # MoshiConfig's default window
    assert built["sliding_window 2**40"]["temporal.context"] is None
    minimal = kyutai_layout("minimal kwargs")[1]
    assert (minimal["temporal.ffn_dim"], minimal["depth.ffn_dim"]) == (2 * 21 * 128 // 8, 2 * 21 * 256 // 8)
    overrides = kyutai_layout("optional keys overridden")[1]
    assert overrides["depth.num_kv_heads"] == 2 and overrides["depth.num_layers"] == 3
    assert kyutai_layout("loaders._lm_kwargs (7B)")[1]["temporal.ffn_dim"] == 22528


def test_4x_null_sliding_window_reads_as_no_window():
    # 4.x applied a window only `if config.sliding_window is not None`; 5.x refuses null (an int field) and spells
    # "no window" as a window no position reaches, the model compared above
    null = HF4 | {"sliding_window": None}
    assert from_hf_config(null) == from_hf_config(HF4 | {"sliding_window": NO_WINDOW})
    assert from_hf_config(null).temporal.context is None
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match="sliding_window"):
        build_hf(null)


def refusal_problems(read: Callable[[Any], LMConfig], raw: dict[str, Any], said: str) -> list[str]:
    """[] when `read` refuses `raw` in the words `said`, else what it did instead."""
    try:
        cfg = read(raw)
    except ValueError as err:
        return [] if said in str(err) else [f"refused in other words: {err}"]
    return [f"read as {cfg}"]


@pytest.mark.parametrize("name", HF_REFUSED)
def test_hf_file_upstream_builds_otherwise_is_refused(name):
    raw, said, (field, value) = HF_REFUSED[name]
    assert hf_built(build_hf(raw))[field] == value
    assert refusal_problems(lm_config.from_hf_config, raw, said) == []


@pytest.mark.parametrize("name", KYUTAI_REFUSED)
def test_kyutai_file_upstream_builds_otherwise_is_refused(name):
    raw, said, (field, value) = KYUTAI_REFUSED[name]
    assert kyutai_built(build_kyutai(raw))[field] == value
    assert refusal_problems(lm_config.from_kyutai_kwargs, raw, said) == []


def test_hf_refuses_what_hf_cannot_build():
    raw = HF_SPARSE | {"hidden_size": 50, "head_dim": 8}  # head_dim given, but HF's attention wants 6 | 50 still
    with pytest.raises(ValueError, match="hidden_size must be divisible by num_heads"):
        build_hf(raw)
    with pytest.raises(ValueError, match="num_attention_heads=6 does not divide hidden_size=50"):
        from_hf_config(raw)


# ----------------------------------------------------------------------------------------------------------------------
# negative controls: one planted reader bug each, caught on the layout and field named


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _depth(c: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return c | {"depth_decoder_config": c["depth_decoder_config"] | changes}


KYUTAI_CONTROLS = {
    # planted bug: (how the buggy reader reads kwargs, via the real one), (layout, field it misreads)
    "hidden_scale defaults to 7B's 4.125": (lambda kw: {"hidden_scale": 4.125} | kw,
                                            ("minimal kwargs", "temporal.ffn_dim")),
    "depformer_dim_feedforward ignored": (lambda kw: _without(kw, "depformer_dim_feedforward"),
                                          ("optional keys overridden", "depth.ffn_dim")),
    "depth heads from the temporal stack": (lambda kw: kw | {"depformer_num_heads": kw["num_heads"]},
                                            ("released config.json", "depth.num_heads")),
    "depformer_kv_repeat not inherited": (lambda kw: {"depformer_kv_repeat": 1} | kw,
                                          ("optional keys overridden", "depth.num_kv_heads")),
    "depformer_num_layers not inherited": (lambda kw: {"depformer_num_layers": 6} | kw,
                                           ("optional keys overridden", "depth.num_layers")),
    "absent keys read as the 7B's": (lambda kw: {"dim": 4096, "num_heads": 32} | kw,
                                     ("minimal kwargs", "temporal.dim")),
    "depformer_pos_emb defaults to none (Moshi's)": (lambda kw: {"depformer_pos_emb": "none"} | kw,
                                                     ("positions left to LMModel's default", "depth.positions")),
    "depformer_max_period ignored": (lambda kw: _without(kw, "depformer_max_period"),
                                     ("positions of their own", "depth.rope_theta")),
    "positional_scale not inherited": (lambda kw: kw | {"depformer_positional_scale": 1.0},
                                       ("positions of their own", "depth.positional_scale")),
    "rope_concat read as rope": (lambda kw: kw | {"positional_embedding": "rope"},
                                 ("positions of their own", "temporal.rope_interleaved")),
}  # fmt: skip
HF_CONTROLS = {
    "rope_theta only from rope_parameters": (lambda c: _without(c, "rope_theta"),
                                             ("transformers 4.x to_json_string", "temporal.rope_theta")),
    "rope_scaling's theta ignored": (lambda c: _without(c, "rope_scaling"),
                                     ("rope_scaling with its theta", "temporal.rope_theta")),
    "depth heads from the temporal stack": (lambda c: _depth(c, num_attention_heads=c["num_attention_heads"]),
                                            ("transformers 4.x to_json_string", "depth.num_heads")),
    "null kv heads read as one": (lambda c: c | {"num_key_value_heads": c.get("num_key_value_heads") or 1},
                                  ("sparse hand-made dict", "temporal.num_kv_heads")),
    "absent sliding_window read as no window": (lambda c: {"sliding_window": None} | c,
                                                ("sparse hand-made dict", "temporal.context")),
    "depth head_dim from hidden / heads": (lambda c: _depth(c, head_dim=None),
                                           ("transformers 5 save_pretrained", "depth.head_dim")),
}  # fmt: skip


@pytest.mark.parametrize("control", KYUTAI_CONTROLS)
def test_planted_kyutai_reader_bug_is_caught(control, monkeypatch):
    bug, (layout, field) = KYUTAI_CONTROLS[control]
    real = lm_config.from_kyutai_kwargs
    monkeypatch.setattr(lm_config, "from_kyutai_kwargs", lambda kw: real(bug(dict(kw))))
    assert any(line.startswith(f"{field}: ") for line in kyutai_misreads(layout)), kyutai_misreads(layout)


@pytest.mark.parametrize("control", HF_CONTROLS)
def test_planted_hf_reader_bug_is_caught(control, monkeypatch):
    bug, (layout, field) = HF_CONTROLS[control]
    real = lm_config.from_hf_config
    monkeypatch.setattr(lm_config, "from_hf_config", lambda c: real(bug(dict(c))))
    assert any(line.startswith(f"{field}: ") for line in hf_misreads(layout)), hf_misreads(layout)


def test_planted_window_sentinel_bug_is_caught(monkeypatch):
    monkeypatch.setattr(lm_config, "UNBOUNDED", 2**62)  # 2**31-1 read as a window of that many positions
    assert hf_misreads("sliding_window 2**31-1 (our writer's no window)") == [
        f"temporal.context: read {NO_WINDOW}, upstream built None"
    ]


@pytest.mark.parametrize(
    ("planted", "name"),
    [
        (lambda c: _without(c, "rope_scaling"), "4.x rope_scaling linear"),  # the scaled rope read as the plain one
        (lambda c: _depth(c, sliding_window=None), "depth window shorter than its steps"),  # the depth window ignored
    ],
)
def test_planted_refusal_bug_is_caught(planted, name, monkeypatch):
    raw, said, _ = HF_REFUSED[name]
    real = lm_config.from_hf_config
    monkeypatch.setattr(lm_config, "from_hf_config", lambda c: real(planted(dict(c))))
    assert refusal_problems(lm_config.from_hf_config, raw, said)[0].startswith("read as ")
