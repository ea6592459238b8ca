"""Parity harness: one comparison entry point, one tolerance table, and the layer-by-layer test suite."""
