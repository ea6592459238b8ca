"""The sharded tiny LM equals the unsharded one: run as `python -m parity.harness.sharding_check` in a process with 8
devices.

`parity/test_sharding.py` starts it with `XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu` (the
test process itself already initialised jax with one device). It prints one JSON line of measurements and exits
non-zero, with the failure on stderr, when a check fails.

Checks, on a (dp=2, fsdp=4) mesh, of the tiny LM drawn onto it by `sharding.init_on_mesh`:
    its weights are bit for bit the ones the same constructor draws compiled on one device;
    every parameter's `.sharding.spec` is the rule's spec, and every parameter with a split axis has a smaller
    addressable shard than its global shape;
    under jax.jit, text and audio logits at valid positions (masks True) equal the unsharded model's within `BOUND`
    (max |diff| / rms(reference)), for the batch split over ('dp', 'fsdp') (B=8) and over 'dp' only (B=4, the first
    four rows); masks are equal; the same comparison on batch rows rolled by one fails it (negative control);
    a batch the data axes do not divide raises;
    with attention="pallas" in the mesh's context (the kernels in a shard_map over the batch), the sharded logits
    equal the unsharded Pallas model's within `BOUND` (rows rolled by one fail it), the kernels inside shard_map
    regions (`pallas_check`);
    `Streamer(lm, mesh=mesh)` streams the unsharded Streamer's greedy tokens, one compiled step, and so does the
    Pallas LM's, its kernels per device on the caches' kv heads (`stream_check`);
    `from_checkpoint(path, mesh=mesh)` places every parameter by its rule, and its sharded logits are bit for bit the
    sharded model's (`checkpoint_check`);
    the sharded train step equals the unsharded one (parity/harness/train_sharding_check.py).

It also prints the unsharded model's own float32 noise: the first four rows of the unsharded B=8 run against the
unsharded B=4 run (same rows, only the batch size differs).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from converters import flax_state, load_flax
from models_flax import sharding
from models_flax.checkpoint import from_checkpoint
from models_flax.lm import LM
from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer, StreamState
from moshi_spec import LMConfig
from parity.harness import train_sharding_check
from parity.harness.placement import check_placement
from parity.harness.policy import tolerance_for
from parity.harness.streaming_runs import user_codes
from train.export import write_merged

DEVICES = 8
DP, FSDP = 2, 4
LENGTH = 12
# max |sharded - unsharded| / rms(unsharded) at valid positions: from the policy table (see the `why` there).
BOUND = {k: tolerance_for("float32", f"sharded_{k}_logits", "ours-ours").atol for k in ("text", "audio")}


def random_codes(cfg: LMConfig, batch: int, *, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = rng.integers(0, cfg.text_card, (batch, 1, LENGTH))
    audio = rng.integers(0, cfg.card, (batch, cfg.n_q, LENGTH))
    return np.concatenate([text, audio], axis=1).astype(np.int32)


def max_diff_over_rms(ref, cand, ref_mask, cand_mask, name: str) -> float:
    """max |cand - ref| / rms(ref) over valid positions; logits are NaN at invalid ones by design."""
    ref_mask, cand_mask = np.asarray(ref_mask), np.asarray(cand_mask)
    if not np.array_equal(ref_mask, cand_mask):
        raise AssertionError(f"{name}: masks differ")
    a, b = np.asarray(ref)[ref_mask], np.asarray(cand)[cand_mask]
    if a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise AssertionError(f"{name}: no valid positions or non-finite logits at valid positions")
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.sqrt(np.mean(np.square(a.astype(np.float64)))))


def compare(ref, cand, name: str) -> dict[str, float]:
    """max |diff| / rms(ref) of the text and the audio logits (LMOutput each), at valid positions."""
    return {
        "text": max_diff_over_rms(ref.text_logits, cand.text_logits, ref.text_mask, cand.text_mask, f"{name} text"),
        "audio": max_diff_over_rms(
            ref.audio_logits, cand.audio_logits, ref.audio_mask, cand.audio_mask, f"{name} audio"
        ),
    }


def checkpoint_check(host: dict, mesh, forward, codes: jax.Array, expected) -> dict:
    """`models_flax.from_checkpoint(path, mesh=mesh)` of a flax OUT holding the unsharded model's weights: every
    parameter placed by its rule straight from the host, and the logits on the sharded `codes` bit for bit those of
    the model sharded after it was built (`expected`: the same program on the same shards)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_merged(Path(tmp), host, LMConfig.tiny(), source="sharding_check", trained={}, progress=False)
        loaded = from_checkpoint(tmp, precision=jax.lax.Precision.HIGHEST, mesh=mesh)
    split = check_placement(loaded, mesh)
    out = forward(nnx.state(loaded), codes)
    for name in ("text_logits", "audio_logits"):
        if not np.array_equal(np.asarray(getattr(expected, name)), np.asarray(getattr(out, name)), equal_nan=True):
            raise AssertionError(f"from_checkpoint(mesh=): {name} differ from the model sharded after it was built")
    return {"split": split, "bit_exact": True}


