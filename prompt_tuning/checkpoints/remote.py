"""Checkpoint paths on Google Cloud Storage (`gs://bucket/...`), read through tensorstore's gcs driver.

One storage layer for local folders and buckets, so the T5X reader works on both:

    is_gcs("gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000")   # True
    kvstore_spec("gs://bucket/ckpt/target.encoder.x")   # {"driver": "gcs", "bucket": "bucket", "path": "ckpt/..."}
    read_bytes("gs://bucket/ckpt/checkpoint")            # the msgpack file
    child_names("gs://bucket/ckpt")                      # {"checkpoint", "target.encoder.x", ...}

Credentials are tensorstore's: Google application default credentials
(`GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth application-default login`,
or the metadata server on GCP); public buckets such as `gs://t5-data` also
read anonymously. `TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT` sends every
request to a GCS emulator instead (the tests do this; no credentials needed).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prompt_tuning.checkpoints.errors import CheckpointError

GCS_SCHEME = "gs://"


def is_gcs(path: str | os.PathLike) -> bool:
  """Whether `path` names an object or folder in a Google Cloud Storage bucket."""
  return os.fspath(path).startswith(GCS_SCHEME)


def split_gcs(path: str) -> tuple[str, str]:
  """`gs://bucket/a/b/` -> ("bucket", "a/b"); the key has no leading or trailing slash.

  Raises:
    CheckpointError: when the path names no bucket.
  """
  bucket, _, key = path[len(GCS_SCHEME) :].partition("/")
  if not bucket:
    raise CheckpointError(f"{path!r} names no bucket: write gs://BUCKET/path/to/checkpoint_N.")
  return bucket, key.strip("/")


def join(folder: str, name: str) -> str:
  """`folder/name` for local and gs:// paths alike."""
  return f"{folder.rstrip('/')}/{name}" if is_gcs(folder) else os.path.join(folder, name)


def parent(path: str) -> str:
  """The folder holding `path` (gs:// or local)."""
  if is_gcs(path):
    bucket, key = split_gcs(path)
    return f"{GCS_SCHEME}{bucket}/{key.rsplit('/', 1)[0] if '/' in key else ''}".rstrip("/")
  return os.path.dirname(path)


def kvstore_spec(path: str) -> dict[str, Any]:
  """The tensorstore kvstore spec of a folder (a zarr array, a checkpoint): `file` or `gcs`."""
  if not is_gcs(path):
    return {"driver": "file", "path": path}
  bucket, key = split_gcs(path)
  return {"driver": "gcs", "bucket": bucket, "path": f"{key}/" if key else ""}


@functools.cache
def _bucket(bucket: str):
  import tensorstore as ts  # Imported here: a heavy import only T5X checkpoints need.

  return ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result()


def _gcs_error(path: str, error: Exception) -> CheckpointError:
  return CheckpointError(
    f"Cannot read {path}: {error}\nCheck the path and your access to the bucket (Google application default "
    "credentials: GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`)."
  )


def read_bytes(path: str) -> bytes:
  """The contents of a file (gs:// or local).

  Raises:
    CheckpointError: when it does not exist or cannot be read.
  """
  if not is_gcs(path):
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      raise CheckpointError(f"Cannot read {path}: {e}") from e
  bucket, key = split_gcs(path)
  try:
    result = _bucket(bucket).read(key).result()
  except Exception as e:  # tensorstore raises ValueError subclasses for HTTP and auth failures.
    raise _gcs_error(path, e) from e
  if result.state != "value":
    raise CheckpointError(f"Cannot read {path}: no such object in the bucket.")
  return bytes(result.value)


def _list(path: str, key_range) -> list[str]:
  bucket, _ = split_gcs(path)
  try:
    return [k.decode() for k in _bucket(bucket).list(key_range).result()]
  except Exception as e:
    raise _gcs_error(path, e) from e


def _keys_under(path: str) -> list[str]:
  """Every object key under the folder `path` (recursively), relative to it."""
  import tensorstore as ts

  _, key = split_gcs(path)
  prefix = f"{key}/" if key else ""
  # The keys in [prefix, prefix with its last byte + 1) are exactly those that start with prefix.
  upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
  key_range = ts.KvStore.KeyRange(inclusive_min=prefix, exclusive_max=upper) if upper else ts.KvStore.KeyRange()
  # Filtered again here: not every server (e.g. emulators) honours the range's end.
  return [k[len(prefix) :] for k in _list(path, key_range) if k.startswith(prefix)]


def child_names(path: str) -> set[str]:
  """The names directly under the folder `path` (files and sub-folders), empty when there is none."""
  if not is_gcs(path):
    return set(os.listdir(path)) if os.path.isdir(path) else set()
  return {key.split("/", 1)[0] for key in _keys_under(path)}


def child_folders(path: str) -> set[str]:
  """The names of the sub-folders directly under the folder `path`."""
  if not is_gcs(path):
    return {name for name in child_names(path) if os.path.isdir(os.path.join(path, name))}
  return {key.split("/", 1)[0] for key in _keys_under(path) if "/" in key}


def is_file(path: str) -> bool:
  """Whether `path` is a file (a gs:// object), not a folder."""
  if not is_gcs(path):
    return os.path.isfile(path)
  import tensorstore as ts

  _, key = split_gcs(path)
  exact = ts.KvStore.KeyRange(inclusive_min=key, exclusive_max=key + "\x00")
  return bool(key) and key in _list(path, exact)


def is_dir(path: str) -> bool:
  """Whether `path` is a folder holding anything (a gs:// prefix with objects under it)."""
  return bool(child_names(path)) if is_gcs(path) else os.path.isdir(path)
