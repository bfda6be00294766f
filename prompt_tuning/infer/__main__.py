"""`python -m prompt_tuning.infer --gin_file=...`: the same as `prompt-tuning infer ...` (t5x's `python -m t5x.infer`).

A module of its own, not a `__main__` block of `prompt_tuning.infer`: the runner it starts imports the gin layer,
which registers `prompt_tuning.infer`'s configurables, so the block would close an import circle.
"""

from prompt_tuning import command

raise SystemExit(command.main("infer"))
