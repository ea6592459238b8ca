"""The Mimi codec as a component of the harness: how kyutai, ref and flax build, randomise and run it (`adapters.bind`).

Entries of component "mimi" (numpy in, numpy out, as every adapter):
    forward (encode):  {"audio": (B, C, T) float32, "num_codebooks": K} -> {"codes": (B, K, F) int64}
    decode:            {"codes": (B, K, F)} -> {"audio": (B, C, F * frame_size)}
    encode_stream:     {"audio", "num_codebooks", "chunk_frames": n} -> {"codes"}: the streaming API fed n frames at a
                       time (kyutai: its `streaming` context; ours: init_state / encode_step)
    decode_stream:     {"codes", "chunk_frames": n} -> {"audio"}
With capture=("stages",) encode and decode also return every stage's output under its name (MimiConfig.stage_names):
convolution outputs (B, C, T), transformer layer outputs (B, T, D), "latent" the unquantized latent (B, D, F). kyutai's
are read with forward hooks at the module each stage name stands for (`kyutai_stage_modules`).

Random weights (drawn by kyutai, the weight source, then converted to every other format): every parameter scaled to
its fan-in, so that activations keep their size through SEANet; LayerScale and norm scales 1 + 0.3 N(0, 1) (not
kyutai's 0.01 init: a skipped scale must move the output); codebooks centred on what they quantize: a calibration pass
of seeded noise through the randomised encoder gives each level's residuals, and that level's centroids are drawn from
a Gaussian of their mean and per-dimension spread (centroids copied from a few residual vectors instead cluster, and
near-ties become common: 96.6% agreement at the real size, every flip a tie). A fresh kyutai Mimi has all-zero
codebooks, which encode everything to code 0: `randomize` replaces them, and the converters refuse an uninitialised one.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np

from moshi_spec import MimiConfig
from parity.harness import adapters
from parity.harness.adapters.base import Binding, Built, Inputs, Outputs, numpy_outputs, torch_dtype

CALIBRATION_FRAMES = 8


def kyutai_config(cfg: MimiConfig) -> dict[str, Any]:
    """`moshi.models.loaders.get_mimi`'s config dict for cfg (the layout of `loaders._mimi_config`)."""
    from moshi.models import loaders

    s, t = cfg.seanet, cfg.transformer
    out = copy.deepcopy(loaders._mimi_config)
    out["sample_rate"], out["frame_rate"], out["channels"] = cfg.sample_rate, cfg.frame_rate, s.channels
    out["seanet"].update(
        channels=s.channels, dimension=s.dimension, n_filters=s.n_filters, n_residual_layers=s.n_residual_layers,
        ratios=list(s.ratios), kernel_size=s.kernel_size, residual_kernel_size=s.residual_kernel_size,
        last_kernel_size=s.last_kernel_size, dilation_base=s.dilation_base, compress=s.compress, pad_mode=s.pad_mode,
    )  # fmt: skip
    out["transformer"].update(
        d_model=t.dim, num_heads=t.num_heads, num_layers=t.num_layers, dim_feedforward=t.ffn_dim, context=t.context,
        max_period=t.rope_theta, layer_scale=cfg.layer_scale, input_dimension=s.dimension,
        output_dimensions=[s.dimension],
    )  # fmt: skip
    out["quantizer"].update(
        dimension=cfg.codebook_dim, n_q=cfg.n_q, bins=cfg.bins, input_dimension=s.dimension,
        output_dimension=s.dimension,
    )  # fmt: skip
    return out


def kyutai_support(cfg: MimiConfig) -> str | None:
    t = cfg.transformer
    if t.norm_eps != 1e-5 or t.activation != "gelu" or t.num_kv_heads != t.num_heads:
        return "kyutai's Mimi transformer is fixed to layer_norm (eps 1e-5), gelu and no grouped kv heads"
    if cfg.n_q_semantic != 1 or cfg.codebook_eps != 1e-5:
        return "kyutai's SplitResidualVectorQuantizer has one semantic codebook and eps 1e-5"
    return None


