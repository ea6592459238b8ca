"""One planted bug: a source-level edit of one file (the entries: catalogue.py)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


class MutationError(ValueError):
    """A mutation that does not apply: its snippet is missing from its file or occurs more than once."""


@dataclass(frozen=True)
class Mutation:
    """One planted bug.

    Attributes:
        id: unique name, package prefix first ("flax_...", "ref_...", "conv_...").
        file: path relative to the repository root.
        original: the exact source text replaced; occurs exactly once in `file`.
        replacement: what replaces it.
        bug_class: the porting-bug class ("mask off by one", "bf16 island dropped", ...).
        tests: pytest arguments selecting the tests to run (node ids).
        why: the mistake a port makes that this edit plants.
    """

    id: str
    file: str
    original: str
    replacement: str
    bug_class: str
    tests: tuple[str, ...]
    why: str

    @property
    def package(self) -> str:
        return self.file.split("/", 1)[0]

    def apply(self, source: str) -> str:
        """`source` (the text of `file`) with the bug planted.

        Raises:
            MutationError: the snippet does not occur exactly once.
        """
        found = source.count(self.original)
        if found != 1:
            raise MutationError(f"{self.id}: snippet occurs {found} times in {self.file}, expected once")
        return source.replace(self.original, self.replacement)

    def diff(self, source: str) -> str:
        """The unified diff the mutation makes to `source`."""
        lines = difflib.unified_diff(
            source.splitlines(keepends=True),
            self.apply(source).splitlines(keepends=True),
            fromfile=f"a/{self.file}",
            tofile=f"b/{self.file}",
            n=1,
        )
        return "".join(lines)
