"""Run folders (MODEL_DIR, sweep folders) on a local disk or on Google Cloud Storage: the one file-system layer.

    folder = storage.path("gs://bucket/run")      # an etils epath.Path; a local folder stays a pathlib.Path
    storage.write_bytes(folder / "metrics.jsonl", data)   # all at once: a reader never sees half a file
    storage.check_bucket("gs://bucket/run")       # refused up front when the bucket is missing or read-only

Why etils' epath (with fsspec and gcsfs behind it for gs://): orbax writes its checkpoints through epath already,
so one path type serves the checkpoints and every other file a run writes. Of epath's two gs:// backends this
module picks fsspec/gcsfs (EPATH_USE_TF=false, unless the user set EPATH_USE_TF): tf.io.gfile cannot be pointed at
another endpoint (no GCS emulator, no private endpoint), while gcsfs honours `STORAGE_EMULATOR_HOST` and its
retries are bounded (6 tries, about 30 s of back-off), so a bucket that goes away ends in an error, not a hang.
`PROMPT_TUNING_GCS_TRIES=N` sets how many times gcsfs tries each request (N from 1 to 6; N tries wait about
2**(N-1) - 1 seconds in all): fewer, where a lost bucket should end a run sooner than a brief outage is waited out.
The arrays of a checkpoint go through tensorstore's gcs driver (orbax), pointed at an emulator by
`TENSORSTORE_GCS_HTTP_URL`; its default retry policy (32 tries, up to 32 s apart: a quarter of an hour) is bounded
here to `GCS_RETRIES` tries, for the same reason.

Credentials are Google's application default credentials (`gcloud auth application-default login`,
GOOGLE_APPLICATION_CREDENTIALS, or the metadata server on a TPU VM). A local path keeps pathlib and the plain
file-system calls (atomic renames, O_NOFOLLOW locks) it always had.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

GCS_SCHEME = "gs://"
# Tries of a tensorstore request (a checkpoint's arrays) before it fails, 0.5 s to 4 s apart: about 15 s in all.
GCS_RETRIES = 5
# The variable that sets how many times gcsfs tries a request (see the module docstring), and gcsfs's own number.
GCS_TRIES_ENV, GCSFS_TRIES = "PROMPT_TUNING_GCS_TRIES", 6
# How many times a bucket is tried before a run is refused, and how long between tries.
PROBE_TRIES, PROBE_DELAY_S = 3, 1.0

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
  """A run folder that cannot be reached or written (a missing bucket, no access, the network gone)."""


# The error that ended a run's access to its gs:// folder, once requests were retried and gave up: after it the run
# stops, and what is left to tidy (its lock, TensorBoard's last events, a half-written step) is not tried again:
# each would wait out its own retries, and a half-written step is never taken as finished (commit_success.txt).
_lost: Exception | None = None


def mark_lost(error: Exception | None) -> None:
  global _lost
  _lost = error


def lost() -> Exception | None:
  """The network error that ended this process's access to Cloud Storage, or None."""
  return _lost


