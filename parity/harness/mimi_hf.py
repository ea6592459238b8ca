"""HF transformers' Mimi (`transformers.MimiModel`) as the implementation "hf" of component "mimi" (`adapters.bind`).

The entries and captures are those of parity/harness/mimi.py (its docstring): forward (encode), decode, encode_stream,
decode_stream, capture ("stages",). Nothing is copied: the model is transformers' own, built from our MimiConfig by
`hf_config`, loaded with the converters' kyutai -> hf weights (converters/mimi_hf.py: q/k permuted to HF's half-split
rope), and run through its public API:
    encode / decode      `MimiModel.encode(audio, num_quantizers=K).audio_codes`, `MimiModel.decode(codes)`;
    encode_stream        HF's streaming: `encode(..., use_streaming=True)` fed chunk by chunk with the
                         `padding_cache` (each causal convolution's left context, the downsample's included) and the
                         `encoder_cache` (the transformer's sliding-window KV cache) it returns;
    decode_stream        HF's decoder has no streaming state for its convolutions (MimiDecoder takes no padding
                         cache; the transposed convolutions keep no overlap): each chunk is `decode(codes,
                         decoder_cache=..., use_cache=True)`, only the transformer's KV cache carried. It leaves HF's
                         own full pass at every chunk boundary (parity/test_mimi_hf.py measures it).
Stages are read with forward hooks at HF's modules (its SEANet `layers` list has kyutai's Sequential indices), in
kyutai's layouts: SEANet outputs (B, C, T), transformer layer outputs (B, T, D), "latent" the downsample's (B, D, F);
"quantizer.decode" is `MimiModel.quantizer.decode(codes)`.

Attention runs HF's "eager" implementation (as the LM's HF adapter), its sliding-window mask built by HF from
`sliding_window` = our context. Codebooks cache their embedding (`MimiEuclideanCodebook._embed`) on first use; every
entry drops that cache first, so that weights loaded (or edited) after a run are the ones used.

HF as the weight source (a config kyutai cannot build, e.g. grouped kv heads): `randomize_hf`, the same recipe as
kyutai's (parity/harness/mimi.randomize_mimi: fan-in scaled weights, norm and layer scales 1 + 0.3 N(0, 1), codebooks
calibrated on the residuals they quantize), drawn over HF's parameter names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.mimi_hf_config import to_hf_mimi_config
from moshi_spec import MimiConfig
from parity.harness import adapters
from parity.harness.adapters.base import Binding, Built, Inputs, Outputs, numpy_outputs, torch_dtype
from parity.harness.mimi import CALIBRATION_FRAMES, _chunks


def hf_config(cfg: MimiConfig) -> Any:
    """transformers' MimiConfig for cfg, from the config.json the converters write for it (attention "eager");
    `hf_support` says which configs it cannot express."""
    from transformers import MimiConfig as HFMimiConfig

    hf = HFMimiConfig(**to_hf_mimi_config(cfg))
    hf._attn_implementation = "eager"
    return hf


def hf_support(cfg: MimiConfig) -> str | None:
    """None, or why transformers' MimiModel cannot be built as cfg's Mimi (converters/mimi_hf_config.py)."""
    try:
        to_hf_mimi_config(cfg)
    except ValueError as err:
        return str(err)
    return None


def _build(cfg: MimiConfig, dtype: str, options: dict, init: bool) -> Any:
    from transformers import MimiModel

    model = MimiModel(hf_config(cfg))
    stride = model.encoder.downsample.conv.stride[0]
    if stride != cfg.resample_stride:  # transformers' frame-rate arithmetic, checked rather than trusted
        raise ValueError(f"HF built a downsampling stride {stride}, expected resample_stride {cfg.resample_stride}")
    return model.to(torch_dtype(dtype)).eval()


def stage_modules(model: Any, cfg: MimiConfig) -> dict[str, Any]:
    """Stage name -> the HF module whose output it is (HF's SEANet lists have kyutai's Sequential indices)."""
    per_stage = cfg.seanet.n_residual_layers + 2  # residual blocks, ELU, (transposed) conv
    enc, dec = model.encoder.encoder_seanet.layers, model.decoder.decoder_seanet.layers
    stages = range(len(cfg.seanet.ratios))
    modules = {"encoder.input_conv": enc[0], "encoder.output_conv": enc[len(enc) - 1]}
    modules |= {f"encoder.stages.{i}": enc[(i + 1) * per_stage] for i in stages}
    modules |= {"decoder.input_conv": dec[0], "decoder.output_conv": dec[len(dec) - 1]}
    modules |= {f"decoder.stages.{i}": dec[(i + 1) * per_stage] for i in stages}
    for side, half in (("encoder", model.encoder), ("decoder", model.decoder)):
        layers = getattr(half, f"{side}_transformer").layers
        modules |= {f"{side}_transformer.layers.{i}": layer for i, layer in enumerate(layers)}
    return modules | {"latent": model.encoder.downsample, "upsample": model.decoder.upsample, "quantizer.decode": None}


def _hooked(model: Any, cfg: MimiConfig, names: tuple[str, ...], capture: tuple) -> tuple[dict[str, Any], list]:
    seen: dict[str, Any] = {}
    if "stages" not in capture:
        return seen, []
    modules = stage_modules(model, cfg)
    hooks = []
    for name in names:
        if modules[name] is None:
            continue

        def hook(_m: Any, _a: Any, y: Any, name: str = name) -> None:
            seen[name] = y

        hooks.append(modules[name].register_forward_hook(hook))
    return seen, hooks


def _fresh_codebooks(model: Any) -> None:
    """Drops every codebook's cached embedding (computed from embed_sum / cluster_usage on first use)."""
    from transformers.models.mimi.modeling_mimi import MimiEuclideanCodebook

    for module in model.modules():
        if isinstance(module, MimiEuclideanCodebook):
            module._embed = None


