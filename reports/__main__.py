"""Command line of the report: `python -m reports render RECORDS.jsonl -o DIR`.

PLACEHOLDER: the renderer (HTML/JSON from records, and `diff`) is being written separately. Until it lands every
command prints "render: not yet implemented" and exits 2, so that tox's `report` env fails loudly instead of
pretending to have produced a report.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "render"
    print(f"{command}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