def kyutai_stage_modules(model: Any, cfg: MimiConfig) -> dict[str, Any]:
    """Stage name -> the kyutai module whose output it is (kyutai's SEANet is a Sequential with ELUs in between)."""
    per_stage = cfg.seanet.n_residual_layers + 2  # residual blocks, ELU, (transposed) conv
    enc, dec = model.encoder.model, model.decoder.model
    stages = range(len(cfg.seanet.ratios))
    modules = {"encoder.input_conv": enc[0], "encoder.output_conv": enc[len(enc) - 1]}
    modules |= {f"encoder.stages.{i}": enc[(i + 1) * per_stage] for i in stages}
    modules |= {"decoder.input_conv": dec[0], "decoder.output_conv": dec[len(dec) - 1]}
    modules |= {f"decoder.stages.{i}": dec[(i + 1) * per_stage] for i in stages}
    for side in ("encoder", "decoder"):
        layers = getattr(model, f"{side}_transformer").transformer.layers
        modules |= {f"{side}_transformer.layers.{i}": layer for i, layer in enumerate(layers)}
    modules |= {"latent": model.downsample, "upsample": model.upsample, "quantizer.decode": None}
    return modules


def randomize_mimi(module: Any, seed: int, cfg: MimiConfig) -> None:
    """Seeded weights for a kyutai MimiModel (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".scale") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.copy_((1 + 0.3 * noise).to(p.dtype))
            elif p.dim() == 1:  # biases
                p.copy_((0.1 * noise).to(p.dtype))
            else:
                fan_in = p.shape[1] * p.shape[2] if p.dim() == 3 else p.shape[1]
                if "convtr" in name:  # (in, out / groups, 2 * stride): each output sums 2 taps of in / groups inputs
                    fan_in = 2 * (1 if name.startswith("upsample") else p.shape[0])
                p.copy_((noise / fan_in**0.5).to(p.dtype))
        _calibrate_codebooks(module, gen, cfg)


def _calibrate_codebooks(module: Any, gen: Any, cfg: MimiConfig) -> None:
    """Each codebook level's centroids drawn from a Gaussian with the mean and per-dimension spread of the residuals
    that level quantizes (seeded noise audio through the randomised encoder), usages in [0.5, 2)."""
    import torch

    audio = torch.randn(2, cfg.seanet.channels, CALIBRATION_FRAMES * cfg.frame_size, generator=gen)
    param = next(module.parameters())
    latent = module._encode_to_unquantized_latent(audio.to(param.dtype)).float()
    for rvq in (module.quantizer.rvq_first, module.quantizer.rvq_rest):
        residual = torch.nn.functional.conv1d(latent, rvq.input_proj.weight.float())
        vectors = residual.transpose(1, 2).reshape(-1, residual.shape[1])
        for layer in rvq.vq.layers:
            book = layer._codebook
            mean, std = vectors.mean(0), vectors.std(0) + 1e-3 * vectors.std()
            centroids = mean + std * torch.randn(cfg.bins, vectors.shape[1], generator=gen)
            usage = 0.5 + torch.rand(cfg.bins, generator=gen) * 1.5
            book.embedding_sum.copy_((centroids * usage[:, None]).to(book.embedding_sum.dtype))
            book.cluster_usage.copy_(usage.to(book.cluster_usage.dtype))
            book._initialized.fill_(1.0)
            book.register_buffer("_embedding", None, persistent=False)
            book._cached_initialized = False
            codes = torch.cdist(vectors[None], book.embedding.float()[None])[0].argmin(-1)
            vectors = vectors - book.embedding.float()[codes]


def _kyutai_build(cfg: MimiConfig, dtype: str, options: dict, init: bool) -> Any:
    from moshi.models import loaders

    model = loaders.get_mimi(None, kyutai_config(cfg), num_codebooks=cfg.num_codebooks)
    return model.to(torch_dtype(dtype)).eval()


def _hooked(model: Any, cfg: MimiConfig, names: tuple[str, ...], capture: tuple) -> tuple[dict[str, Any], list]:
    """Forward hooks storing each named stage's output (transformer layers transposed to (B, T, D) as kyutai runs
    them; SEANet outputs (B, C, T))."""
    seen: dict[str, Any] = {}
    if "stages" not in capture:
        return seen, []
    modules = kyutai_stage_modules(model, cfg)
    hooks = []
    for name in names:
        target = modules[name]
        if target is None:
            continue

        def hook(_m: Any, _a: Any, y: Any, name: str = name) -> None:
            seen[name] = y

        hooks.append(target.register_forward_hook(hook))
    return seen, hooks


def _kyutai_encode(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    import torch

    model, cfg = built.module, built.cfg
    model.set_num_codebooks(int(inputs.get("num_codebooks", cfg.num_codebooks)))
    audio = torch.from_numpy(np.asarray(inputs["audio"], np.float32)).to(torch_dtype(built.dtype))
    seen, hooks = _hooked(model, cfg, cfg.stage_names()[0], capture)
    try:
        codes = model.encode(audio)
    finally:
        for hook in hooks:
            hook.remove()
    return numpy_outputs({"codes": codes, **seen})


def _kyutai_decode(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    import torch

    model, cfg = built.module, built.cfg
    codes = torch.from_numpy(np.asarray(inputs["codes"], np.int64))
    seen, hooks = _hooked(model, cfg, cfg.stage_names()[1], capture)
    try:
        if "stages" in capture:
            seen["quantizer.decode"] = model.decode_latent(codes)
        audio = model.decode(codes)
    finally:
        for hook in hooks:
            hook.remove()
    return numpy_outputs({"audio": audio, **seen})


def _chunks(total: int, size: int) -> list[slice]:
    if size < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {size}")
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _kyutai_encode_stream(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    import torch

    model, cfg = built.module, built.cfg
    model.set_num_codebooks(int(inputs.get("num_codebooks", cfg.num_codebooks)))
    audio = torch.from_numpy(np.asarray(inputs["audio"], np.float32)).to(torch_dtype(built.dtype))
    frames = audio.shape[-1] // cfg.frame_size
    out = []
    with model.streaming(audio.shape[0]):
        for part in _chunks(frames, int(inputs["chunk_frames"])):
            out.append(model.encode(audio[..., part.start * cfg.frame_size : part.stop * cfg.frame_size]))
    return numpy_outputs({"codes": torch.cat(out, dim=-1)})


def _kyutai_decode_stream(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    import torch

    model = built.module
    codes = torch.from_numpy(np.asarray(inputs["codes"], np.int64))
    out = []
    with model.streaming(codes.shape[0]):
        for part in _chunks(codes.shape[-1], int(inputs["chunk_frames"])):
            out.append(model.decode(codes[..., part]))
    return numpy_outputs({"audio": torch.cat(out, dim=-1)})


KYUTAI = Binding(
    build=_kyutai_build,
    run=_kyutai_encode,
    entries={"decode": _kyutai_decode, "encode_stream": _kyutai_encode_stream, "decode_stream": _kyutai_decode_stream},
    supports=kyutai_support,
    captures=("stages",),
    randomize=randomize_mimi,
)

adapters.bind("kyutai", "mimi", KYUTAI)


def quantizer_tables(state: dict[str, np.ndarray], cfg: MimiConfig) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(input projection (dim, D), codebook embeddings per level) of the semantic and acoustic VQs, in float64, from
    a ref-format state (the tie analysis of parity/harness/codes.py)."""
    out = []
    for side, levels in (("semantic", cfg.n_q_semantic), ("acoustic", cfg.n_q_acoustic)):
        prefix = f"quantizer.{side}."
        tables = []
        for k in range(levels):
            book = f"{prefix}codebooks.{k}."
            usage = np.maximum(state[book + "cluster_usage"].astype(np.float64), cfg.codebook_eps)
            tables.append(state[book + "embedding_sum"].astype(np.float64) / usage[:, None])
        out.append((state[prefix + "input_proj.weight"].astype(np.float64), tables))
    return out