def is_unreachable(error: BaseException) -> bool:
  """Whether `error` (or what caused it) says the storage server could not be reached or stopped answering, after
  the retries of gcsfs or tensorstore, rather than refused a request."""
  import asyncio

  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
      return True
    name = type(error).__name__
    if type(error).__module__.startswith("aiohttp") and ("Connect" in name or "Disconnected" in name):
      return True
    text = str(error)
    if "UNAVAILABLE" in text or "DEADLINE_EXCEEDED" in text or "Connect call failed" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is an object-store URL (gs://...) rather than a local (or mounted) folder."""
  return "://" in os.fspath(path)


def is_gcs(path: str | os.PathLike) -> bool:
  return os.fspath(path).startswith(GCS_SCHEME)


def check_scheme(path: str | os.PathLike, setting: str = "MODEL_DIR") -> None:
  """Refuses URLs other than gs:// (Path("s3://b/run") would otherwise be the local folder "s3:/b/run").

  Raises:
    StorageError: naming the setting and what is supported.
  """
  if is_remote(path) and not is_gcs(path):
    raise StorageError(
      f"{setting} {os.fspath(path)} is a URL this project does not write to: use a local (or mounted) folder, or "
      "Google Cloud Storage (gs://bucket/folder)."
    )


_configured = False


def _configure() -> None:
  """Points epath's gs:// backend at gcsfs (see the module docstring), once, before anything reads a gs:// path."""
  global _configured
  if _configured:
    return
  _configured = True
  import fsspec

  # No listings cache: other processes (the other hosts of a pod, a resumed run, `eval` beside `train`) add and
  # delete checkpoints; a listing remembered from before would show steps that are gone or hide new ones.
  for protocol in ("gcs", "gs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
  if "EPATH_USE_TF" not in os.environ:
    os.environ["EPATH_USE_TF"] = "false"
    from etils.epath import gpath

    # epath caches its backend choice the first time any path asks; forget a choice made before this setting.
    if hasattr(gpath._is_tf_installed, "cache_clear"):
      gpath._is_tf_installed.cache_clear()
  # Without Google credentials (an emulator, a public bucket) gcsfs warns at every file that it cannot ask which
  # kind of bucket this is, and goes on with the standard kind: true, and not the user's concern.
  # gcsfs also logs each request that runs out of retries with its traceback, before raising it: the run reports it
  # once, as a StorageError saying what to do.
  logging.getLogger("gcsfs").addFilter(_quiet_gcsfs)
  _bound_tensorstore_retries()
  _set_gcsfs_tries(os.environ.get(GCS_TRIES_ENV))


def _quiet_gcsfs(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  quiet = ("Could not determine bucket type", "out of retries", "non-retriable", "moveTo API")
  return not any(text in message for text in quiet)


def _set_gcsfs_tries(setting: str | None) -> None:
  """Applies PROMPT_TUNING_GCS_TRIES to gcsfs's requests (unset: gcsfs's own 6 tries).

  gcsfs fixes its number of tries when its class is defined (`retry_request(retries=6)` around
  `GCSFileSystem._request`) and offers no setting; the request is wrapped again here, with the same retry function
  and the number asked for. A gcsfs whose request is no longer wrapped that way fails loudly rather than ignoring the
  setting.

  Raises:
    StorageError: a setting that is not a whole number from 1 to GCSFS_TRIES.
  """
  if setting is None:
    return
  if not setting.strip().isdigit() or not 1 <= int(setting) <= GCSFS_TRIES:
    raise StorageError(f"{GCS_TRIES_ENV}={setting!r}: give a whole number of tries from 1 to {GCSFS_TRIES}.")
  from gcsfs import core, retry

  request = getattr(core.GCSFileSystem._request, "__wrapped__", None)
  if request is None:
    raise RuntimeError(
      f"gcsfs's GCSFileSystem._request is no longer wrapped by retry_request: {GCS_TRIES_ENV} "
      "needs updating in prompt_tuning.storage."
    )
  core.GCSFileSystem._request = retry.retry_request(retries=int(setting))(request)


def _bound_tensorstore_retries() -> None:
  """Bounds the retries of orbax's tensorstore requests to gs://.

  Orbax builds its tensorstore context from module-level defaults and offers no setting for the retry policy; its
  default (tensorstore's) retries a lost bucket for about a quarter of an hour, which a user sees as a hang. The
  defaults are extended here; an orbax that no longer has them fails this check loudly rather than hanging later.
  """
  from orbax.checkpoint._src.serialization import tensorstore_utils

  policy = {"max_retries": GCS_RETRIES, "initial_delay": "0.5s", "max_delay": "4s"}
  for name in ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT"):
    context = getattr(tensorstore_utils, name, None)
    if not isinstance(context, dict):
      raise RuntimeError(
        f"orbax's tensorstore_utils.{name} is gone: the retry bound of prompt_tuning.storage needs updating."
      )
    context.setdefault("gcs_request_retries", policy)


def path(folder: str | os.PathLike) -> Any:
  """The path object of a run folder or file: pathlib.Path for a local path, epath.Path for gs://.

  Raises:
    StorageError: a URL of another scheme.
  """
  if isinstance(folder, Path) or not is_remote(folder):
    return Path(folder)
  check_scheme(folder)
  _configure()
  from etils import epath

  return epath.Path(os.fspath(folder))


def is_finished_step(folder: Any) -> bool:
  """Whether a checkpoint step folder was finished: a local one is renamed into place when complete (orbax), a
  gs:// one (written in place: no rename on Cloud Storage) holds orbax's commit_success.txt once complete."""
  if is_remote(folder):
    return (folder / "commit_success.txt").exists()
  return folder.is_dir()


def write_bytes(file: Any, data: bytes) -> None:
  """Writes a whole file so that a reader sees the old contents or the new, never a part: a local file through a
  temporary file and a rename, a gs:// object in one upload (an object appears only when complete)."""
  file = path(file) if isinstance(file, str) else file
  if is_remote(file):
    file.write_bytes(data)
    return
  file.parent.mkdir(parents=True, exist_ok=True)
  tmp = file.with_name(file.name + ".tmp")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, file)
  finally:
    tmp.unlink(missing_ok=True)


def append_text(file: Any, text: str) -> None:
  """Appends to a text file. An object store has no append: the object is read and written again whole (run
  files such as metrics.jsonl stay small: a line every log_every steps)."""
  file = path(file) if isinstance(file, str) else file
  if not is_remote(file):
    with open(file, "a") as f:
      f.write(text)
    return
  old = file.read_bytes() if file.exists() else b""
  file.write_bytes(old + text.encode())


def rmtree(folder: Any) -> None:
  """Removes a folder and everything in it (a missing one is nothing to do)."""
  if is_remote(folder):
    folder = path(folder) if isinstance(folder, str) else folder
    if folder.exists():
      folder.rmtree(missing_ok=True)
    return
  shutil.rmtree(folder, ignore_errors=True)


def move(source: Any, target: Any) -> None:
  """Moves a folder (on gs://: copied object by object, then removed; gs:// has no rename). gcsfs's `mv` tries
  Cloud Storage's moveTo first, one object at a time; stores without it (emulators, older buckets) answer each try
  with an error after a wait, so the copy is asked for directly."""
  if not is_remote(source):
    shutil.move(os.fspath(source), os.fspath(target))
    return
  fs = _fs()
  fs.copy(os.fspath(source), os.fspath(target), recursive=True)
  fs.rm(os.fspath(source), recursive=True)


def upload_folder(local: str | os.PathLike, target: Any) -> None:
  """Copies every file under the local folder `local` into the gs:// folder `target` (over what is there)."""
  target = path(target) if isinstance(target, str) else target
  for file in sorted(Path(local).rglob("*")):
    if file.is_file():
      (target / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())


def download(source: Any, local: str | os.PathLike, recursive: bool = True) -> Path:
  """Copies the gs:// file or folder `source` to the local path `local` (a folder's files keep their place under
  it; `recursive=False`: only the files directly in it); returns `local`. For the readers that need a local file
  (numpy's and safetensors' loaders, a subprocess): what they read is copied down first."""
  source = os.fspath(source).rstrip("/")
  local = Path(local)
  fs = _fs()
  if fs.isfile(source):
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(fs.cat_file(source))
    return local
  names = fs.find(source, maxdepth=None if recursive else 1)
  prefix = source[len(GCS_SCHEME) :] + "/"
  for name in names:
    relative = name[len(prefix) :] if name.startswith(prefix) else None
    if not relative or relative.endswith("/"):
      continue  # the folder's own placeholder object, if a tool made one
    if ".." in Path(relative).parts or relative.startswith("/"):
      raise StorageError(f"{GCS_SCHEME}{name} climbs out of {source} ('..'): it is not copied. Remove that object.")
    target = local / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(fs.cat_file(GCS_SCHEME + name))
  local.mkdir(parents=True, exist_ok=True)
  return local


def _fs():
  _configure()
  from etils.epath import backend

  return backend.fsspec_backend.fs(GCS_SCHEME)


def check_bucket(folder: str | os.PathLike, setting: str = "MODEL_DIR") -> None:
  """Refuses a gs:// run folder whose bucket does not exist or cannot be written, before anything heavy loads: a
  small object is written under the folder and deleted again (tried, not inferred from permissions).

  Raises:
    StorageError: what is wrong and what to do.
  """
  if not is_remote(folder):
    return
  check_scheme(folder, setting)
  bucket = os.fspath(folder)[len(GCS_SCHEME) :].split("/", 1)[0]
  if not bucket:
    raise StorageError(f"{setting} {os.fspath(folder)} names no bucket: write gs://BUCKET/folder.")
  probe = path(folder) / f".write-probe-{os.getpid()}-{time.time_ns()}"
  fs = _fs()
  error: Exception | None = None
  for attempt in range(PROBE_TRIES):
    try:
      if not fs.exists(bucket):
        raise StorageError(
          f"{setting} {os.fspath(folder)}: the bucket gs://{bucket} does not exist (or these credentials cannot see "
          f"it). Create it (gcloud storage buckets create gs://{bucket}) or fix the name."
        )
      probe.write_bytes(b"")
      probe.unlink(missing_ok=True)
      return
    except StorageError:
      raise
    except Exception as e:  # noqa: BLE001 - gcsfs, aiohttp and google-auth raise many types for one refusal
      error = e
      if _is_permanent(e):
        break
      if attempt + 1 < PROBE_TRIES:
        time.sleep(PROBE_DELAY_S)
  raise StorageError(
    f"{setting} {os.fspath(folder)} cannot be written ({type(error).__name__}: {error}). Check the bucket name, "
    "your access (gcloud auth application-default login; the account needs roles/storage.objectAdmin on the "
    "bucket) and the network, or set another folder."
  ) from error


def _is_permanent(error: Exception) -> bool:
  """A refusal that a retry will not change (no access, no such bucket), as opposed to a network error."""
  code = getattr(error, "code", None)
  return isinstance(error, (PermissionError, FileNotFoundError)) or code in (401, 403, 404)


def describe_failure(folder: str | os.PathLike, error: Exception) -> str:
  """The line a user reads when a gs:// folder stopped answering in the middle of a run."""
  return (
    f"{os.fspath(folder)} stopped answering ({type(error).__name__}: {error}); the requests were retried and gave up. "
    "Check the network and your access to the bucket, then run the same command again: it resumes from the last "
    "finished checkpoint."
  )
