"""`python -m prompt_tuning.eval --gin_file=...`: the same as `prompt-tuning eval ...` (t5x's `python -m t5x.eval`).

A module of its own, not a `__main__` block of `prompt_tuning.eval`: the runner it starts imports the gin layer,
which registers `prompt_tuning.eval`'s configurables, so the block would close an import circle.
"""

from prompt_tuning import command

raise SystemExit(command.main("eval"))
