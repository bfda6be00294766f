"""`python -m prompt_tuning.train --gin_file=...`: the same as `prompt-tuning train ...` (t5x's `python -m t5x.train`).

A module of its own, not a `__main__` block of `prompt_tuning.train`: the runner it starts imports the gin layer,
which registers `prompt_tuning.train`'s configurables, so the block would close an import circle.
"""

from prompt_tuning import command

raise SystemExit(command.main("train"))
