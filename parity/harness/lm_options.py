"""The checks every ported kyutai LMModel option goes through (parity/test_lm_norms.py, test_lm_ffn.py,
test_lm_kv_heads.py): kyutai's logits on the option's tiny model, greedy streaming against kyutai `LMGen`, and a CLI
conversion of a kyutai checkpoint whose LMModel kwargs are the `--config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jax import lax
from safetensors.numpy import save_file

from converters.cli import main as cli_main
from models_flax.checkpoint import from_checkpoint
from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer
from moshi_spec import LMConfig
from parity.harness import adapters, strategies
from parity.harness.compare import ParityError, assert_parity
from parity.harness.implementations import Models
from parity.harness.lm_checks import LOGITS, compare_logits
from parity.harness.policy import sized
from parity.harness.streaming_runs import run_lmgen, run_steps, token_mismatch, user_codes

LENGTH = 20  # longer than the tiny context window (8)
STREAM_FRAMES = 6  # streaming steps past the delay


def codes(cfg: LMConfig, *, seed: int = 1) -> np.ndarray:
    """Two rows of LENGTH frames of valid codes for cfg, a tenth of them the zero token."""
    return strategies.random_codes(cfg, 2, LENGTH, seed=seed, zero_fraction=0.1)


def compare(cfg: LMConfig, ref: dict, cand: dict, pair: tuple[str, str], dtype: str, **kw: Any) -> None:
    """`lm_checks.compare_logits` on an option's tiny model (masks and NaN placement exactly, then the values); with
    extra heads (kyutai's extra_heads_num_heads), their logits too, judged as text logits are (the same kind of head on
    the same normed temporal output; so their width must reach the policy's top-k, 5)."""
    config = {"preset": "tiny", "norm": cfg.temporal.norm}
    compare_logits(cfg, ref, cand, pair, dtype, config=config, **kw)
    assert ("extra_logits" in ref) == ("extra_logits" in cand) == (cfg.extra_heads > 0), (pair, cfg.extra_heads)
    if cfg.extra_heads:
        extra = ref["extra_logits"]
        assert_parity(extra, cand["extra_logits"], component=sized("text_logits", "tiny"), pair=pair,
                      expected_dtype=dtype, logits=True, config=config | {"what": "extra_logits"},
                      inputs={"codes": (extra.shape[0], 1 + cfg.n_q, extra.shape[2])},
                      control=kw.get("control"))  # fmt: skip


def assert_control_fails(
    cfg: LMConfig, expected: dict, cand: dict, *, control: str, components: tuple[str, ...] = LOGITS, impl: str = "flax"
) -> None:
    """A negative control: `cand`, the outputs of a planted bug, fail `compare` against kyutai's `expected` (float32)
    on `components` (the logits the bug must disturb: `lm_checks.compare_logits`'s), recorded under the control's
    name."""
    with pytest.raises(ParityError):
        compare(cfg, expected, cand, ("kyutai", impl), "float32", components=components, control=control)


def control_name(bug: Any) -> str:
    """A planted bug's name (its function's, without the leading underscore): the control's id and record name."""
    return bug.__name__.strip("_")


def assert_stream_tokens_match_lmgen(models: Models) -> None:
    """float32 greedy streaming of the Flax LM, token for token against kyutai's LMGen on the same user codes; a
    failure names the first wrong token."""
    cfg = models.cfg
    user = user_codes(cfg, 2, cfg.max_delay + STREAM_FRAMES, seed=2)
    expected = run_lmgen(models.module("kyutai"), user, use_sampling=False)
    got = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), user)["tokens"]
    where, _ = token_mismatch(cfg, expected, got, names=("kyutai", "flax[step]"))
    assert np.array_equal(expected, got), where


def cli_converted_logits(models: Models, kwargs: dict[str, Any], tmp_path: Path) -> dict[str, np.ndarray]:
    """Writes kyutai's weights and `kwargs` (its LMModel kwargs) as a checkpoint and `--config`, converts them to
    Flax with the CLI, and returns the loaded Flax LM's outputs on `codes(cfg)`."""
    cfg = models.cfg
    (tmp_path / "config.json").write_text(json.dumps(kwargs))
    save_file(models.states["kyutai"], str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "flax"
    args = ["--no-progress", "--src", "kyutai", "--dst", "flax", "--config", str(tmp_path / "config.json")]
    assert cli_main([*args, str(tmp_path / "model.safetensors"), str(out)]) == 0
    flax = adapters.adapter("flax")
    loaded = flax.wrap(from_checkpoint(out, precision=lax.Precision.HIGHEST), "lm", cfg, dtype="float32")
    return flax.run(loaded, {"codes": codes(cfg)})
