"""Command line of the mutation job (see parity/harness/mutation/__init__.py).

Prints one line per mutant as it finishes, then `reports.mutations.headline` and every survivor with its diff. Writes
the results, one JSON line per mutant, to --out (read by `python -m reports render --mutations FILE`).

Exit status: 0 when the job ran, survivors or not; 1 when --fail-under SCORE is given and the score is lower (or
nothing was measured), or when the copies would import the installed packages instead of their mutated files; 2 on a
usage error (an unknown --only id).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from parity.harness.mutation.catalogue import CATALOGUE
from parity.harness.mutation.runner import Job, select, shadows_install
from reports import mutations

ROOT = Path(__file__).resolve().parents[3]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity.harness.mutation", description=__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=None, help="run N mutants (deterministic for a --seed), not all")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--only", nargs="+", default=(), metavar="ID", help="run these mutants (by id)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's pytest run (default 900)")
    p.add_argument("--out", default="reports/out/mutations.jsonl", help="results JSONL (default %(default)s)")
    p.add_argument("--fail-under", type=float, default=None, metavar="SCORE", help="exit 1 when the score is lower")
    p.add_argument("--no-kill-check", action="store_true", help="do not rerun a kill's failing test unmutated")
    p.add_argument("--list", action="store_true", help="list the selected mutants and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        chosen = select(CATALOGUE, only=args.only, sample=args.sample, seed=args.seed)
    except ValueError as e:
        print(f"python -m parity.harness.mutation: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.id:45} {m.package:12} {m.bug_class:22} {' '.join(m.tests)}")
        return 0
    job = Job(ROOT, timeout=args.timeout, check_kills=not args.no_kill_check)
    with tempfile.TemporaryDirectory(prefix="mutant-check-") as tmp:
        unshadowed = shadows_install(job.copy(Path(tmp)))
    if unshadowed:
        print(
            f"python -m parity.harness.mutation: error: a copy imports {unshadowed}, not its own files", file=sys.stderr
        )
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"mutation job: {len(chosen)} of {len(CATALOGUE)} mutants, {args.jobs} at a time -> {out}", flush=True)
    start = time.monotonic()
    with open(out, "w", encoding="utf-8") as f:
        for result in job.run_all(chosen, jobs=args.jobs):
            f.write(mutations.line(result) + "\n")
            f.flush()
            failing = f" ({result['failing'][0]})" if result["failing"] else ""
            print(f"{result['verdict']:9} {result['duration_s']:7.1f}s {result['id']}{failing}", flush=True)
    summary = mutations.summarize(mutations.read(out))
    print(f"{summary['headline']}; {time.monotonic() - start:.0f} s")
    for r in summary["survivors"]:
        print(f"\nSURVIVED {r['id']} ({r['class']}; tests: {' '.join(r['tests'])})\n{r['diff']}", end="")
    for r in summary["unmeasured"]:
        print(f"\n{r['verdict'].upper()} {r['id']}: {r['reason']}")
    score = summary["counts"]["score"]
    if args.fail_under is not None and (score is None or score < args.fail_under):
        print(f"mutation score {score} is under --fail-under {args.fail_under}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
