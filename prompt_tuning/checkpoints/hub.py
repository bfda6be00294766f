"""Hugging Face Hub ids (`google/flan-t5-xl`, `google/t5-base-lm-adapt@<revision>`) as checkpoint paths.

    load_pretrained("google/flan-t5-xl")              # the main branch
    load_pretrained("google/t5-base-lm-adapt@a1b2c3")  # a branch, tag or commit after '@'

An id is resolved to a local snapshot folder by `huggingface_hub.snapshot_download`,
with its cache (`HF_HUB_CACHE`, or `HF_HOME/hub`, else ~/.cache/huggingface/hub)
and its offline mode (`HF_HUB_OFFLINE=1`: only the cache is read, nothing is
downloaded). Only `config.json` and one weight format are fetched: the first of
safetensors (sharded or not), `flax_model.msgpack`, `pytorch_model.bin` (sharded
or not) that the repository holds, so a repository carrying every format is not
downloaded three times. Both environment variables are read at each call.
"""

from __future__ import annotations

import os
import re

from prompt_tuning.checkpoints import huggingface
from prompt_tuning.checkpoints.errors import CheckpointError

# org/name, then an optional @revision (a branch, tag or commit; branches may hold '/').
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# The weight files of each format, in `huggingface.read_weights`' order of preference.
WEIGHT_PATTERNS = (
  (huggingface.SAFETENSORS_INDEX, ["model*.safetensors", huggingface.SAFETENSORS_INDEX]),
  (huggingface.SAFETENSORS_FILE, [huggingface.SAFETENSORS_FILE]),
  (huggingface.FLAX_FILE, [huggingface.FLAX_FILE]),
  (huggingface.TORCH_INDEX, ["pytorch_model*.bin", huggingface.TORCH_INDEX]),
  (huggingface.TORCH_FILE, [huggingface.TORCH_FILE]),
)
_TRUE = ("1", "on", "yes", "true")


def parse_hub_id(path: str) -> tuple[str, str | None] | None:
  """`"org/name@rev"` -> ("org/name", "rev"); None when `path` is not shaped like a hub id or exists locally."""
  if os.path.exists(os.path.expanduser(path)) or path.startswith((".", "/", "~")):
    return None
  match = _HUB_ID.match(path)
  return (match["repo"], match["revision"]) if match else None


def is_offline() -> bool:
  """Whether `HF_HUB_OFFLINE` asks for the cache only (read now, not when huggingface_hub was imported)."""
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_dir() -> str | None:
  """The hub cache in force: `HF_HUB_CACHE`, else `HF_HOME/hub`, else None (huggingface_hub's default)."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return None


def weight_patterns(repo_files: list[str]) -> list[str]:
  """The files to fetch from a repository listing: `config.json` and the preferred weight format's files.

  Raises:
    CheckpointError: when the repository has no config.json or no weight file this project reads.
  """
  files = set(repo_files)
  if huggingface.CONFIG_FILE not in files:
    raise CheckpointError(f"The repository has no {huggingface.CONFIG_FILE}; it is not a Hugging Face T5 model.")
  for marker, patterns in WEIGHT_PATTERNS:
    if marker in files:
      return [huggingface.CONFIG_FILE, *patterns]
  raise CheckpointError(
    f"The repository holds none of {', '.join(huggingface.WEIGHT_FILES)} (found: {', '.join(sorted(files)[:15])})."
  )


def _download(repo_id: str, revision: str | None) -> str:
  import huggingface_hub

  if is_offline():
    # The cache's snapshot of `revision`, whatever it holds; huggingface_hub raises if there is none.
    return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir(), local_files_only=True)
  files = huggingface_hub.HfApi().list_repo_files(repo_id, revision=revision)
  return huggingface_hub.snapshot_download(
    repo_id, revision=revision, cache_dir=cache_dir(), allow_patterns=weight_patterns(files)
  )


def resolve(repo_id: str, revision: str | None = None) -> str:
  """The local snapshot folder of a hub model (downloaded into the cache unless it is there or offline).

  Raises:
    CheckpointError: when the repository or revision does not exist, is gated,
      cannot be reached, or (offline) is not in the cache; the message says
      which and what to do.
  """
  from huggingface_hub import errors

  shown = f"{repo_id}@{revision}" if revision else repo_id
  try:
    return _download(repo_id, revision)
  except errors.RevisionNotFoundError as e:
    raise CheckpointError(
      f"Hugging Face model {repo_id} has no revision {revision!r}: name a branch, tag or commit."
    ) from e
  except errors.GatedRepoError as e:
    raise CheckpointError(
      f"Hugging Face model {repo_id} is gated: accept its terms on huggingface.co and log in (`hf auth login` or "
      f"HF_TOKEN). ({e})"
    ) from e
  except errors.RepositoryNotFoundError as e:
    raise CheckpointError(
      f"No Hugging Face model {repo_id!r} (nor a local folder of that name): check the id, or log in for a private "
      "repository."
    ) from e
  except errors.LocalEntryNotFoundError as e:
    where = cache_dir() or "the default cache (~/.cache/huggingface/hub)"
    raise CheckpointError(
      f"Hugging Face model {shown} is not in the hub cache at {where}, and HF_HUB_OFFLINE=1 forbids downloading "
      "it: run once with network access (unset HF_HUB_OFFLINE), or set HF_HUB_CACHE to the cache that holds it."
    ) from e
  except (errors.HfHubHTTPError, OSError) as e:
    raise CheckpointError(
      f"Cannot download Hugging Face model {shown}: {e}\nCheck the network, or set HF_HUB_OFFLINE=1 to use the cache."
    ) from e
