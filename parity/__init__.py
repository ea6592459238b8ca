"""Parity suite: the test modules (`parity/test_*.py`) over the harness library (`parity/harness/`)."""
