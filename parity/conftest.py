"""Fixtures shared by the parity test modules."""

import jax
import pytest


@pytest.fixture
def patch(monkeypatch):
    """monkeypatch for bugs planted inside traced code. JAX caches a trace per jitted function (every Streamer jits the
    same module-level `_commit`; the Pallas kernels are module-level jits), so a trace made under a patch would outlive
    it; drop all traces before and after."""
    jax.clear_caches()
    yield monkeypatch
    monkeypatch.undo()
    jax.clear_caches()
