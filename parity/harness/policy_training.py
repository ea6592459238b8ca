"""The training rows of the tolerance table (parity/harness/policy.py, which imports this module to register them):
the Flax train step against kyutai's recipe, and the sharded train step against the unsharded one."""

from __future__ import annotations

from parity.harness.policy import OURS, UPSTREAM_OURS, Tolerance, _set

# Training (parity/test_training.py): the Flax train step against kyutai's recipe in PyTorch, float32, tiny LM, three
# setups (LoRA; LoRA + embeddings, 2 micro-batches, remat; full), lr 3e-3 (a 50-step OneCycle run). Measured (max|d| /
# rms(ref) and mae / rms(ref), the worst over every parameter, 6 gradient draws, 3 and 50 steps, XLA at O0):
#   gradients          1.9e-4 / 4.6e-6   the worst entries: depth weight set 0's k_proj, where kyutai's attention
#                                        backward adds rounding noise (~2e-8) through the first depth step's single-key
#                                        softmax (its q gradient, exactly 0 in Flax, is compared apart: an xfail);
#                                        LoRA-only setups 1.1e-5 / 1.7e-6. Flax 2 micro-batches vs one batch: 2.6e-6 /
#                                        2.8e-7.
#   master parameters  1.1e-5 / 9.8e-8   (at lr 1e-2: 1.8e-4 / 2.6e-7) AdamW divides by sqrt(v) + eps: an entry whose
#                                        gradient is ~eps (1e-8) moves by lr * dg / (4 eps), so a 1e-10 gradient
#                                        difference (fp32 noise next to 1e-4 gradients) moves it by ~2.5e-5 of lr.
#   Adam moments       mu 1.1e-4 / 4.6e-6, nu 2.6e-4 / 3.3e-6: the gradients' differences, squared for nu.
#   losses             2.8e-7 (3 steps) and 3.0e-7 (every step of the 50-step run).
#   grad norm, clip factor, lr, beta1 per step   5.8e-7 (at lr 1e-2: 1.05e-6).
#   OneCycle lr and beta1 over whole runs (4 schedules, up to 2000 steps) 2.8e-7 / 6.5e-8: float32 vs torch's Python
#                                        floats (models_flax/training/optimizer.py's cancellation-free form).
# The planted bugs (codebook-0 multiplier ignored, padding weight on the other text, user codebooks supervised,
# accumulation summing, adapter rope permutation left out, beta1 not cycled, clipping after the update) move the worst
# parameter by 1e-2 to 15 x rms and the mean by 4e-2 to 1.
_set("float32", "train_grad", UPSTREAM_OURS, Tolerance(
    atol=5e-4, rtol=0.0, mae=1e-5, why="kyutai->flax gradients: 1.9e-4 max (kyutai's single-key noise), 4.6e-6 mae",
))  # fmt: skip
_set("float32", "train_grad", OURS, Tolerance(
    atol=1e-5, rtol=0.0, mae=1e-6, why="flax 2 micro-batches vs 1 batch of 2B: 2.6e-6 max, 2.8e-7 mae",
))  # fmt: skip
_set("float32", "train_param", UPSTREAM_OURS, Tolerance(
    atol=5e-5, rtol=0.0, mae=5e-7, why="master weights after 1 and 3 steps: 1.1e-5 max (AdamW, |g| ~ eps), 9.8e-8 mae",
))  # fmt: skip
_set("float32", "train_mu", UPSTREAM_OURS, Tolerance(
    atol=3e-4, rtol=0.0, mae=1e-5, why="Adam's first moment after 1 and 3 steps: 1.1e-4 max, 4.6e-6 mae",
))  # fmt: skip
_set("float32", "train_nu", UPSTREAM_OURS, Tolerance(
    atol=6e-4, rtol=0.0, mae=1e-5, why="Adam's second moment after 1 and 3 steps: 2.6e-4 max, 3.3e-6 mae",
))  # fmt: skip
_set("float32", "train_loss", UPSTREAM_OURS, Tolerance(
    atol=1e-6, rtol=0.0, mae=1e-6, why="text, audio and total loss per step: 2.8e-7 (3 steps; 50-step run 3.0e-7)",
))  # fmt: skip
_set("float32", "train_scalar", UPSTREAM_OURS, Tolerance(
    atol=3e-6, rtol=0.0, mae=3e-6, why="grad norm, clip factor, lr, beta1 per step: 5.8e-7 (1.05e-6 at lr 1e-2)",
))  # fmt: skip
_set("float32", "train_schedule", UPSTREAM_OURS, Tolerance(
    atol=1e-6, rtol=0.0, mae=1e-6, why="OneCycle lr and beta1 over whole runs vs torch: 2.8e-7 max, 6.5e-8 mae",
))  # fmt: skip


# The sharded train step (parity/harness/train_sharding_check.py: LoRA + embeddings, 2 micro-batches of 8 rows, 2
# steps, lr 1e-2, (dp=2, fsdp=4) vs one device): max |d| / rms over every leaf of the master parameters and of Adam's
# moments measured 3.1e-4 / 3.3e-4 / 9.1e-4 at the suite's XLA O0, 1.1e-4 / 4.6e-4 / 4.7e-4 at XLA's default (the
# subprocess's flags) (sums reduced in another order across devices, amplified by AdamW where |g| ~ eps, as in the
# kyutai comparison above). A data shard read twice (rows 4..7 = rows 0..3) moves them by
# 0.2 / 8 / 39.
for _w, _atol, _measured in (("param", 1e-3, 3.1e-4), ("mu", 1e-3, 3.3e-4), ("nu", 3e-3, 9.1e-4)):
    _set("float32", f"sharded_train_{_w}", OURS, Tolerance(
        atol=_atol, rtol=0.0, mae=_atol, why=f"sharded vs unsharded train step, 2 steps: {_measured:.1e} max",
    ))  # fmt: skip
