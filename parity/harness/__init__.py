"""The parity harness library: implementation adapters, the comparison entry point, the tolerance table, strategies,
negative controls. The test modules live one level up, in `parity/`."""
