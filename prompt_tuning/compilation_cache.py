"""JAX's persistent compilation cache, on by default for every command.

A second run of the same config (a resumed run, an eval after a train, a sweep's
next seed) reads the compiled train and eval steps from disk instead of
recompiling them. Where the cache lives:

- `$PROMPT_TUNING_COMPILATION_CACHE`, if set: a folder, or `off` (also `0`,
  `false`, `none`, or empty) to switch the cache off;
- else `$XDG_CACHE_HOME/prompt_tuning/jax` (`~/.cache/prompt_tuning/jax`): a user
  cache folder rather than MODEL_DIR's parent, which may be a bucket or a folder
  shared by many users' runs.

Every compiled program is cached, however fast it compiled (JAX's default
skips programs that compile in under a second, which on a CPU is most of a
small model's steps). JAX keys each entry on the program, the devices and the
compiler's version, so a changed config, mesh or JAX release compiles anew.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

ENV = "PROMPT_TUNING_COMPILATION_CACHE"
OFF = frozenset({"", "0", "off", "false", "none", "no"})

log = logging.getLogger(__name__)


def cache_dir(environ: dict[str, str] | None = None) -> Path | None:
  """The cache folder this process uses, or None when the cache is switched off."""
  environ = os.environ if environ is None else environ
  if ENV in environ:
    value = environ[ENV].strip()
    return None if value.lower() in OFF else Path(value).expanduser()
  base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
  return Path(base) / "prompt_tuning" / "jax"


def enable(folder: str | os.PathLike | None = None) -> Path | None:
  """Points JAX's persistent compilation cache at `folder` (default: `cache_dir()`); returns it.

  Call before the first compilation: JAX reads these settings once per process.
  A folder that cannot be created leaves the cache off with a warning; it never
  stops a run.
  """
  import jax

  path = Path(folder).expanduser() if folder is not None else cache_dir()
  if path is None:
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    log.warning("compilation cache off: cannot create %s (%s); set %s to another folder.", path, error, ENV)
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  log.info("compilation cache: %s", path)
  return path
