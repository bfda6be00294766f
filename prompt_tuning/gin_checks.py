"""Settings that are given but read by nothing: an error for macros, a loud warning for bindings.

gin itself refuses an unknown configurable or parameter, but a macro is only a name: `--gin.BATCH_SIZ=4`, or a t5x
macro this project does not read (`--gin.EVAL_OUTPUT_DIR=...`), would parse and change nothing. So, after parsing:

- `unread_macros(user_set)`: the macros the user set (in a config or on the command line) that no binding reads,
  directly or through other macros; `check_macros_are_read` raises `UnreadSettingError` naming the closest macro
  that is read (difflib), or the setting to use instead for a reference/t5x name (`prompt_tuning.reference`).
- `unread_bindings(bindings)`: after the run, the command line's `configurable.param` bindings whose configurable
  was never called (gin's operative config lacks them): `--gin.infer.split=...` on a `train` run.

`macro_snapshot()` taken after the defaults file tells which macros the user changed: defaults that nothing reads
(EVAL_SPLIT in a train run) are not errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from gin import config as gin_config

from prompt_tuning.reference import REFERENCE_NAMES

MACRO_SELECTOR = "gin.macro"


class UnreadSettingError(ValueError):
  """A gin macro that is set but read by nothing."""


def _macro_name(reference) -> str | None:
  """`%NAME` parses as a reference to `NAME/gin.macro`; returns NAME, or None for other references."""
  scope, _, selector = reference.scoped_selector.rpartition("/")
  return scope if selector == MACRO_SELECTOR and scope else None


def macro_snapshot() -> dict[str, object]:
  """Every macro now assigned, with its value object (to tell later, by identity, which were assigned again)."""
  return {
    scope: bindings.get("value")
    for (scope, selector), bindings in gin_config._CONFIG.items()
    if selector == MACRO_SELECTOR
  }


def assigned_macros() -> set[str]:
  return set(macro_snapshot())


def read_macros(also_read: Iterable[str] = ()) -> set[str]:
  """The macros a binding reads, directly or through other macros; `also_read` are read by the code itself."""
  macro_refs: dict[str, set[str]] = {}
  roots: set[str] = set(also_read)
  for (scope, selector), bindings in gin_config._CONFIG.items():
    names = {name for ref in gin_config.iterate_references(bindings) if (name := _macro_name(ref))}
    if selector == MACRO_SELECTOR:
      macro_refs[scope] = names
    else:
      roots |= names
  read, frontier = set(), list(roots)
  while frontier:
    name = frontier.pop()
    if name not in read:
      read.add(name)
      frontier.extend(macro_refs.get(name, ()))
  return read


def changed_macros(snapshot: dict[str, object]) -> set[str]:
  """The macros assigned (again) since `snapshot`."""
  now = macro_snapshot()
  return {name for name, value in now.items() if name not in snapshot or snapshot[name] is not value}


def unread_macros(user_set: Iterable[str], also_read: Iterable[str] = ()) -> list[str]:
  read = read_macros(also_read)
  return sorted(name for name in user_set if name not in read)


def describe_unread_macro(name: str, read: Iterable[str]) -> str:
  """One sentence: what `name` is not, and what to set instead."""
  if name in REFERENCE_NAMES:
    return f"{name} (a t5x / reference setting) is not read here; use {REFERENCE_NAMES[name]}"
  close = difflib.get_close_matches(name, sorted(read), n=1, cutoff=0.6)
  hint = f"did you mean {close[0]}?" if close else "see gin/defaults.gin for the macros runs read"
  return f"{name} is set but read by nothing in this configuration; {hint}"


def check_macros_are_read(user_set: Iterable[str], also_read: Iterable[str] = ()) -> None:
  """Raises `UnreadSettingError` for the first user-set macro no binding reads.

  Args:
    user_set: the macros the user's configs and flags assigned.
    also_read: macros the command line reads itself (MIXTURE_OR_TASK_MODULE, ...).
  """
  unread = unread_macros(user_set, also_read)
  if unread:
    read = read_macros(also_read)
    details = "; ".join(describe_unread_macro(name, read) for name in unread).rstrip(".")
    more = " A macro counts when a binding reads it (e.g. runs/prompt_eval.gin reads EVAL_SPLIT; a train run does not)."
    raise UnreadSettingError(details + ("" if details.endswith("?") else ".") + more)


def binding_key(binding: str) -> str | None:
  """'train.num_train_steps = 5' -> 'train.num_train_steps'; None for a macro ('BATCH_SIZE = 4') or an import."""
  name = binding.split("=", 1)[0].strip()
  if "=" not in binding or "." not in name.rsplit("/", 1)[-1]:
    return None
  return name


def macro_key(binding: str) -> str | None:
  """'BATCH_SIZE = 4' -> 'BATCH_SIZE'; None for a configurable's binding."""
  name = binding.split("=", 1)[0].strip()
  if "=" not in binding or "." in name or "/" in name or not name.isidentifier():
    return None
  return name


def unread_bindings(bindings: Iterable[str]) -> list[str]:
  """The command line's `configurable.param` bindings whose configurable was not called (after the run)."""
  unread = []
  for binding in bindings:
    key = binding_key(binding)
    if key is None:
      continue
    scoped_selector, _, param = key.rpartition(".")
    scope, _, selector = scoped_selector.rpartition("/")
    configurable = gin_config._REGISTRY.get_match(selector)
    if configurable is None:
      continue
    operative = gin_config._OPERATIVE_CONFIG.get((scope, configurable.selector), {})
    if param not in operative:
      unread.append(key)
  return unread


def warn_unread_bindings(bindings: Iterable[str], print_fn=None) -> list[str]:
  """Prints a warning line for each unread command-line binding; returns them."""
  unread = unread_bindings(bindings)
  for key in unread:
    line = f"warning: --gin.{key} was set but read by nothing in this run (its configurable was not called)"
    (print_fn or _stderr)(line)
  return unread


def _stderr(line: str) -> None:
  import sys

  print(line, file=sys.stderr, flush=True)


__all__ = [
  "UnreadSettingError",
  "assigned_macros",
  "changed_macros",
  "check_macros_are_read",
  "macro_snapshot",
  "read_macros",
  "unread_bindings",
  "unread_macros",
  "warn_unread_bindings",
]
