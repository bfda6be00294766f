"""The HTTP API (FastAPI): generation, scoring, the prompt library, health and metrics.

    POST   /v1/generate        {"text" | "token_ids", "prompt_id"?, "method"?, "max_decode_length"?, ...}
    POST   /v1/score           {"text" | "token_ids", "candidates", "prompt_ids"?, "ensemble"?,
                                "class_label_softmax"?}
    GET    /v1/prompts         the library's ids
    GET    /v1/prompts/{id}    one entry's method, version, shapes
    PUT    /v1/prompts/{id}    {"method": "prompt", "arrays": {"prompt": [[...]]}}
                               or {"source": "<a name in --prompts_dir>"}
    DELETE /v1/prompts/{id}
    GET    /healthz, /metrics (Prometheus), /docs (OpenAPI)

Access (`prompt_tuning.serve.access`): PUT and DELETE need `Authorization: Bearer <admin token>` (401 without it or
with another token; 403 when the server has no admin token or runs with --read_only: its library cannot change);
with an API token configured, generate, score and the library's GETs need it (or the admin token), 401 without.
A change is written to the library folder before it is answered (`prompt_tuning.serve.library_files`).

Errors: an empty input (text of only whitespace, or token ids of only EOS) 400; unknown prompt 404; a prompt of
the wrong width, with NaN, or of a method the backbone cannot take 400 (the message says which); an input longer
than the server's maximum 413 (with the limit); malformed JSON 422; a library
over its byte cap 507; a request the model could not compute (non-finite
outputs under its prompt, named in the message) 500, the others in its batch
unaffected; a request arriving while the server drains after SIGTERM 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from prompt_tuning.serve.access import ADMIN_TOKEN_ENV, API_TOKEN_ENV, Tokens, token_matches
from prompt_tuning.serve.batcher import Batcher, GenerateJob, ScoreJob, ShuttingDown
from prompt_tuning.serve.engine import Engine, EngineError
from prompt_tuning.serve.metrics import ServeMetrics
from prompt_tuning.serve.store import DeviceCache, PromptError, PromptLibrary, check_id, read_entry_file

EOS_ID = 1


class GenerateBody(BaseModel):
  text: str | None = Field(None, description="input text (tokenized with the backbone's vocabulary, EOS appended)")
  token_ids: list[int] | None = Field(None, description="input token ids, as the encoder sees them (EOS included)")
  prompt_id: str | None = Field(None, description="a library entry; none: the frozen model")
  method: Literal["greedy", "beam", "sample"] = "greedy"
  max_decode_length: int | None = Field(
    None, ge=1, description="decoded positions, EOS included (default: the maximum)"
  )
  num_beams: int = Field(4, ge=1)
  temperature: float = Field(1.0, ge=0.0)
  top_k: int = Field(0, ge=0)
  top_p: float = Field(1.0, gt=0.0, le=1.0)


class ScoreBody(BaseModel):
  text: str | None = None
  token_ids: list[int] | None = None
  candidates: list[str] = Field(..., min_length=1, description="the answers to rank, e.g. the class labels")
  prompt_ids: list[str | None] = Field(default_factory=lambda: [None], description="one entry, or an ensemble")
  ensemble: Literal["mean", "vote"] = Field("mean", description="mean log-probability, or majority vote")
  class_label_softmax: bool = Field(
    False,
    description="normalize each softmax over the candidates' tokens and EOS only, as `infer` score mode does "
    "with RunConfig.class_label_softmax (the candidates being the task's class labels)",
  )


class PromptBody(BaseModel):
  method: str | None = Field(
    None, description="'prompt', 'prefix', 'ia3' or 'per_layer_prompt' (with arrays; prompt_tuning.serve.store)"
  )
  arrays: dict[str, Any] | None = Field(None, description="named nested lists, e.g. {'prompt': [[...], ...]}")
  source: str | None = Field(None, description="a file or folder name inside --prompts_dir, read by the server")


@dataclasses.dataclass
class Server:
  engine: Engine
  library: PromptLibrary
  cache: DeviceCache
  batcher: Batcher
  metrics: ServeMetrics
  vocabulary: Any
  prompts_dir: Path | None = None
  tokens: Tokens = Tokens()
  changes_refused: str | None = None  # why the library cannot change (the 403's message); None: it can
  draining: Callable[[], bool] = lambda: False  # true once SIGTERM came: new requests are refused with 503


_ADMIN_SCHEME = HTTPBearer(
  scheme_name="admin token",
  description=f"Needed by PUT and DELETE /v1/prompts/{{id}}: the token the operator set in {ADMIN_TOKEN_ENV} or "
  "--admin_token_file. Without one the server's library is read-only.",
  auto_error=False,
)
_API_SCHEME = HTTPBearer(
  scheme_name="API token",
  description=f"Needed by generate, score and the library's GETs when the operator set {API_TOKEN_ENV} or "
  "--api_token_file (the admin token is accepted too); open otherwise.",
  auto_error=False,
)
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _input_tokens(server: Server, text: str | None, token_ids: list[int] | None) -> np.ndarray:
  if (text is None) == (token_ids is None):
    raise HTTPException(400, "give exactly one of 'text' and 'token_ids'.")
  if text is not None:
    if not text.strip():
      raise HTTPException(
        400, f"the input text is {'empty' if not text else 'only whitespace'}; send the text to read."
      )
    ids = list(server.vocabulary.encode(text)) + [EOS_ID]
  else:
    ids = list(token_ids)
    vocab = server.engine.config.vocab_size
    bad = [t for t in ids if not 0 < t < vocab]
    if not ids or bad:
      raise HTTPException(400, f"token_ids must be 1..{vocab - 1} (0 is padding); got {bad[:5] or 'none'}.")
  if all(t == EOS_ID for t in ids):
    raise HTTPException(
      400, f"the input is empty: its tokens are only EOS ({EOS_ID}); send the tokens of the text to read, then EOS."
    )
  limit = server.engine.shapes.max_input_length
  if len(ids) > limit:
    raise HTTPException(413, f"the input has {len(ids)} tokens (EOS included); this server takes at most {limit}.")
  return np.asarray(ids, np.int32)


def _entry(server: Server, prompt_id: str | None):
  return None if prompt_id is None else server.library.get(prompt_id)


def _decode(server: Server, ids: list[int]) -> str:
  return server.vocabulary.decode([t for t in ids if t > 0 and t != EOS_ID])


def _update_library_metrics(server: Server) -> None:
  server.metrics.library_prompts.set(len(server.library))
  server.metrics.library_bytes.set(server.library.nbytes)
  server.metrics.device_cache_bytes.set(server.cache.nbytes)


async def _submit(server: Server, job) -> dict[str, Any]:
  server.metrics.in_flight.inc()
  try:
    return await asyncio.wrap_future(server.batcher.submit(job))
  finally:
    server.metrics.in_flight.dec()


def create_app(server: Server) -> FastAPI:
  @contextlib.asynccontextmanager
  async def lifespan(app: FastAPI):
    server.batcher.start()
    yield
    await asyncio.get_running_loop().run_in_executor(None, server.batcher.stop)

  async def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_ADMIN_SCHEME)]) -> None:
    if server.changes_refused is not None:
      raise HTTPException(403, server.changes_refused)
    if not token_matches(credentials.credentials if credentials else None, server.tokens.admin):
      raise HTTPException(
        401,
        "changing the library needs 'Authorization: Bearer <admin token>' with the token the operator set in "
        f"{ADMIN_TOKEN_ENV} or --admin_token_file.",
        headers=_UNAUTHORIZED,
      )

  async def require_api(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_API_SCHEME)]) -> None:
    tokens = server.tokens
    if tokens.api is not None and not token_matches(
      credentials.credentials if credentials else None, *vars(tokens).values()
    ):
      raise HTTPException(
        401,
        f"this server needs 'Authorization: Bearer <API token>' with the token the operator set in {API_TOKEN_ENV} "
        "or --api_token_file.",
        headers=_UNAUTHORIZED,
      )

  async def accepting() -> None:
    if server.draining():
      raise ShuttingDown("the server is shutting down (SIGTERM); send the request again, to another replica.")

  admin, api = [Depends(require_admin)], [Depends(require_api)]
  work = [Depends(accepting), *api]  # generate and score: refused with 503 once the server drains
  app = FastAPI(title="prompt-tuning serve", lifespan=lifespan, version="1", description=__doc__)

  @app.exception_handler(ShuttingDown)
  async def shutting_down(request: Request, e: ShuttingDown):
    return JSONResponse({"detail": str(e)}, status_code=503, headers={"Connection": "close", "Retry-After": "1"})

  @app.exception_handler(PromptError)
  async def prompt_error(request: Request, e: PromptError):
    return JSONResponse({"detail": str(e)}, status_code=e.status)

  @app.exception_handler(EngineError)
  async def engine_error(request: Request, e: EngineError):
    return JSONResponse({"detail": str(e)}, status_code=500)

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "prompts": len(server.library)}

  @app.get("/metrics")
  async def metrics():
    _update_library_metrics(server)
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

  @app.post("/v1/generate", dependencies=work)
  async def generate(body: GenerateBody):
    shapes = server.engine.shapes
    tokens = _input_tokens(server, body.text, body.token_ids)
    length = body.max_decode_length or shapes.max_decode_length
    if length > shapes.max_decode_length:
      raise HTTPException(413, f"max_decode_length {length} exceeds this server's maximum {shapes.max_decode_length}.")
    if body.method == "beam":
      if body.num_beams not in shapes.beam_sizes:
        raise HTTPException(400, f"num_beams {body.num_beams} is not served; use one of {list(shapes.beam_sizes)}.")
      if length != shapes.max_decode_length:
        raise HTTPException(
          400, f"beam search runs with max_decode_length {shapes.max_decode_length} on this server; omit it."
        )
    entry = _entry(server, body.prompt_id)
    job = GenerateJob(tokens, entry, body.method, length, body.temperature, body.top_k, body.top_p, body.num_beams)
    result = await _submit(server, job)
    return {
      "text": _decode(server, result["token_ids"]),
      "token_ids": result["token_ids"],
      "score": result["score"],
      "prompt_id": body.prompt_id,
      "prompt_version": entry.version if entry else None,
      "method": body.method,
    }

  @app.post("/v1/score", dependencies=work)
  async def score(body: ScoreBody):
    shapes = server.engine.shapes
    tokens = _input_tokens(server, body.text, body.token_ids)
    entries = [_entry(server, p) for p in body.prompt_ids]
    if not all(c.strip() for c in body.candidates):
      raise HTTPException(400, "a candidate is empty or only whitespace; give each candidate's text.")
    candidates = [list(server.vocabulary.encode(c)) + [EOS_ID] for c in body.candidates]
    longest = max(len(c) for c in candidates)
    if longest > shapes.max_target_length:
      raise HTTPException(
        413,
        f"a candidate needs {longest} tokens (EOS included); this server scores at most {shapes.max_target_length}.",
      )
    rows = len(entries) * len(candidates)
    if rows > shapes.score_buckets[-1]:
      raise HTTPException(
        413,
        f"{len(entries)} prompts x {len(candidates)} candidates = {rows} rows; the limit is "
        f"{shapes.score_buckets[-1]}.",
      )
    targets = np.zeros((len(candidates), shapes.max_target_length), np.int32)
    for i, c in enumerate(candidates):
      targets[i, : len(c)] = c
    output_ids = tuple(sorted({t for c in candidates for t in c})) if body.class_label_softmax else None
    result = await _submit(server, ScoreJob(tokens, entries, targets, output_ids))
    log_probs = result["log_probs"]  # [K, C]
    if body.ensemble == "mean":
      combined = log_probs.mean(axis=0)
      best = int(np.argmax(combined))
    else:
      votes = np.bincount(np.argmax(log_probs, axis=1), minlength=len(candidates))
      combined, best = votes.astype(float), int(np.argmax(votes))
    return {
      "prediction": body.candidates[best],
      "index": best,
      "scores": {c: float(s) for c, s in zip(body.candidates, combined)},
      "per_prompt": {str(p): [float(x) for x in row] for p, row in zip(body.prompt_ids, log_probs)},
      "prompt_versions": [e.version if e else None for e in entries],
    }

  @app.get("/v1/prompts", dependencies=api)
  async def list_prompts():
    return {"ids": server.library.ids(), "bytes": server.library.nbytes}

  @app.get("/v1/prompts/{prompt_id}", dependencies=api)
  async def get_prompt(prompt_id: str):
    return server.library.get(prompt_id).describe()

  @app.put("/v1/prompts/{prompt_id}", dependencies=admin)
  async def put_prompt(prompt_id: str, body: PromptBody):
    check_id(prompt_id)
    if body.source is not None:
      if body.arrays is not None or body.method is not None:
        raise HTTPException(400, "give either 'source' or 'method' and 'arrays', not both.")
      if server.prompts_dir is None:
        raise HTTPException(400, "this server has no --prompts_dir to read 'source' from; send 'arrays'.")
      path = (server.prompts_dir / check_id(body.source)).resolve()
      if path.parent != server.prompts_dir.resolve() or not path.exists():
        raise HTTPException(404, f"no {body.source!r} in the server's prompts folder.")
      try:
        method, arrays = read_entry_file(path)
      except ValueError as e:
        raise PromptError(str(e)) from e
      source = str(path)
    else:
      if body.method is None or body.arrays is None:
        raise HTTPException(400, "give 'method' and 'arrays' (or 'source').")
      method, source = body.method, "upload"
      try:
        arrays = {name: np.asarray(value, np.float64) for name, value in body.arrays.items()}
      except (ValueError, TypeError) as e:
        raise PromptError(f"the arrays are not rectangular numbers: {e}") from e
    entry = server.library.put(prompt_id, method, arrays, source=source)
    _update_library_metrics(server)
    return entry.describe()

  @app.delete("/v1/prompts/{prompt_id}", dependencies=admin)
  async def delete_prompt(prompt_id: str):
    entry = server.library.delete(prompt_id)
    _update_library_metrics(server)
    return {"deleted": prompt_id, "version": entry.version}

  return app