def loaded(cfg: LMConfig, host: dict, **options) -> LM:
    """The tiny LM (with `options`) holding the host weights, on one device: no initializer runs (nor compiles)."""
    model = nnx.eval_shape(lambda: LM(cfg, precision=jax.lax.Precision.HIGHEST, **options, rngs=nnx.Rngs(0)))
    load_flax(model, host)
    return model


def stream_check(cfg: LMConfig, mesh, host: dict) -> dict:
    """`Streamer(lm, mesh=mesh)`: greedy tokens over 14 frames of B=2, a reset of row 0 and 6 more frames, equal to
    the unsharded Streamer's token for token; the weights placed by the rules, the caches split by kv heads; one
    compiled step for the whole session (without the state's placement the second frame compiles again)."""

    def run(streamer: Streamer) -> tuple[np.ndarray, StreamState]:
        codes, tokens = user_codes(cfg, 2, 20, seed=3), []
        state = streamer.init_state(2)
        for t in range(codes.shape[2]):
            if t == 14:
                state = streamer.reset(state, np.array([True, False]))
            out, state = streamer.step(state, codes[:, :, t])
            tokens.append(np.asarray(out.tokens))
        return np.stack(tokens, axis=-1), state

    expected, _ = run(Streamer(loaded(cfg, host), text=GREEDY, audio=GREEDY))
    lm = loaded(cfg, host)
    streamer = Streamer(lm, text=GREEDY, audio=GREEDY, mesh=mesh)
    got, state = run(streamer)
    if not np.array_equal(expected, got):
        first = np.argwhere(expected != got)[:3].tolist()
        raise AssertionError(f"Streamer(mesh=): tokens differ from the unsharded ones at (row, stream, frame) {first}")
    split = check_placement(lm, mesh)
    specs = {getattr(c.keys.sharding, "spec", None) for c in state.caches}
    if specs != {P(None, "fsdp")}:
        raise AssertionError(f"Streamer(mesh=): caches placed with {specs}, expected P(None, 'fsdp') (kv heads)")
    if streamer._step._cache_size() != 1:
        raise AssertionError(f"Streamer(mesh=): the step compiled {streamer._step._cache_size()} times in one session")
    pallas, _ = run(Streamer(loaded(cfg, host, impl="pallas"), text=GREEDY, audio=GREEDY, mesh=mesh))
    if not np.array_equal(expected, pallas):
        first = np.argwhere(expected != pallas)[:3].tolist()
        raise AssertionError(f"Streamer(mesh=) with Pallas attention: tokens differ at (row, stream, frame) {first}")
    return {"frames": int(got.shape[-1]), "tokens_equal": True, "pallas_tokens_equal": True, "split": split,
            "step_compiles": 1}  # fmt: skip


def pallas_check(cfg: LMConfig, mesh, codes: np.ndarray, host: dict) -> dict:
    """The tiny LM with attention="pallas" (interpreted on CPU), sharded and run in the mesh's context, where the
    kernels run in a shard_map over the batch (XLA cannot partition a Pallas call: on TPU, NotImplementedError "Mosaic
    kernels cannot be automatically partitioned"): its logits against the unsharded Pallas model's, within BOUND, and
    the program holds shard_map regions; a batch the data axes do not divide raises."""
    model = loaded(cfg, host, impl="pallas")
    graphdef, _ = nnx.split(model)

    @jax.jit
    def forward(state, codes):
        return nnx.merge(graphdef, state)(codes)

    ref = forward(nnx.state(model), codes)  # unsharded, no mesh context: the kernels as they are
    sharding.shard_model(model, mesh)
    state = nnx.state(model)
    batch = sharding.shard_batch(codes, mesh)
    with jax.set_mesh(mesh):
        out = forward(state, batch)
        manual = forward.lower(state, batch).as_text().count("manual_computation")
        try:
            forward(state, sharding.shard_batch(codes[:4], mesh, spec=P("dp")))
        except ValueError as e:
            indivisible = str(e)
        else:
            raise AssertionError("the Pallas kernels' shard_map accepted B=4 on 8 devices")
    diffs = compare(ref, out, "pallas dp_fsdp")
    if any(diffs[k] > BOUND[k] for k in BOUND):
        raise AssertionError(f"pallas: max diff / rms {diffs} > {BOUND}")
    if manual == 0:
        raise AssertionError("pallas: no shard_map region in the program: the kernels ran partitioned by XLA")
    rolled = compare(ref, jax.tree.map(lambda x: np.roll(np.asarray(x), 1, axis=0), out), "pallas rolled rows")
    if not all(rolled[k] > BOUND[k] for k in BOUND):  # negative control: devices' rows concatenated out of order
        raise AssertionError(f"negative control: pallas rows rolled by one pass: {rolled} <= {BOUND}")
    return {"max_diff_over_rms": diffs, "shard_maps": manual, "indivisible_batch_error": indivisible,
            "rolled_rows_control": rolled}  # fmt: skip


