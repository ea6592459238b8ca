"""The whole-LM comparisons shared by the tiny-config tests (parity/test_lm.py), the full-size checks
(parity/test_full_size.py) and the measurement behind their bounds (bench/measure_full_size.py): the logits, judged in
kyutai's delay layout, and the per-layer drift of both stacks.

Drift records, one component per stack (`STACKS`; their policy bounds differ: the depth stack's input is the temporal
stack's output, so it starts where the temporal drift ends): "lm_hidden", layer 0 the temporal stack's input (the
embeddings) and i its layer i - 1; "lm_depth_hidden", layer 0 the depth transformer's input (token embeddings plus
the projected temporal state) and j its layer j - 1. `layer_names` names them for the report.

Every comparison's policy component is `policy.sized(component, preset)`: a preset larger than tiny has its own
measured rows (rounding grows with the model's width and vocabulary).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from moshi_spec import LMConfig
from parity.harness.compare import ParityError, assert_parity, check_parity, judge
from parity.harness.implementations import Models
from parity.harness.policy import sized
from parity.harness.streaming_runs import first_difference, nan_rows, stream_name

CAPTURES = ("hidden", "depth_hidden")
"""What `layer_drift` needs captured in the runs it compares."""
LOGITS = ("text_logits", "audio_logits")


def check_layout(cfg: LMConfig, ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], pair: tuple[str, str],
                 component: str) -> np.ndarray:  # fmt: skip
    """What the delay pattern decides, exactly: the masks (the delay tail and the zero tokens) and NaN placement
    (kyutai fills the delay tail with NaN, and a port must too: finite values there would pass a loss that trusts
    them). Returns the (B, K, T) rows whose values are compared: every row kyutai's logits are finite, the zero
    tokens' included (masked out of the loss, yet computed by kyutai).

    Raises:
        AssertionError: masks or NaN placement differ; names the stream, its delay and the first position.
    """
    first = 0 if component == "text_logits" else 1
    mask = component.replace("logits", "mask")
    where = {"names": pair, "delays": cfg.delays, "dep_q": cfg.dep_q, "first_stream": first}
    problems = [
        first_difference(ref[mask], cand[mask], what=mask, tail=("invalid", False), **where),
        first_difference(
            nan_rows(ref[component]),
            nan_rows(cand[component]),
            what=f"NaN placement of {component}",
            tail=("NaN", "NaN"),
            **where,
        ),
    ]
    if any(problems):
        raise AssertionError(f"{pair}: " + "; ".join(p for p in problems if p))
    return ~np.isnan(ref[component]).any(-1)


def compare_logits(
    cfg: LMConfig,
    ref: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    pair: tuple[str, str],
    dtype: str,
    *,
    components: tuple[str, ...] = LOGITS,
    preset: str = "tiny",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> None:
    """`check_layout`, then the values of the rows it returns.

    Raises:
        AssertionError: masks or NaN placement differ.
        ParityError: the values differ beyond the policy; names the worst row's place in the layout.
    """
    batch, _, length = ref["text_mask"].shape
    for component in components:
        valid = check_layout(cfg, ref, cand, pair, component)
        try:
            assert_parity(ref[component][valid], cand[component][valid], component=sized(component, preset),
                          pair=pair, expected_dtype=dtype, logits=True, config=config or {"length": length},
                          inputs={"codes": (batch, 1 + cfg.n_q, length)}, **kw)  # fmt: skip
        except ParityError as e:  # the compared rows are the valid ones: name the worst one's place in the layout
            if e.metrics is None:
                raise
            first = 0 if component == "text_logits" else 1
            b, k, t = np.argwhere(valid)[e.metrics.worst_index[0]]
            stream = f"{stream_name(first + k, cfg.dep_q)} (stream {first + k}, delay {cfg.delays[first + k]})"
            raise ParityError(
                f"{e}; worst row: row {b}, {stream}, t {t}", metrics=e.metrics, failures=e.failures
            ) from None


STACKS = {"lm_hidden": ("hidden", "temporal_layer"), "lm_depth_hidden": ("depth_hidden", "depth_layer")}
"""drift component -> (the capture holding the stack's input and layer outputs, the entry running one of its layers)"""


def layer_names(cfg: LMConfig, component: str) -> list[str]:
    """The name of every layer index of a drift component (see the module docstring)."""
    if component == "lm_hidden":
        return ["embedding", *(f"temporal {i}" for i in range(cfg.temporal.num_layers))]
    return ["depth input", *(f"depth {j}" for j in range(cfg.depth.num_layers))]


def drift_cases(
    models: Models, runs: dict[str, dict[str, np.ndarray]], pair: tuple[str, str]
) -> Iterator[tuple[str, int, str, str, np.ndarray, np.ndarray]]:
    """(component, layer, layer name, stage, reference, candidate) of every layer of both stacks, in model order.

    propagated: each implementation on its own activations (`runs`, captured with `CAPTURES`); teacher_forced: the
    candidate's layer fed the reference's input (the stacks' inputs have no teacher-forced twin).
    """
    for component, (capture, entry) in STACKS.items():
        names = layer_names(models.cfg, component)
        ref, cand = runs[pair[0]][capture], runs[pair[1]][capture]
        for layer in range(len(ref)):
            yield component, layer, names[layer], "propagated", ref[layer], cand[layer]
            if layer > 0:
                inputs = {"x": ref[layer - 1].astype(np.float32), "layer": layer - 1}
                forced = models.run(pair[1], inputs, entry=entry)["y"]
                yield component, layer, names[layer], "teacher_forced", ref[layer], forced


def layer_drift(
    models: Models,
    runs: dict[str, dict[str, np.ndarray]],
    pair: tuple[str, str],
    dtype: str,
    *,
    preset: str = "tiny",
    config: dict[str, Any] | None = None,
    control: tuple[str, str] | None = None,
) -> list[str]:
    """Records every case of `drift_cases` and returns one message per layer and stage over budget, in model order
    (the first names the first diverging layer).

    control: (name, layer name) of a negative control, a bug planted in that layer of the candidate: that layer's
    comparisons are recorded as the control; every other layer is judged without a record (a broken model's layers
    are not results, and the ones the bug reaches are expected to fail).
    """
    failures = []
    for component, layer, name, stage, a, b in drift_cases(models, runs, pair):
        key = sized(component, preset)
        if control is not None and control[1] != name:
            ok, _, why = judge(a, b, component=key, pair=pair, expected_dtype=dtype)
        else:
            ok, _, why = check_parity(a, b, component=key, pair=pair, expected_dtype=dtype, layer=layer,
                                      layer_name=name, stage=stage, config=config,
                                      control=None if control is None else control[0])  # fmt: skip
        if not ok:
            failures.append(f"{name} ({component} layer {layer}, {stage}): {'; '.join(why)}")
    return failures
