"""Bad LM codes, eager and under jit: an error naming the argument, its shape, dtype or value and the valid range.

Eager (concrete codes), ref and flax raise the same TypeError / ValueError. Under jit the Flax checks are checkify
checks: `models_flax.checked_jit` raises them as the eager ValueError, word for word; a plain jit carries no check
(no effect: JAX's fast dispatch) and clamps nothing: what a bad code feeds is NaN.
"""

import subprocess
import sys
import warnings
from functools import cache

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

import models_flax
from converters.cli import main as cli_main
from models_flax.lm import LM
from moshi_spec import LMConfig
from parity.harness.implementations import build
from parity.harness.strategies import random_codes

CFG = LMConfig.tiny()  # n_q 8 (9 streams with the text), card 32, text_card 48


@cache
def _models():
    return build("lm", CFG, "float32", impls=("kyutai", "ref", "flax"))


def _codes(*changes: tuple[tuple[int, int, int], int]) -> np.ndarray:
    """Valid (2, 9, 5) int64 codes (numpy's default integer), then codes[index] = value for each (index, value)."""
    codes = random_codes(CFG, 2, 5, seed=0, zero_fraction=0.1)
    for index, value in changes:
        codes[index] = value
    return codes


def _call(impl: str, codes):
    lm = _models().module(impl)
    return lm(torch.from_numpy(codes) if impl == "ref" and isinstance(codes, np.ndarray) else codes)


ZERO_TOKEN = r"or -1 \(the zero token\)"
BAD = {
    "T=0": (
        np.zeros((2, 9, 0), np.int64),
        ValueError,
        r"codes must be \(B, 1 \+ n_q = 9, T\) with B >= 1 and T >= 1, "
        r"got shape \(2, 9, 0\)",
    ),
    "B=0": (np.zeros((0, 9, 5), np.int64), ValueError, r"with B >= 1 and T >= 1, got shape \(0, 9, 5\)"),
    "streams": (np.zeros((2, 8, 5), np.int64), ValueError, r"\(B, 1 \+ n_q = 9, T\) .* got shape \(2, 8, 5\)"),
    "list": (
        _codes().tolist(),
        TypeError,
        r"codes must be a (jax or numpy|torch) integer (array|tensor) "
        r"\(B, 1 \+ n_q = 9, T\), got list",
    ),
    "float": (_codes().astype(np.float32), TypeError, r"codes must be integers, got (torch\.)?float32 of shape"),
    "bool": (_codes() > 0, TypeError, r"codes must be integers, got (torch\.)?bool"),
    "text_5000": (
        _codes(((0, 0, 1), 5000)),
        ValueError,
        rf"codes\[:, 0\]: text ids must be in \[0, 48\) {ZERO_TOKEN}; "
        r"got 5000 at index \(0, 0, 1\) \(1 out of range\)",
    ),
    "text_initial_token": (_codes(((1, 0, 4), 48)), ValueError, r"text ids .* got 48 at index \(1, 0, 4\)"),
    "audio_card": (
        _codes(((1, 3, 4), 32)),
        ValueError,
        rf"codes\[:, 1:\]: audio ids must be in \[0, 32\) {ZERO_TOKEN}; "
        r"got 32 at index \(1, 3, 4\) \(1 out of range\)",
    ),
    "audio_below_zero_token": (
        _codes(((0, 8, 0), -2), ((1, 8, 1), -7)),
        ValueError,
        r"got -2 at index \(0, 8, 0\) \(2 out",
    ),
}


@pytest.mark.parametrize("impl", ("ref", "flax"))
@pytest.mark.parametrize("case", list(BAD))
def test_bad_codes_raise_the_same_error(impl, case):
    codes, error, match = BAD[case]
    with pytest.raises(error, match="^LM: .*" + match):
        _call(impl, codes)


def test_int64_codes_are_checked_then_cast_without_warning():
    """numpy int64 codes (numpy's default) reach the call as they are, as in an eager call (eval_shape runs the same
    Python without compiling the model): no JAX truncation warning, and int32 codes inside."""
    lm, codes = _models().module("flax"), _codes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # JAX warns when asked for an int64 it cannot keep (x64 is off)
        shapes = jax.eval_shape(lambda: lm(codes))
        assert lm.check_codes(codes).dtype == np.int32
    assert shapes.text_logits.shape == (2, 1, 5, CFG.text_card)


def test_under_jit_a_bad_code_raises_with_checked_jit_and_is_never_clamped():
    """checked_jit raises the ValueError an eager call raises, word for word. A plain jit (a functional split, as a
    serving loop has) carries no check, so that it keeps JAX's fast dispatch (no effect, no host callback), and clamps
    nothing: a bad text code at frame 1 (the temporal input of step 2) makes row 1's logits from step 2 on NaN; row 0
    is the good run's, and checked_jit's good output is the plain jit's."""
    lm, bad = _models().module("flax"), _codes(((1, 0, 1), 5000))
    with pytest.raises(ValueError) as eager:
        lm(bad)
    checked = models_flax.checked_jit(lambda lm, codes: lm(codes))
    with pytest.raises(ValueError) as jitted:
        checked(lm, jax.numpy.asarray(bad))
    assert str(jitted.value) == str(eager.value)

    graphdef, state = nnx.split(lm)
    plain = jax.jit(lambda state, codes: nnx.merge(graphdef, state)(codes))
    good = _codes()
    assert plain.trace(state, good).jaxpr.effects == set()
    want, got = plain(state, good), plain(state, bad)
    for logits, mask in (("text_logits", "text_mask"), ("audio_logits", "audio_mask")):
        valid = np.asarray(getattr(got, mask))[1, :, 2:]
        values = np.asarray(getattr(got, logits))
        assert np.isnan(values[1, :, 2:][valid]).all(), f"{logits}: computed from a clamped embedding"
        assert np.array_equal(values[0], np.asarray(getattr(want, logits))[0], equal_nan=True), logits
    assert np.array_equal(np.asarray(checked(lm, good).text_logits), np.asarray(want.text_logits))


def test_from_checkpoint_is_exported_lazily():
    """`models_flax.from_checkpoint` without torch installed; `import models_flax` imports neither the checkpoint
    module nor the converters (the attribute or the call does)."""
    code = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'transformers', 'moshi')]\n"
        "import models_flax\n"
        "loaded = [m for m in ('models_flax.checkpoint', 'converters') if m in sys.modules]\n"
        "assert not loaded and 'from_checkpoint' in models_flax.__all__ + dir(models_flax), loaded\n"
        "from models_flax import from_checkpoint\n"
        "assert from_checkpoint.__module__ == 'models_flax.checkpoint'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_checkpoint_model_rejects_bad_codes(tmp_path):
    """An LM loaded by `models_flax.from_checkpoint` checks its codes."""
    save_file(_models().states["kyutai"], str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    args = ["--no-progress", "--src", "kyutai", "--dst", "flax", "--preset", "tiny"]
    assert cli_main([*args, str(tmp_path / "model.safetensors"), str(tmp_path / "flax")]) == 0
    lm = models_flax.from_checkpoint(tmp_path / "flax")
    assert isinstance(lm, LM)  # the class whose call checks its codes, eagerly and under jit (tests above)
    for case in ("list", "text_5000", "audio_card"):
        codes, error, match = BAD[case]
        with pytest.raises(error, match=match):
            lm(codes)
