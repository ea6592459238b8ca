"""The Flax port and the config import without torch (a TPU user installs jax and flax only)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["moshi_spec", "models_flax", "converters"])
def test_imports_without_torch(module):
    blocked = "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'transformers', 'moshi')]"
    code = f"{blocked}; import {module}; assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_moshi_spec_imports_without_jax():
    code = "import sys; sys.modules['jax'] = None; sys.modules['torch'] = None; import moshi_spec"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