def _ours(framework: str) -> Binding:
    """ref or flax: the same calls, name for name (models_ref.mimi / models_flax.mimi)."""

    def array(x: np.ndarray, dtype: str | None = None) -> Any:
        if framework == "ref":
            from parity.harness.adapters.base import to_torch

            return to_torch(x, dtype)
        import jax.numpy as jnp

        from parity.harness.adapters.flax import jax_dtype

        return jnp.asarray(x, None if dtype is None else jax_dtype(dtype))

    def build(cfg: MimiConfig, dtype: str, options: dict, init: bool) -> Any:
        if framework == "ref":
            from models_ref.mimi import MimiModel

            return MimiModel(cfg, dtype=torch_dtype(dtype)).eval()
        from flax import nnx
        from jax import lax

        from models_flax.mimi import MimiModel
        from parity.harness.adapters.flax import jax_dtype

        def make() -> Any:
            dt = jax_dtype(dtype)
            return MimiModel(cfg, dtype=dt, param_dtype=dt, precision=lax.Precision.HIGHEST, rngs=nnx.Rngs(0))

        return make() if init else nnx.eval_shape(make)

    def keep(taps: dict, names: tuple[str, ...]) -> dict:
        return {name: taps[name] for name in names}

    def encode(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        cfg = built.cfg
        k = int(inputs.get("num_codebooks", cfg.num_codebooks))
        codes, taps = batch(built, "encode", k)(array(inputs["audio"], built.dtype))
        stages = keep(taps, cfg.stage_names()[0]) if "stages" in capture else {}
        return numpy_outputs({"codes": codes, **stages}) | {"codes": np.asarray(codes, np.int64)}

    def stepper(built: Built, method: str, k: int | None = None) -> Any:
        """module.<method>(x, state) (encode_step, decode_step), with num_codebooks=k when given. flax: one `jax.jit`
        per built model, method and k (eager Flax dispatches every op of every step). Compiled once: a negative
        control that patches a method a step calls must stream through a model built after the patch; batch encode
        and decode run eagerly, so that the controls of parity/test_mimi.py reach them."""
        kw = {} if k is None else {"num_codebooks": k}
        if framework == "ref":
            bound = getattr(built.module, method)
            return lambda x, state: bound(x, state, **kw)
        import jax
        from flax import nnx

        if (method, k) not in built.compiled:
            graphdef = nnx.graphdef(built.module)

            def run(weights: Any, x: Any, state: Any) -> Any:
                return getattr(nnx.merge(graphdef, weights), method)(x, state, **kw)

            built.compiled[(method, k)] = jax.jit(run)
        run, weights = built.compiled[(method, k)], nnx.state(built.module)
        return lambda x, state: run(weights, x, state)

    def batch(built: Built, method: str, k: int | None = None) -> Any:
        """module.encode / decode with capture=True (and num_codebooks=k): eager, or under one `jax.jit` per built
        model with the option "jit" (flax[jit]: one compile of the whole call instead of one per eager op, for drawn
        configs; the negative controls patch methods and run the eager "flax")."""
        kw = {"capture": True} | ({} if k is None else {"num_codebooks": k})
        if not built.options.get("jit"):
            return functools.partial(getattr(built.module, method), **kw)
        import jax
        from flax import nnx

        if (method, k) not in built.compiled:
            graphdef = nnx.graphdef(built.module)
            built.compiled[(method, k)] = jax.jit(
                lambda weights, x: getattr(nnx.merge(graphdef, weights), method)(x, **kw)
            )
        run, weights = built.compiled[(method, k)], nnx.state(built.module)
        return lambda x: run(weights, x)

    def decode(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        audio, taps = batch(built, "decode")(array(np.asarray(inputs["codes"])))
        stages = keep(taps, built.cfg.stage_names()[1]) if "stages" in capture else {}
        return numpy_outputs({"audio": audio, **stages})

    def concat(parts: list) -> Any:
        if framework == "ref":
            import torch

            return torch.cat(parts, dim=-1)
        import jax.numpy as jnp

        return jnp.concatenate(parts, axis=-1)

    def encode_stream(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        cfg, module = built.cfg, built.module
        audio = array(inputs["audio"], built.dtype)
        k = int(inputs.get("num_codebooks", cfg.num_codebooks))
        state, out = module.init_state(audio.shape[0], chunk_frames=int(inputs["chunk_frames"])), []
        step = stepper(built, "encode_step", k)
        for part in _chunks(audio.shape[-1] // cfg.frame_size, int(inputs["chunk_frames"])):
            codes, state = step(audio[..., part.start * cfg.frame_size : part.stop * cfg.frame_size], state)
            out.append(codes)
        return {"codes": np.asarray(numpy_outputs({"c": concat(out)})["c"], np.int64)}

    def decode_stream(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        module = built.module
        codes = array(np.asarray(inputs["codes"]))
        state, out = module.init_state(codes.shape[0], chunk_frames=int(inputs["chunk_frames"])), []
        step = stepper(built, "decode_step")
        for part in _chunks(codes.shape[-1], int(inputs["chunk_frames"])):
            audio, state = step(codes[..., part], state)
            out.append(audio)
        return numpy_outputs({"audio": concat(out)})

    return Binding(
        build=build,
        run=encode,
        options={"jit": (True,)} if framework == "flax" else {},
        entries={"decode": decode, "encode_stream": encode_stream, "decode_stream": decode_stream},
        captures=("stages",),
    )


adapters.bind("ref", "mimi", _ours("ref"))
adapters.bind("flax", "mimi", _ours("flax"))
from parity.harness import mimi_hf  # noqa: E402, F401  (binds the hf implementation of "mimi")