def main() -> int:
    if jax.device_count() != DEVICES:
        print(f"sharding_check needs {DEVICES} devices, jax has {jax.device_count()}", file=sys.stderr)
        return 2
    cfg = LMConfig.tiny()
    make = lambda: LM(cfg, precision=jax.lax.Precision.HIGHEST, rngs=nnx.Rngs(0))  # noqa: E731
    model = nnx.jit(make)()  # the unsharded model: drawn compiled, as init_on_mesh draws it below
    graphdef, _ = nnx.split(model)

    @jax.jit
    def forward(state, codes):
        return nnx.merge(graphdef, state)(codes)

    layouts = {"dp_fsdp": sharding.DATA_SPEC, "dp": P("dp")}
    codes8 = random_codes(cfg, 8, seed=0)
    codes = {"dp_fsdp": codes8, "dp": codes8[:4]}
    refs = {name: forward(nnx.state(model), c) for name, c in codes.items()}  # unsharded, on device 0
    floor = compare(jax.tree.map(lambda x: x[:4], refs["dp_fsdp"]), refs["dp"], "unsharded B=8 vs B=4")

    mesh = sharding.make_mesh(DP, FSDP)
    host = flax_state(model)  # the unsharded weights, for the checkpoint loaded onto the mesh below
    model = sharding.init_on_mesh(make, mesh)  # the same weights, drawn straight onto their shards
    state = nnx.state(model)
    split = check_placement(model, mesh)
    drawn = flax_state(model)
    differ = [key for key in host if not np.array_equal(host[key], drawn[key])]
    if differ:
        raise AssertionError(f"init_on_mesh: {len(differ)} weights differ from the one-device draw, first {differ[0]}")
    big = [p for p in sharding.describe(model, mesh) if p.bytes >= 1024]
    if not big or any(p.bytes_per_device >= p.bytes for p in big):
        raise AssertionError("a parameter of 1 KiB or more is not split")

    result = {"params": len(host), "split": split, "mesh": dict(mesh.shape), "bound": BOUND}
    result["unsharded_noise"] = floor
    result["max_diff_over_rms"] = {}
    batches, outs = {}, {}
    for name, spec in layouts.items():
        batches[name] = sharding.shard_batch(codes[name], mesh, spec=spec)
        out = outs[name] = forward(state, batches[name])
        ref = refs[name]
        if out.text_logits.sharding.device_set != set(mesh.devices.flat):
            raise AssertionError(f"{name}: output not computed on the mesh: {out.text_logits.sharding}")
        diffs = result["max_diff_over_rms"][name] = compare(ref, out, name)
        if any(diffs[k] > BOUND[k] for k in BOUND):
            raise AssertionError(f"{name}: max diff / rms {diffs} > {BOUND}")
        if name == "dp_fsdp":
            rolled = compare(ref, jax.tree.map(lambda x: np.roll(np.asarray(x), 1, axis=0), out), "rolled rows")
            if not all(rolled[k] > BOUND[k] for k in BOUND):
                raise AssertionError(f"negative control: batch rows rolled by one pass: {rolled} <= {BOUND}")
            result["rolled_rows_control"] = rolled
    result["pallas"] = pallas_check(cfg, mesh, codes["dp_fsdp"], host)
    result["stream"] = stream_check(cfg, mesh, host)
    result["checkpoint"] = checkpoint_check(host, mesh, forward, batches["dp_fsdp"], outs["dp_fsdp"])
    try:
        sharding.shard_batch(codes["dp_fsdp"][:3], mesh)
    except ValueError as e:
        result["indivisible_batch_error"] = str(e)
    else:
        raise AssertionError("shard_batch accepted B=3 on 8 devices")
    result["train"] = train_sharding_check.check()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