def _audio(built: Built, inputs: Inputs) -> Any:
    import torch

    return torch.from_numpy(np.asarray(inputs["audio"], np.float32)).to(torch_dtype(built.dtype))


def _codes(inputs: Inputs) -> Any:
    import torch

    return torch.from_numpy(np.asarray(inputs["codes"], np.int64))


def _encode(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    model, cfg = built.module, built.cfg
    _fresh_codebooks(model)
    k = int(inputs.get("num_codebooks", cfg.num_codebooks))
    seen, hooks = _hooked(model, cfg, cfg.stage_names()[0], capture)
    try:
        codes = model.encode(_audio(built, inputs), num_quantizers=k).audio_codes
    finally:
        for hook in hooks:
            hook.remove()
    return numpy_outputs({"codes": codes, **seen})


def _decode(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    model, cfg = built.module, built.cfg
    _fresh_codebooks(model)
    codes = _codes(inputs)
    seen, hooks = _hooked(model, cfg, cfg.stage_names()[1], capture)
    try:
        if "stages" in capture:
            seen["quantizer.decode"] = model.quantizer.decode(codes)
        audio = model.decode(codes).audio_values
    finally:
        for hook in hooks:
            hook.remove()
    return numpy_outputs({"audio": audio, **seen})


def _encode_stream(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    import torch

    model, cfg = built.module, built.cfg
    _fresh_codebooks(model)
    k = int(inputs.get("num_codebooks", cfg.num_codebooks))
    audio = _audio(built, inputs)
    cache = padding = None
    out = []
    for part in _chunks(audio.shape[-1] // cfg.frame_size, int(inputs["chunk_frames"])):
        chunk = audio[..., part.start * cfg.frame_size : part.stop * cfg.frame_size]
        step = model.encode(chunk, num_quantizers=k, encoder_cache=cache, padding_cache=padding, use_streaming=True)
        cache, padding = step.encoder_cache, step.padding_cache
        out.append(step.audio_codes)
    return numpy_outputs({"codes": torch.cat(out, dim=-1)})


def _decode_stream(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    import torch

    model = built.module
    _fresh_codebooks(model)
    codes = _codes(inputs)
    cache, out = None, []
    for part in _chunks(codes.shape[-1], int(inputs["chunk_frames"])):
        step = model.decode(codes[..., part], decoder_cache=cache, use_cache=True)
        cache = step.decoder_cache
        out.append(step.audio_values)
    return numpy_outputs({"audio": torch.cat(out, dim=-1)})


def randomize_hf(module: Any, seed: int, cfg: MimiConfig) -> None:
    """Seeded weights for an HF MimiModel, kyutai's recipe (parity/harness/mimi.randomize_mimi) over HF's names."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    scales = (".scale", "input_layernorm.weight", "post_attention_layernorm.weight")
    transposed = {name for name, m in module.named_modules() if isinstance(m, torch.nn.ConvTranspose1d)}
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(scales):
                p.copy_((1 + 0.3 * noise).to(p.dtype))
            elif p.dim() == 1:  # biases
                p.copy_((0.1 * noise).to(p.dtype))
            else:
                fan_in = p.shape[1] * p.shape[2] if p.dim() == 3 else p.shape[1]
                if name.rsplit(".", 1)[0] in transposed:  # (in, out / groups, 2 * stride): 2 taps of in / groups
                    fan_in = 2 * (1 if name.startswith("decoder.upsample.") else p.shape[0])
                p.copy_((noise / fan_in**0.5).to(p.dtype))
        _calibrate_codebooks(module, gen, cfg)


def _calibrate_codebooks(module: Any, gen: Any, cfg: MimiConfig) -> None:
    import torch

    _fresh_codebooks(module)
    audio = torch.randn(2, cfg.seanet.channels, CALIBRATION_FRAMES * cfg.frame_size, generator=gen)
    latent = module.encoder(audio.to(next(module.parameters()).dtype)).latents.float()
    quantizer = module.quantizer
    for rvq in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
        residual = torch.nn.functional.conv1d(latent, rvq.input_proj.weight.float())
        vectors = residual.transpose(1, 2).reshape(-1, residual.shape[1])
        for layer in rvq.layers:
            book = layer.codebook
            rows = torch.randint(0, vectors.shape[0], (cfg.bins,), generator=gen)
            scale = vectors.pow(2).mean().sqrt()
            centroids = vectors[rows] + 0.1 * scale * torch.randn(cfg.bins, vectors.shape[1], generator=gen)
            usage = 0.5 + torch.rand(cfg.bins, generator=gen) * 1.5
            book.embed_sum.copy_((centroids * usage[:, None]).to(book.embed_sum.dtype))
            book.cluster_usage.copy_(usage.to(book.cluster_usage.dtype))
            book.initialized.fill_(1.0)
            book._embed = None
            table = book.embed.float()
            vectors = vectors - table[torch.cdist(vectors[None], table[None])[0].argmin(-1)]


HF = Binding(
    build=_build,
    run=_encode,
    entries={"decode": _decode, "encode_stream": _encode_stream, "decode_stream": _decode_stream},
    supports=hf_support,
    captures=("stages",),
    randomize=randomize_hf,
)

adapters.bind("hf", "mimi", HF)
