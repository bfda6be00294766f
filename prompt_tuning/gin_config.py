"""Gin for every entry point: where gin files are found, the command line's gin flags, parsing, and the settings
that are given but read by nothing.

- `gin_search_paths`, `add_gin_search_paths`, `resolve_gin_file`: the project's gin library (gin/, configs/) and
  the user's folders; every resolved path is logged.
- `add_gin_flags`, `split_gin_flags`, `configure_from_flags`: t5x's `--gin_file`, `--gin_bindings`,
  `--gin_search_paths` and `--gin.NAME=VALUE`, as train, eval, infer, serve and plan read them.
- `configure_gin`: gin/defaults.gin (every macro's default), then the files, then the bindings; deprecated
  configurable names (`DEPRECATED_CONFIGURABLES`) are moved to their new names with a warning.
- `apply_code_read_macros`: the macros the code reads itself (MIXTURE_OR_TASK_MODULE, ...).
- Unread settings. gin itself refuses an unknown configurable or parameter, but a macro is only a name:
  `--gin.BATCH_SIZ=4`, or a t5x macro this project does not read (`--gin.EVAL_OUTPUT_DIR=...`), would parse and
  change nothing. So, after parsing, `check_macros_are_read` raises `UnreadSettingError` for a macro the user set
  (in a config or on the command line) that no binding reads, directly or through other macros, naming the closest
  macro that is read (difflib), or the setting to use instead for a reference/t5x name (`prompt_tuning.reference`).
  After the run, `warn_unread_bindings` warns about the command line's `configurable.param` bindings whose
  configurable was never called (gin's operative config lacks them): `--gin.infer.split=...` on a `train` run.
  `macro_snapshot()` taken after the defaults file tells which macros the user changed: defaults that nothing reads
  (EVAL_SPLIT in a train run) are not errors.

The command line (`prompt_tuning.cli`) only dispatches: it imports this module, and nothing imports it back.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import re
import sys
import tokenize
from collections.abc import Iterable, Mapping
from pathlib import Path

import gin
from gin import config as gin_internal

from prompt_tuning import reference

log = logging.getLogger(__name__)


def gin_search_paths() -> list[Path]:
  """The project's gin library and ready-to-run configs: in the source tree, or packaged when installed."""
  here = Path(__file__).resolve().parent
  candidates = [
    here.parent / "gin",
    here.parent / "configs",
    here / "gin_files" / "gin",
    here / "gin_files" / "configs",
  ]
  return [p for p in candidates if p.is_dir()]


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` flags (returned as bindings 'NAME=VALUE') from the rest."""
  bindings, rest = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin."):
      name_value = arg[len("--gin.") :]
      if "=" not in name_value:
        if i + 1 >= len(argv):
          raise ValueError(f"flag {arg} has no value; write --gin.NAME=VALUE")
        name_value, i = f"{name_value}={argv[i + 1]}", i + 1
      name, value = name_value.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return bindings, rest


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """t5x's gin flags: `--gin_file` (repeatable), `--gin_bindings` (repeatable) and `--gin_search_paths`
  (`--gin.NAME=VALUE` is taken out of argv before parsing: `split_gin_flags`)."""
  parser.add_argument(
    "--gin_file", action="append", default=[], help="gin file (repeatable); searched in the gin paths"
  )
  parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding NAME=VALUE (repeatable)")
  parser.add_argument("--gin_search_paths", default="", help="comma-separated extra folders to search for gin files")


def configure_from_flags(args: argparse.Namespace, bindings: list[str], check_unread: bool = True) -> list[str]:
  """`configure_gin` from the flags of `add_gin_flags` and the `--gin.NAME=VALUE` bindings of `split_gin_flags`;
  returns every binding given (`--gin_bindings` first, then `--gin.`), for `warn_unread_bindings` after the run.

  A command is configured by its flags alone: what an earlier command in the same process bound (a notebook's
  `cli.main([...])` called twice, or `prompt_tuning.cli.main` from a script) is cleared first, so no MODEL_DIR,
  MODEL_SIZE or vocabulary of the last run reaches this one."""
  gin.clear_config()
  all_bindings = [*args.gin_bindings, *bindings]
  search = [p for p in args.gin_search_paths.split(",") if p]
  configure_gin(args.gin_file, all_bindings, search, check_unread=check_unread)
  return all_bindings


DEFAULTS_FILE = "defaults.gin"
# Macros the command line reads itself, after parsing (no binding reads them).
CODE_READ_MACROS = ("MIXTURE_OR_TASK_MODULE", "USE_CACHED_TASKS", "LOSS_NORMALIZING_FACTOR")


class _GinPathNotFound(logging.Filter):
  """gin logs `ERROR:root:Path not found: ...` for every search-path miss while it looks for a file (and then finds
  it); a real miss is our FileNotFoundError or gin's IOError, so drop those lines."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.ERROR and str(record.msg).startswith("Path not found: "))


def _defaults_file() -> Path:
  for folder in gin_search_paths():
    if (folder / DEFAULTS_FILE).is_file():
      return folder / DEFAULTS_FILE
  raise FileNotFoundError(f"{DEFAULTS_FILE} not found in {gin_search_paths()}; the installation is incomplete.")


def configure_gin(
  files: list[str], bindings: list[str], search_paths: list[str], check_unread: bool = False
) -> set[str]:
  """Parses gin/defaults.gin, then the gin files, then the bindings (t5x semantics: files in order, then bindings).

  Because every macro's default comes from defaults.gin, parsed first, the files compose in any order: runs/ files
  bind configurables and assign no macro, so they never reset what models/, sizes/, prompts/ or a config set.

  Args:
    files: gin files, by path or relative to the search paths.
    bindings: 'NAME = VALUE' strings, applied last.
    search_paths: extra folders to search (the project's gin/ and configs/ are always searched).
    check_unread: raise `UnreadSettingError` for a macro set by the files or bindings that no binding
      reads (the command line's gin commands do; a partial config, e.g. a models/ file alone, would fail it).

  Returns:
    The macros the files and bindings assigned (beyond defaults.gin).

  Raises:
    FileNotFoundError: a gin file found nowhere.
    ValueError: a gin file that does not parse, naming it.
  """
  # Imported here, not above: registering every configurable imports train, eval, infer, the data pipeline and
  # TensorFlow, which the sweep planner's file lookups (`gin_search_paths`) do not need.
  from prompt_tuning import gin_registry

  add_gin_search_paths(search_paths)
  paths = [_resolve_or_refer(name, search_paths) for name in files]
  gin.parse_config_file(str(_defaults_file()))
  snapshot = macro_snapshot()
  for name, path in zip(files, paths):
    log.info("gin file %s: %s", name, path)
    try:
      parsed = gin.parse_config_file(path)
    except (SyntaxError, ValueError, KeyError, ImportError, OSError) as e:
      hint = _renamed_parameter(e, gin_registry.RENAMED_PARAMETERS) or "Fix the file (bindings are NAME = VALUE)."
      raise ValueError(f"gin file {path}: {_gin_error(e)}\n{hint}") from e
    except Exception as e:  # noqa: BLE001 - tokenize.TokenError and the like name no file
      raise ValueError(f"gin file {path}: {type(e).__name__}: {e}\nFix the file's syntax.") from e
    _log_includes(parsed.includes, search_paths)
  for binding in bindings:  # one at a time: an error names its binding, not "line 5" of all of them joined
    try:
      gin.parse_config(binding)
    except (SyntaxError, tokenize.TokenError) as e:
      raise ValueError(_binding_error(binding, e)) from None
    except ValueError as e:
      hint = _renamed_parameter(e, gin_registry.RENAMED_PARAMETERS)
      if hint is None:
        raise
      raise ValueError(f"the binding --gin.{binding}: {_gin_error(e)}\n{hint}") from None
  move_deprecated_bindings(gin_registry.DEPRECATED_CONFIGURABLES)
  user_set = changed_macros(snapshot)
  if check_unread:
    check_macros_are_read(user_set, also_read=CODE_READ_MACROS)
  return user_set


def move_deprecated_bindings(renamed: dict[str, str]) -> list[str]:
  """Binds what the parsed files and bindings set on a configurable's old name (`renamed`: old -> new) on its new
  name instead, logging a warning that names the new one; returns the old bindings moved.

  A gin file may name the old configurable in a reference and the new one in a binding, or the reverse (a user's
  file that sets `prompt_tuning.prefixes.PrefixSettings.mlp_width` after including gin/prompts/prefix.gin): once
  moved, every binding reaches the one configurable that is called, and none is read by nothing.
  """
  moved = []
  for (scope, selector), params in list(gin_internal._CONFIG.items()):
    new = renamed.get(selector)
    if new is None:
      continue
    for param, value in params.items():
      key = f"{scope}/{selector}.{param}" if scope else f"{selector}.{param}"
      log.warning("gin: %s is deprecated; binding %s.%s instead (rename it in your gin file).", key, new, param)
      with gin.unlock_config():
        gin.bind_parameter(f"{scope}/{new}.{param}" if scope else f"{new}.{param}", value)
      moved.append(key)
    del gin_internal._CONFIG[(scope, selector)]
  return moved


_GIN_PATH_FILTER = _GinPathNotFound()


def add_gin_search_paths(extra: tuple[str, ...] | list[str] = ()) -> None:
  """Makes gin search `extra` and then the project's gin and configs folders (for files and their `include`s),
  without its log line for each folder a file is not in. The current folder is searched last: a gin file there never
  shadows an `include` of the library's (gin itself searches it first)."""
  logging.getLogger().addFilter(_GIN_PATH_FILTER)
  for path in [*extra, *map(str, gin_search_paths())]:
    if path and path not in gin_internal._LOCATION_PREFIXES:
      gin.add_config_file_search_path(path)
  prefixes = gin_internal._LOCATION_PREFIXES
  if "" in prefixes:  # gin's own entry: the current folder (paths relative to it)
    prefixes.remove("")
    prefixes.append("")


def apply_code_read_macros() -> None:
  """What the command line reads itself: MIXTURE_OR_TASK_MODULE (imported, so its tasks register),
  USE_CACHED_TASKS (seqio's offline cache) and LOSS_NORMALIZING_FACTOR (checked)."""
  from prompt_tuning.data import sources  # TensorFlow's; imported when a command runs

  module = gin.query_parameter("%MIXTURE_OR_TASK_MODULE")
  if module:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      raise ModuleNotFoundError(
        f"MIXTURE_OR_TASK_MODULE={module!r} cannot be imported ({e}); put its folder on PYTHONPATH."
      ) from e
  sources.set_use_cached_tasks(bool(gin.query_parameter("%USE_CACHED_TASKS")))
  reference.check_loss_normalizing_factor(gin.query_parameter("%LOSS_NORMALIZING_FACTOR"))


def _resolve_or_refer(name: str, search_paths: list[str]) -> str:
  """`resolve_gin_file`, or for a gin file of the reference implementation (or t5x) the name of ours to use."""
  try:
    return resolve_gin_file(name, search_paths)
  except FileNotFoundError:
    ours = reference.reference_gin_file(name)
    if ours:
      raise FileNotFoundError(
        f"gin file {name!r} is the reference implementation's (or t5x's); here use --gin_file={ours} "
        "(docs/MIGRATING.md maps every reference file, flag and macro)."
      ) from None
    raise


def _log_includes(includes, search_paths: list[str]) -> None:
  """Logs where each (nested) include was read from, as gin resolves it (add_gin_search_paths: the search paths,
  then the current folder); a same-named file of the current folder that was not used is warned about."""
  library = [*[p for p in search_paths if p], *map(str, gin_search_paths())]
  for parsed in includes:
    name = parsed.filename
    found = [os.path.join(p, name) for p in [*library, ""] if os.path.isfile(os.path.join(p, name))]
    if found:
      log.info("gin include %s: %s", name, os.path.abspath(found[0]))
      if not os.path.isabs(name) and os.path.isfile(name) and os.path.abspath(found[0]) != os.path.abspath(name):
        log.warning("gin include %s: using %s, not ./%s of the current folder.", name, found[0], name)
    _log_includes(parsed.includes, search_paths)


def _binding_error(binding: str, error: SyntaxError | tokenize.TokenError) -> str:
  """What is wrong with a binding gin cannot parse; for an unquoted string (t5x users' commonest slip: the shell ate
  the quotes), the quoting that works."""
  name, _, value = (part.strip() for part in binding.partition("="))
  reason = str(getattr(error, "msg", None) or error.args[0] or error).strip().splitlines()[-1]
  text = f"the binding --gin.{name}={value} does not parse ({reason})."
  if value and value[0] not in "'\"[({%@" and not re.fullmatch(r"[-+.\d eE]+|True|False|None", value):
    text += (
      f" A string value needs quotes that reach gin, inside the shell's: --gin.{name}=\"'{value}'\" (the shell "
      "removes the outer pair)."
    )
  else:
    text += " Write a Python literal (quoted string, number, list, dict), a %MACRO or an @configurable reference."
  return text


def _renamed_parameter(error: Exception, renamed: Mapping[str, str]) -> str | None:
  """What sets a parameter gin refused as unknown now (`gin_registry.RENAMED_PARAMETERS`), else None."""
  match = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", str(error))
  new = match and renamed.get(f"{match.group(1).rpartition('.')[2]}.{match.group(2)}")
  return f"{match.group(1)}.{match.group(2)} is now {new}: set that instead." if new else None


def _gin_error(error: Exception) -> str:
  text = str(error).strip()
  return text if text else type(error).__name__


def _is_explicit_path(name: str) -> bool:
  return os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.startswith((".\\", "..\\"))


def resolve_gin_file(name: str, search_paths: list[str]) -> str:
  """Where the gin file `name` of the command line is read from.

  An explicit path (`./x.gin`, `../x.gin`, `/abs/x.gin`, `~/x.gin`) is used as written. Any other name is looked up
  in the project's library first, then in `search_paths`, then in the current folder, so a file in the current
  folder never silently replaces the project's file of the same name (a warning says it was not used).

  Raises:
    FileNotFoundError: the file is nowhere.
  """
  if _is_explicit_path(name):
    path = os.path.expanduser(name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"gin file {name!r} not found.")
    return os.path.abspath(path)
  folders = [*map(str, gin_search_paths()), *[p for p in search_paths if p]]
  for folder in folders:
    candidate = os.path.join(folder, name)
    if os.path.isfile(candidate):
      if os.path.isfile(name) and os.path.abspath(name) != os.path.abspath(candidate):
        log.warning(
          "gin file %s: using %s, not ./%s of the current folder (write ./%s for that one).",
          name,
          candidate,
          name,
          name,
        )
      return os.path.abspath(candidate)
  if os.path.isfile(name):
    return os.path.abspath(name)
  where = ", ".join(folders)
  raise FileNotFoundError(f"gin file {name!r} not found (searched {where} and the current folder).")


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
    for (scope, selector), bindings in gin_internal._CONFIG.items()
    if selector == MACRO_SELECTOR
  }


def assigned_macros() -> set[str]:
  return set(macro_snapshot())


def read_macros(also_read: Iterable[str] = ()) -> set[str]:
  """The macros a binding reads, directly or through other macros; `also_read` are read by the code itself."""
  macro_refs: dict[str, set[str]] = {}
  roots: set[str] = set(also_read)
  for (scope, selector), bindings in gin_internal._CONFIG.items():
    names = {name for ref in gin_internal.iterate_references(bindings) if (name := _macro_name(ref))}
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
  if name in reference.REFERENCE_NAMES:
    return f"{name} (a t5x / reference setting) is not read here; use {reference.REFERENCE_NAMES[name]}"
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
  from prompt_tuning import gin_registry  # imported by `configure_gin` before any run

  unread = []
  for binding in bindings:
    key = binding_key(binding)
    if key is None:
      continue
    scoped_selector, _, param = key.rpartition(".")
    scope, _, selector = scoped_selector.rpartition("/")
    configurable = gin_internal._REGISTRY.get_match(selector)
    if configurable is None:
      continue
    selector = gin_registry.DEPRECATED_CONFIGURABLES.get(configurable.selector, configurable.selector)
    if scope:
      read = param in gin_internal._OPERATIVE_CONFIG.get((scope, selector), {})
    else:  # an unscoped binding applies in every scope: a macro's too (`%X = @f()` calls f in scope X)
      read = any(
        param in values for (_, called), values in gin_internal._OPERATIVE_CONFIG.items() if called == selector
      )
    if not read:
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
  print(line, file=sys.stderr, flush=True)
