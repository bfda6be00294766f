"""Who may change the library and who may call the model: bearer tokens the operator sets.

- The admin token (`PROMPT_TUNING_ADMIN_TOKEN` in the server's environment, or `--admin_token_file`) is needed by
  `PUT` and `DELETE /v1/prompts/{id}`. Without one the library is read-only: changes answer 403, naming how to
  enable them.
- The API token (`PROMPT_TUNING_API_TOKEN`, or `--api_token_file`), optional, is needed by generate, score and the
  library's GETs (the admin token is accepted too); without it they answer 401. Without an API token they are open.

A request sends `Authorization: Bearer <token>`. Tokens are compared in constant time (`hmac.compare_digest`), and
are never logged, printed or exported in `/metrics` (`Tokens` hides them from `repr`).
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

ADMIN_TOKEN_ENV = "PROMPT_TUNING_ADMIN_TOKEN"
API_TOKEN_ENV = "PROMPT_TUNING_API_TOKEN"


class AccessError(ValueError):
  """A token setting the server cannot use; the message says which and what to do (never the token)."""


@dataclasses.dataclass(frozen=True)
class Tokens:
  """The operator's tokens (None: not configured)."""

  admin: str | None = dataclasses.field(default=None, repr=False)
  api: str | None = dataclasses.field(default=None, repr=False)


def _read_token(env_name: str, flag: str, file: str | None, environ: Mapping[str, str]) -> str | None:
  from_env = environ.get(env_name)
  if from_env is not None and file:
    raise AccessError(f"both {env_name} and {flag} give a token; give one of them.")
  if file:
    try:
      token = Path(file).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
      raise AccessError(f"cannot read {flag} {file}: {e}; give a readable text file holding the token.") from e
    where = f"{flag} {file}"
  elif from_env is not None:
    token, where = from_env.strip(), env_name
  else:
    return None
  if not token:
    raise AccessError(f"{where} is empty; give a token (e.g. from `openssl rand -hex 32`), or leave it unset.")
  if any(c.isspace() for c in token) or not token.isprintable():
    raise AccessError(f"the token of {where} holds spaces or control characters; a bearer token is one word.")
  return token


def load_tokens(
  admin_token_file: str | None = None, api_token_file: str | None = None, environ: Mapping[str, str] | None = None
) -> Tokens:
  """The tokens from the environment or the token files.

  Raises:
    AccessError: a token given twice (environment and file), an unreadable or empty file, or an empty variable.
  """
  environ = os.environ if environ is None else environ
  return Tokens(
    admin=_read_token(ADMIN_TOKEN_ENV, "--admin_token_file", admin_token_file, environ),
    api=_read_token(API_TOKEN_ENV, "--api_token_file", api_token_file, environ),
  )


def token_matches(given: str | None, *expected: str | None) -> bool:
  """Whether `given` equals one of the configured tokens, compared in constant time."""
  given_bytes = (given or "").encode()
  matched = False
  for token in expected:
    if token is not None:
      matched |= hmac.compare_digest(given_bytes, token.encode())
  return matched and given is not None
