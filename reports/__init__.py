"""Records of every parity comparison: the record type (`records`), the pytest plugin that collects them (`plugin`) and
the command line (`python -m reports`).

The report is built only from records; see `reports.records` for the schema.
"""
