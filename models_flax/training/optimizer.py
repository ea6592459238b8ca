"""The recipe's optimizer in optax: torch's `clip_grad_norm_`, then AdamW whose learning rate and beta1 follow torch's
`OneCycleLR` (moshi_spec/training.py).

The schedule is evaluated from the update count inside the optimizer (`optax.inject_hyperparams`), in float32;
torch evaluates it in Python floats, so the two agree to float32 rounding (parity/test_training.py measures it over a
whole run). AdamW's update and bias corrections use the beta1 of the current step, as torch's do after OneCycleLR
rewrote `betas[0]`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from moshi_spec.training import CLIP_EPS, OptimConfig


def onecycle(optim: OptimConfig, total_steps: int) -> tuple[Callable, Callable]:
    """(lr(count), beta1(count)): torch's OneCycleLR (two phases, cosine annealing) at 0-based optimizer step `count`.

    Raises:
        ValueError: a schedule torch cannot run (see `OptimConfig.phase_ends`).
    """
    warmup_end, end = optim.phase_ends(total_steps)
    initial = optim.lr / optim.div_factor
    final = initial / optim.final_div_factor

    def phase(count: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(in warm-up, fraction of the phase done, fraction left), each fraction computed from its own end."""
        step = jnp.asarray(count, jnp.float32)
        warm = step <= warmup_end  # a warm-up end < 0 (pct_start * total_steps < 1) skips the warm-up, as torch
        done = jnp.where(warm, step / warmup_end, (step - warmup_end) / (end - warmup_end))
        left = jnp.where(warm, (warmup_end - step) / warmup_end, (end - step) / (end - warmup_end))
        return warm, done, left

    def anneal(warm: jax.Array, done: jax.Array, left: jax.Array, points: tuple[float, float, float]) -> jax.Array:
        """torch's cosine annealing, start + (stop - start) (1 - cos(pi pct)) / 2, in the float32-accurate form
        a + (b - a) sin^2(pi x / 2) anchored at the phase's own end point (torch's form, evaluated in float32,
        cancels to 3e-4 relative error near the end of the run, where the learning rate is smallest)."""
        first, peak, last = points
        warm_value = first + (peak - first) * jnp.square(jnp.sin(jnp.pi / 2 * done))
        cool_value = last + (peak - last) * jnp.square(jnp.sin(jnp.pi / 2 * left))
        return jnp.where(warm, warm_value, cool_value)

    def lr(count: jax.Array) -> jax.Array:
        return anneal(*phase(count), (initial, optim.lr, final))

    def beta1(count: jax.Array) -> jax.Array:
        if not optim.cycle_momentum:
            return jnp.float32(optim.beta1)
        return anneal(*phase(count), (optim.max_momentum, optim.base_momentum, optim.max_momentum))

    return lr, beta1


def adamw(optim: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on every parameter it is given) with the OneCycle lr and beta1; its state's
    `hyperparams` hold the values the last update used."""
    lr, beta1 = onecycle(optim, total_steps)
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=lr, b1=beta1, b2=optim.beta2, eps=optim.eps, weight_decay=optim.weight_decay
    )


def clip_by_global_norm(grads: object, max_norm: float) -> tuple[object, jax.Array, jax.Array]:
    """torch's `clip_grad_norm_`: the norm of the per-tensor norms, factor min(1, max_norm / (norm + 1e-6)), every
    gradient multiplied by it. Returns (clipped grads, norm, factor)."""
    leaves = jax.tree.leaves(grads)
    norms = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) for g in leaves])
    norm = jnp.sqrt(jnp.sum(jnp.square(norms)))
    factor = jnp.minimum(max_norm / (norm + CLIP_EPS), 1.0)
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), norm, factor
