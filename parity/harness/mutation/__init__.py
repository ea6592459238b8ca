"""The mutation job: measures the suite's own power by planting plausible porting bugs in models_flax, models_ref and
converters and running the tests that should catch them.

    python -m parity.harness.mutation [--sample N] [--seed S] [--only ID ...] [--jobs J] [--timeout S]
                                      [--out reports/out/mutations.jsonl] [--fail-under SCORE] [--list]

`catalogue.py` holds the bugs (each a `Mutation` of `edit.py`: one source-level edit, with its porting-bug class and its
tests), `runner.py` runs each in a copy of the repository and classifies it (killed, survived, timeout, invalid),
`__main__.py` is the command line. `python -m reports render [RECORDS] --mutations FILE -o DIR` shows the score per
class and package and every survivor with its diff.

Why a catalogue and not mutmut or cosmic-ray: generic operators (`<` -> `<=` anywhere, `+` -> `-`, a constant + 1)
produce mostly mutants no port would ever contain, or equivalent ones, and each needs a suite run that here costs
minutes (jax compilation, torch and kyutai models per test). A catalogue plants the mistakes ports actually make (the
rope layout, eps, a transposed weight, a mask or delay off by one, a bf16 island dropped, a converter permutation, a
sampler routed to the wrong stream) where they would be made, and runs only the tests that cover that code, so its
score says which classes of real bugs the suite catches. Unlike the negative controls (parity/harness/mutants.py), which
monkeypatch at run time inside the test that expects them, a mutant here edits the source and the unmodified tests
must notice on their own.
"""
