"""The single tolerance table: every parity threshold in the suite lives here, keyed by (dtype, component).

Policy:
- float32 tolerances are tight enough that porting bugs fail them (a wrong rope theta, a swapped gate, an eps in the
  wrong place, a missing scale); every test module carries negative controls proving that its tolerance catches them.
- bfloat16 is compared bf16-vs-bf16: reference and candidate both run in bfloat16 and both outputs must be bfloat16
  (`parity.compare` refuses a silent upcast or downcast); the bounds reflect bf16 rounding, not porting slack.
- Numbers are measured, and each entry's `why` states the measurement behind it. A tolerance is never widened to make a
  failing comparison pass: a failure is either a bug to fix or a documented upstream divergence
  (`assert_parity(..., expected_divergence=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """Bounds one comparison must meet.

    Attributes:
        atol: elementwise absolute bound: every element satisfies |cand - ref| <= atol + rtol * |ref|.
        rtol: elementwise relative bound (see atol).
        mae: bound on the mean absolute difference.
        kl: logits only: bound on mean KL(softmax(ref) || softmax(cand)) over the last axis.
        topk: logits only: k for the top-k agreement check.
        topk_agreement: logits only: minimum fraction of positions whose top-k index sets agree.
        why: the measurement that justifies the numbers.
    """

    atol: float
    rtol: float
    mae: float
    kl: float | None = None
    topk: int | None = None
    topk_agreement: float | None = None
    why: str = ""

    def __post_init__(self) -> None:
        for field in ("atol", "rtol", "mae"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"Tolerance.{field} must be >= 0, got {getattr(self, field)!r}")
        logits_fields = {"kl": self.kl, "topk": self.topk, "topk_agreement": self.topk_agreement}
        set_fields = [k for k, v in logits_fields.items() if v is not None]
        if set_fields and len(set_fields) != len(logits_fields):
            raise ValueError(f"Tolerance logits bounds kl, topk, topk_agreement go together; only {set_fields} given")
        if self.kl is not None and not self.kl >= 0:
            raise ValueError(f"Tolerance.kl must be >= 0, got {self.kl!r}")
        if self.topk is not None and (isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1):
            raise ValueError(f"Tolerance.topk must be an int >= 1, got {self.topk!r}")
        if self.topk_agreement is not None and not 0.0 <= self.topk_agreement <= 1.0:
            raise ValueError(f"Tolerance.topk_agreement must be in [0, 1], got {self.topk_agreement!r}")

    @property
    def is_logits(self) -> bool:
        """Whether this tolerance bounds logits (KL and top-k agreement)."""
        return self.kl is not None


_PLACEHOLDER = "placeholder: to be measured"
_FP32 = Tolerance(atol=1e-5, rtol=1e-5, mae=1e-6, why=_PLACEHOLDER)
_BF16 = Tolerance(atol=2e-2, rtol=2e-2, mae=4e-3, why=_PLACEHOLDER)

COMPONENTS = ("flexible_linear", "rmsnorm", "gating_mlp", "rope", "attention", "decoder_layer")

POLICY: dict[tuple[str, str], Tolerance] = {
    **{("float32", component): _FP32 for component in COMPONENTS},
    **{("bfloat16", component): _BF16 for component in COMPONENTS},
}


def tolerance_for(dtype: str, component: str) -> Tolerance:
    """Looks up the tolerance for a (dtype name, component) pair.

    Raises:
        KeyError: no entry; the message lists every known key.
    """
    try:
        return POLICY[(dtype, component)]
    except KeyError:
        known = ", ".join(f"({d!r}, {c!r})" for d, c in sorted(POLICY))
        raise KeyError(f"no tolerance for dtype {dtype!r}, component {component!r}; known keys: {known}") from None
