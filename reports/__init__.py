"""Records of every parity comparison and the views built from them.

- `schema`: the record's fields, verdicts and types (a leaf: imports nothing from `reports`); `validate`: checks one.
- `records`: `emit()`, called once per comparison, and the context every record carries.
- `plugin`: the pytest plugin that writes the records of a run to one JSONL file (xdist-safe).
- `recordfile`: the one reader of a records file; `analysis`: the one aggregation (dedupe, counts, matrix, drift).
- `summary`, `render`, `diff` (+ `charts`, `templates/`): the views, run as `python -m reports summary|render|diff`.
- `history`: the run history in one SQLite file (`python -m reports history add|list`); `trends`: since which run a
  metric left its band or a comparison started failing (`render --history`).

The report is built only from records.
"""
