"""`prompt-tuning serve` against a real server process on 127.0.0.1, with the shipped demo model.

The library holds a .npy prompt, a PEFT adapter folder, a folded prefix, and
an IA3 and a per-layer prompt export folder as training writes them (written
here); every response is compared with `decoding.generate` /
`decoding.sequence_log_probs` run alone on the same input and prompt (what
`infer` runs).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
  "slots": "4",
  "input_buckets": "(32,)",
  "admit_buckets": "(1, 4)",
  "score_buckets": "(8,)",
  "beam_buckets": "(2,)",  # one program; a lone beam request pads to two rows
  "beam_sizes": "(2,)",
  "max_decode_length": "16",
  "max_prompt_length": "8",
  "max_prefix_length": "4",
  "max_target_length": "8",
}
ADMIN_TOKEN = "admin-token-for-tests-3f9c2a"  # PUT/DELETE (prompt_tuning.serve.access)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
API_TOKEN = "api-token-for-tests-81d0e7"  # generate/score, on the servers started with it
MAX_LIBRARY_BYTES = 3_000_000
DEVICE_CACHE_BYTES = 1_000_000  # a few padded rows of the test server (about 175 kB each)
INPUTS = ["Is a cat an animal or a plant?", "oak", "The rose is a flowering shrub of the genus Rosa.", "a small dog"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_library(folder: Path, config) -> dict[str, dict]:
  import jax.numpy as jnp

  from prompt_tuning.checkpoints import peft
  from prompt_tuning.methods import IA3, PerLayerPrompt
  from prompt_tuning.serve.store import save_entry

  emb_dim, layers, heads, head_dim = config.emb_dim, config.num_encoder_layers, config.num_heads, config.head_dim

  rng = np.random.default_rng(0)
  folder.mkdir()
  animals = rng.normal(size=(5, emb_dim)).astype(np.float32)
  np.save(folder / "animals.npy", animals)
  short = rng.normal(size=(2, emb_dim)).astype(np.float32)
  peft.export_peft_adapter(short, folder / "short")
  prefix = {
    f"{s}/{n}": (0.5 * rng.normal(size=(layers, 3, heads, head_dim))).astype(np.float32)
    for s in ("encoder", "decoder", "cross")
    for n in ("key", "value")
  }
  save_entry(folder / "plants.safetensors", "prefix", prefix)
  other = rng.normal(size=(4, emb_dim)).astype(np.float32)
  np.save(folder / "spare.npy", other)
  ia3 = IA3()
  scales = {
    stack: {
      site: {n: 1 + 0.5 * rng.normal(size=x.shape).astype(np.float32) for n, x in leaves.items()}
      for site, leaves in sites.items()
    }
    for stack, sites in ia3.init(None, None, config).items()
  }
  ia3.export(scales, config, folder / "scaled")  # a training export folder: ia3.safetensors
  deep = PerLayerPrompt(3, lambda *_: None, mode="add")
  layer_prompts = {"prompts": jnp.asarray(rng.normal(size=(layers, 3, emb_dim)), jnp.float32)}
  deep.export(layer_prompts, config, folder / "deep")  # per_layer_prompt.safetensors, its mode in the metadata
  return {
    "scaled": {"adapters": ia3.adapters(scales, config)},
    "deep": {"adapters": deep.adapters(layer_prompts, config)},
    "animals": {"prompt": animals},
    "short": {"prompt": short},
    "plants": {
      "prefix": {s: {n: prefix[f"{s}/{n}"] for n in ("key", "value")} for s in ("encoder", "decoder", "cross")}
    },
    None: {},
  }


def _admin_put(url: str, **kwargs) -> httpx.Response:
  return httpx.put(url, headers=ADMIN, **kwargs)


def _admin_delete(url: str, **kwargs) -> httpx.Response:
  return httpx.delete(url, headers=ADMIN, **kwargs)


def start_server(
  library: Path, log: Path, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
  """A `prompt-tuning serve` process on the demo model and `library`, with the admin token (`env` overrides)."""
  port = _free_port()
  shapes = [f"--gin.EngineShapes.{k}={v}" for k, v in SHAPES.items()]
  cmd = [
    sys.executable,
    "-m",
    "prompt_tuning.cli",
    "serve",
    "--gin_file=demo/base.gin",
    f"--prompts_dir={library}",
    f"--port={port}",
    f"--max_library_bytes={MAX_LIBRARY_BYTES}",
    f"--device_cache_bytes={DEVICE_CACHE_BYTES}",
    *shapes,
    *extra,
  ]
  env = dict(
    os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PROMPT_TUNING_ADMIN_TOKEN=ADMIN_TOKEN, **(env or {})
  )
  with open(log, "w") as out:  # run from ROOT: `python -m` puts the working folder first on the path
    process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 240
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
    try:
      if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
        return process, url
    except httpx.TransportError:
      time.sleep(0.5)
  process.kill()
  raise RuntimeError("the server did not start in 240 s")


def stop_server(process: subprocess.Popen) -> None:
  if process.poll() is None:
    os.kill(process.pid, signal.SIGKILL)
  process.wait(30)


@pytest.fixture(scope="module")
def demo():
  import jax

  from prompt_tuning import demo_data
  from prompt_tuning.checkpoints import load_pretrained
  from prompt_tuning.data import get_vocabulary

  config, params = load_pretrained(str(demo_data.DEMO_MODEL_DIR))
  return config, jax.device_put(params), get_vocabulary(str(demo_data.DEMO_VOCABULARY))


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
  config = demo[0]
  root = tmp_path_factory.mktemp("serve")
  folder = root / "library"
  vectors = _write_library(folder, config)
  process, url = start_server(folder, root / "server.log")
  yield {"url": url, "process": process, "vectors": vectors, "library": folder, "log": root / "server.log"}
  stop_server(process)


def _tokens(vocabulary, text: str) -> np.ndarray:
  ids = list(vocabulary.encode(text)) + [1]
  out = np.zeros((1, 32), np.int32)
  out[0, : len(ids)] = ids
  return out


def _alone(demo, vectors: dict, text: str, method: str, max_decode_length: int = 16) -> list[int]:
  """What infer gives: decoding.generate on this input and prompt alone (tokens up to EOS)."""
  from prompt_tuning import decoding

  config, params, vocabulary = demo
  settings = decoding.DecodingSettings(method=method, num_beams=2, alpha=0.6, max_decode_length=max_decode_length)
  out = decoding.generate(config, params, _tokens(vocabulary, text), settings=settings, **vectors)
  ids = [int(t) for t in np.asarray(out.tokens[0])]
  return ids[: ids.index(1) + 1] if 1 in ids else ids


def _post(url: str, path: str, body: dict, timeout: float = 120) -> httpx.Response:
  return httpx.post(f"{url}{path}", json=body, timeout=timeout)


def test_mixed_prompts_and_methods_under_load_equal_generate_alone(server, demo):
  url, vectors = server["url"], server["vectors"]
  requests = []
  for i in range(24):  # every method of the library in one batch: prompt, prefix, IA3, per-layer prompt, none
    prompt_id = ["animals", "plants", "short", "scaled", "deep", None][i % 6]
    method = "beam" if i % 5 == 4 else "greedy"
    requests.append({"text": INPUTS[i % 3], "prompt_id": prompt_id, "method": method, "num_beams": 2})
    if method == "greedy":
      requests[-1]["max_decode_length"] = [16, 5, 11, 3][(i // 6) % 4]  # slots free at different steps
  with concurrent.futures.ThreadPoolExecutor(24) as pool:
    replies = list(pool.map(lambda body: _post(url, "/v1/generate", body), requests))
  for body, reply in zip(requests, replies):
    assert reply.status_code == 200, reply.text
    # Greedy decoding to length L is the first L tokens of decoding to 16 (each step ignores the limit).
    expected = _alone(demo, vectors[body["prompt_id"]], body["text"], body["method"])[: body.get("max_decode_length")]
    assert reply.json()["token_ids"] == expected, body
  frozen = _alone(demo, vectors[None], INPUTS[0], "greedy")
  assert all(_alone(demo, vectors[p], INPUTS[0], "greedy") != frozen for p in ("scaled", "deep"))  # vectors matter
  metrics = httpx.get(f"{url}/metrics").text
  steps_with_many_rows = [
    line for line in metrics.splitlines() if line.startswith('serve_batch_size_bucket{kind="step",le="1.0"}')
  ]
  total_steps = [line for line in metrics.splitlines() if line.startswith('serve_batch_size_count{kind="step"}')]
  assert float(steps_with_many_rows[0].split()[-1]) < float(total_steps[0].split()[-1])  # steps shared by several rows


def test_score_ranks_candidates_as_sequence_log_probs_and_ensembles(server, demo):
  from prompt_tuning import decoding

  config, params, vocabulary = demo
  url, vectors = server["url"], server["vectors"]
  body = {"text": INPUTS[0], "candidates": ["animal", "plant"], "prompt_ids": ["animals", "plants", None]}
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    replies = list(pool.map(lambda b: _post(url, "/v1/score", b), [body, dict(body, ensemble="vote")] * 2))
  reply = replies[0].json()
  expected = []
  for prompt_id in body["prompt_ids"]:
    targets = np.zeros((2, 8), np.int32)
    for i, label in enumerate(body["candidates"]):
      ids = list(vocabulary.encode(label)) + [1]
      targets[i, : len(ids)] = ids
    tokens = np.repeat(_tokens(vocabulary, body["text"]), 2, axis=0)
    kwargs = dict(vectors[prompt_id])
    expected.append(np.asarray(decoding.sequence_log_probs(config, params, tokens, targets, **kwargs)))
  expected = np.stack(expected)  # [K, C]
  np.testing.assert_allclose([reply["per_prompt"][str(p)] for p in body["prompt_ids"]], expected, atol=2e-4)
  mean = expected.mean(axis=0)
  assert reply["prediction"] == body["candidates"][int(np.argmax(mean))]
  np.testing.assert_allclose(list(reply["scores"].values()), mean, atol=2e-4)
  votes = np.bincount(expected.argmax(axis=1), minlength=2)
  assert replies[1].json()["scores"] == {c: float(v) for c, v in zip(body["candidates"], votes)}

  # class_label_softmax: each softmax over the labels' tokens and EOS, as infer's score mode (trainer.score_step).
  import jax

  from prompt_tuning import trainer
  from prompt_tuning.models.t5 import T5

  restricted = _post(url, "/v1/score", dict(body, prompt_ids=["animals"], class_label_softmax=True)).json()
  output_ids = tuple(sorted({t for label in body["candidates"] for t in vocabulary.encode(label)} | {1}))
  logits = jax.jit(T5(config).apply)(
    {"params": params}, tokens, np.pad(targets[:, :-1], ((0, 0), (1, 0))), targets, **vectors["animals"]
  )
  cross_entropy, _ = trainer.token_losses(logits, targets, 0.0, output_ids)
  expected = -np.sum(np.asarray(cross_entropy) * (targets > 0), axis=-1)  # [C]
  np.testing.assert_allclose(restricted["per_prompt"]["animals"], expected, atol=2e-4)
  assert restricted["prediction"] == body["candidates"][int(np.argmax(expected))]
  assert not np.allclose(expected, reply["per_prompt"]["animals"], atol=1e-2)  # the restriction changed the scores


def test_prompt_library_changes_live_and_refuses_bad_uploads(server, demo):
  config = demo[0]
  url = server["url"]
  prompt = np.random.default_rng(1).normal(size=(3, config.emb_dim)).tolist()
  first = _admin_put(f"{url}/v1/prompts/user-7", json={"method": "prompt", "arrays": {"prompt": prompt}})
  assert first.status_code == 200 and first.json()["version"] == 1
  assert (
    _admin_put(f"{url}/v1/prompts/user-7", json={"method": "prompt", "arrays": {"prompt": prompt}}).json()["version"]
    == 2
  )
  assert httpx.get(f"{url}/v1/prompts/user-7").json()["arrays"] == {"prompt": [3, config.emb_dim]}
  assert "user-7" in httpx.get(f"{url}/v1/prompts").json()["ids"]
  reply = _post(url, "/v1/generate", {"text": INPUTS[1], "prompt_id": "user-7", "max_decode_length": 4})
  assert reply.status_code == 200 and reply.json()["prompt_version"] == 2
  from_folder = _admin_put(f"{url}/v1/prompts/copy", json={"source": "spare.npy"})
  assert from_folder.status_code == 200 and from_folder.json()["length"] == 4

  def put(prompt_id, body):
    return _admin_put(f"{url}/v1/prompts/{prompt_id}", json=body)

  wrong_width = put("w", {"method": "prompt", "arrays": {"prompt": [[0.1] * (config.emb_dim - 1)]}})
  assert wrong_width.status_code == 400 and "width" in wrong_width.json()["detail"]
  nan = httpx.put(
    f"{url}/v1/prompts/n",
    content=json.dumps({"method": "prompt", "arrays": {"prompt": [[float("nan")] * config.emb_dim]}}),
    headers={"content-type": "application/json", **ADMIN},
  )
  assert nan.status_code == 400 and "NaN" in nan.json()["detail"]
  lora = put("l", {"method": "lora", "arrays": {"A": [[0.0]]}})
  assert lora.status_code == 400 and "prefix" in lora.json()["detail"] and "prompt" in lora.json()["detail"]
  bad_prefix = put("p", {"method": "prefix", "arrays": {"decoder/key": [[[[0.0]]]], "decoder/value": [[[[0.0]]]]}})
  assert bad_prefix.status_code == 400 and "layers" in bad_prefix.json()["detail"]
  layers = config.num_encoder_layers
  bad_ia3 = put("i", {"method": "ia3", "arrays": {"encoder/cross_attention/key_scale": [[1.0]] * layers}})
  assert bad_ia3.status_code == 400 and "encoder/self_attention/key_scale" in bad_ia3.json()["detail"]
  no_mode = put("d", {"method": "per_layer_prompt", "arrays": {"prompts": [[[0.0] * config.emb_dim]] * layers}})
  assert no_mode.status_code == 400 and "'replace' or 'add'" in no_mode.json()["detail"]
  shallow = put("d", {"method": "per_layer_prompt", "arrays": {"add": [[[0.0] * config.emb_dim]] * (layers + 1)}})
  assert shallow.status_code == 400 and f"[{layers}, P, {config.emb_dim}]" in shallow.json()["detail"]
  too_long = put("t", {"method": "prompt", "arrays": {"prompt": [[0.0] * config.emb_dim] * 9}})
  assert too_long.status_code == 400 and "at most 8" in too_long.json()["detail"]
  for unsafe in ("..", "a..b", ".hidden", "x" * 200):
    assert put(unsafe, {"method": "prompt", "arrays": {"prompt": prompt}}).status_code in (400, 404, 405)
  traversal = put("escape", {"source": "../library"})
  assert traversal.status_code == 400 and "not allowed" in traversal.json()["detail"]

  assert _admin_delete(f"{url}/v1/prompts/user-7").status_code == 200
  gone = _post(url, "/v1/generate", {"text": INPUTS[1], "prompt_id": "user-7"})
  assert gone.status_code == 404 and "user-7" in gone.json()["detail"]
  assert _admin_delete(f"{url}/v1/prompts/user-7").status_code == 404


def test_bad_requests_get_clear_statuses(server):
  url = server["url"]
  unknown = _post(url, "/v1/generate", {"text": "x", "prompt_id": "nope"})
  assert unknown.status_code == 404
  too_long = _post(url, "/v1/generate", {"token_ids": [5] * 33})
  assert too_long.status_code == 413 and "at most 32" in too_long.json()["detail"]
  malformed = httpx.post(f"{url}/v1/generate", content=b'{"text": ', headers={"content-type": "application/json"})
  assert malformed.status_code == 422
  assert _post(url, "/v1/generate", {"text": "x", "max_decode_length": 17}).status_code == 413
  beams = _post(url, "/v1/generate", {"text": "x", "method": "beam", "num_beams": 3})
  assert beams.status_code == 400 and "[2]" in beams.json()["detail"]
  assert _post(url, "/v1/generate", {"text": "x", "token_ids": [5, 1]}).status_code == 400
  labels = _post(url, "/v1/score", {"text": "x", "candidates": ["a"] * 3, "prompt_ids": ["animals"] * 3})
  assert labels.status_code == 413 and "limit is 8" in labels.json()["detail"]


def test_empty_input_is_refused(server):
  url = server["url"]
  for body, problem in (
    ({"text": ""}, "empty"),
    ({"text": " \n\t "}, "only whitespace"),
    ({"token_ids": [1]}, "only EOS"),
    ({"token_ids": [1, 1]}, "only EOS"),
  ):
    for path, extra in (("/v1/generate", {}), ("/v1/score", {"candidates": ["animal", "plant"]})):
      reply = _post(url, path, {**body, **extra})
      assert reply.status_code == 400 and problem in reply.json()["detail"], (path, body, reply.text)
  empty_candidate = _post(url, "/v1/score", {"text": "oak", "candidates": ["animal", " "]})
  assert empty_candidate.status_code == 400 and "candidate is empty" in empty_candidate.json()["detail"]


def test_library_changes_need_the_admin_token(server, demo):
  url = server["url"]
  prompt = {"method": "prompt", "arrays": {"prompt": [[0.5] * demo[0].emb_dim]}}
  wrong = {"Authorization": "Bearer not-the-token"}
  for headers in ({}, wrong, {"Authorization": ADMIN_TOKEN}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
    put = httpx.put(f"{url}/v1/prompts/animals", json=prompt, headers=headers)
    delete = httpx.delete(f"{url}/v1/prompts/animals", headers=headers)
    for reply in (put, delete):
      assert reply.status_code == 401 and "PROMPT_TUNING_ADMIN_TOKEN" in reply.json()["detail"], (headers, reply.text)
      assert reply.headers["www-authenticate"] == "Bearer"
  unchanged = httpx.get(f"{url}/v1/prompts/animals").json()
  assert unchanged["version"] == 1 and unchanged["length"] == 5  # the shipped entry, untouched
  assert not (server["library"] / "animals.safetensors").exists()
  # Without an API token, generate and score stay open; /metrics and the OpenAPI page never show a token.
  assert _post(url, "/v1/generate", {"text": "oak", "max_decode_length": 1}).status_code == 200
  assert ADMIN_TOKEN not in httpx.get(f"{url}/metrics").text
  openapi = httpx.get(f"{url}/openapi.json").json()
  schemes = openapi["components"]["securitySchemes"]
  assert {s["scheme"] for s in schemes.values()} == {"bearer"}
  assert "PROMPT_TUNING_ADMIN_TOKEN" in json.dumps(schemes) and "PROMPT_TUNING_API_TOKEN" in json.dumps(schemes)
  assert openapi["paths"]["/v1/prompts/{prompt_id}"]["put"]["security"] == [{"admin token": []}]
  assert ADMIN_TOKEN not in json.dumps(openapi)


def test_prompt_replaced_and_deleted_in_flight_keeps_its_version(server, demo):
  config = demo[0]
  url = server["url"]
  rng = np.random.default_rng(2)
  old, new = rng.normal(size=(6, config.emb_dim)), rng.normal(size=(6, config.emb_dim))
  assert (
    _admin_put(f"{url}/v1/prompts/live", json={"method": "prompt", "arrays": {"prompt": old.tolist()}}).status_code
    == 200
  )
  body = {"text": INPUTS[2], "prompt_id": "live"}
  finished = []

  def call(_):
    reply = _post(url, "/v1/generate", body)
    finished.append(time.perf_counter())
    return reply

  with concurrent.futures.ThreadPoolExecutor(48) as pool:  # 12 rounds of the 4 slots
    futures = [pool.submit(call, i) for i in range(48)]
    deadline = time.time() + 60
    while not finished and time.time() < deadline:  # the first answers are in; most requests still run
      time.sleep(0.005)
    _admin_put(f"{url}/v1/prompts/live", json={"method": "prompt", "arrays": {"prompt": new.tolist()}})
    _admin_delete(f"{url}/v1/prompts/live")
    replaced_at = time.perf_counter()
    replies = [f.result() for f in futures]
  expected_old = _alone(demo, {"prompt": old.astype(np.float32)}, body["text"], "greedy")
  expected_new = _alone(demo, {"prompt": new.astype(np.float32)}, body["text"], "greedy")
  assert expected_old != expected_new
  answered = [r.json() for r in replies if r.status_code == 200]
  assert {r.status_code for r in replies} <= {200, 404}  # 404: arrived after the delete
  assert any(r["prompt_version"] == 1 for r in answered)
  for reply in answered:  # each with the version it started with
    assert reply["token_ids"] == {1: expected_old, 2: expected_new}[reply["prompt_version"]]
  assert max(finished) > replaced_at  # some of them were still running when the prompt changed


def test_failing_batch_fails_only_its_requests(server, demo):
  config = demo[0]
  url = server["url"]
  # Finite float32 keys of both signs, so every head's attention logits reach +inf: the softmax gives NaN.
  layers, shape = config.num_decoder_layers, (config.num_decoder_layers, 2, config.num_heads, config.head_dim)
  keys = np.concatenate([np.full((layers, 1) + shape[2:], 3e38), np.full((layers, 1) + shape[2:], -3e38)], axis=1)
  arrays = {"decoder/key": keys.tolist(), "decoder/value": np.zeros(shape).tolist()}
  assert _admin_put(f"{url}/v1/prompts/huge", json={"method": "prefix", "arrays": arrays}).status_code == 200
  bodies = [{"text": INPUTS[0], "prompt_id": "huge"}, {"text": INPUTS[0], "prompt_id": "animals"}] * 2
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    replies = list(pool.map(lambda b: _post(url, "/v1/generate", b), bodies))
  assert [r.status_code for r in replies] == [500, 200, 500, 200]
  assert "non-finite" in replies[0].json()["detail"] and "'huge'" in replies[0].json()["detail"]
  assert replies[1].json()["token_ids"] == _alone(demo, server["vectors"]["animals"], INPUTS[0], "greedy")
  # Beam search and scoring: the NaN request fails naming its prompt; the others in its batch answer.
  beams = [{"text": INPUTS[0], "prompt_id": p, "method": "beam", "num_beams": 2} for p in ("huge", "animals")]
  score = {"text": INPUTS[0], "candidates": ["animal", "plant"]}
  scores = [dict(score, prompt_ids=["animals", "huge"]), dict(score, prompt_ids=["animals"])]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    beam_replies = list(pool.map(lambda b: _post(url, "/v1/generate", b), beams * 2))
    score_replies = list(pool.map(lambda b: _post(url, "/v1/score", b), scores * 2))
  assert [r.status_code for r in beam_replies + score_replies] == [500, 200] * 4
  for reply in (beam_replies[0], score_replies[0]):
    assert "non-finite" in reply.json()["detail"] and "'huge' (version 1)" in reply.json()["detail"]
  assert beam_replies[1].json()["token_ids"] == _alone(demo, server["vectors"]["animals"], INPUTS[0], "beam")
  assert httpx.get(f"{url}/healthz").status_code == 200
  out_of_range = {"method": "prompt", "arrays": {"prompt": [[1e39] * config.emb_dim]}}
  refused = _admin_put(f"{url}/v1/prompts/big", json=out_of_range)
  assert refused.status_code == 400 and "float32" in refused.json()["detail"]


def test_metrics_and_openapi(server):
  url = server["url"]
  for _ in range(2):  # the second use of the prompt is a device-cache hit, whatever ran before
    _post(url, "/v1/generate", {"text": INPUTS[0], "prompt_id": "animals", "max_decode_length": 2})
  metrics = httpx.get(f"{url}/metrics").text
  for name in (
    "serve_queue_depth",
    "serve_batch_size_bucket",
    "serve_request_latency_seconds_bucket",
    "serve_generated_tokens_total",
    'serve_prompt_cache_total{result="hit"}',
    "serve_library_bytes",
  ):
    assert name in metrics, name
  # Each request was admitted and stepped: the time the batcher spent in those programs is counted per program.
  for program in ("admit", "step"):
    count = [
      line for line in metrics.splitlines() if line.startswith(f'serve_engine_seconds_count{{program="{program}"}}')
    ]
    total = [
      line for line in metrics.splitlines() if line.startswith(f'serve_engine_seconds_sum{{program="{program}"}}')
    ]
    assert float(count[0].split()[-1]) >= 2 and float(total[0].split()[-1]) > 0, program
  paths = httpx.get(f"{url}/openapi.json").json()["paths"]
  assert {"/v1/generate", "/v1/score", "/v1/prompts/{prompt_id}", "/healthz", "/metrics"} <= set(paths)


def _rss_kib(pid: int) -> int:
  for line in Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1])
  raise RuntimeError("no VmRSS")


def test_memory_stays_bounded_with_10000_prompts(server, demo):
  config = demo[0]
  url, pid = server["url"], server["process"].pid
  row = [[0.01] * config.emb_dim]
  before = _rss_kib(pid)

  def upload(i):
    with httpx.Client(base_url=url, timeout=60, headers=ADMIN) as client:
      return [
        client.put(f"/v1/prompts/u{j}", json={"method": "prompt", "arrays": {"prompt": row}}).status_code
        for j in range(i, 10_000, 8)
      ]

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    statuses = [s for chunk in pool.map(upload, range(8)) for s in chunk]
  assert len(statuses) == 10_000 and set(statuses) == {200, 507}  # the cap refuses what does not fit
  for i in range(12):  # more distinct prompts than the device cache holds
    assert _post(url, "/v1/generate", {"text": "x", "prompt_id": f"u{i}", "max_decode_length": 1}).status_code == 200
  library = httpx.get(f"{url}/v1/prompts").json()
  metrics = {
    line.split()[0]: float(line.split()[1]) for line in httpx.get(f"{url}/metrics").text.splitlines() if line[:1] != "#"
  }
  assert library["bytes"] <= MAX_LIBRARY_BYTES
  assert metrics["serve_device_cache_bytes"] <= DEVICE_CACHE_BYTES
  assert _rss_kib(pid) - before < 200_000  # KiB: bounded by the caps, not by the uploads


def _metric(url: str, name: str) -> float:
  lines = httpx.get(f"{url}/metrics").text.splitlines()
  return sum(float(line.split()[-1]) for line in lines if line.startswith(name + " "))


def test_sigterm_drains_in_flight_requests(server):
  url, process, count = server["url"], server["process"], 32  # 8 rounds of the 4 slots: the signal finds work
  finished = 'serve_request_latency_seconds_count{kind="greedy"}'
  before = _metric(url, finished)
  with concurrent.futures.ThreadPoolExecutor(count) as pool:
    futures = [
      pool.submit(_post, url, "/v1/generate", {"text": INPUTS[i % 3], "prompt_id": "animals"}) for i in range(count)
    ]
    deadline, in_flight = time.time() + 60, 0
    while time.time() < deadline:  # every request accepted (finished or in flight) before the signal
      in_flight = _metric(url, "serve_requests_in_flight")
      if _metric(url, finished) - before + in_flight >= count:
        break
    os.kill(process.pid, signal.SIGTERM)
    replies = [f.result() for f in futures]
  assert in_flight >= 1  # requests were running when the signal came
  assert [r.status_code for r in replies] == [200] * count
  assert process.wait(60) == 0
  log = server["log"].read_text()
  assert "stopped by SIGTERM" in log and "Traceback" not in log, log[-3000:]
  # The whole server log: no token, and none of TensorFlow's, XLA's or absl's start-up lines.
  assert ADMIN_TOKEN not in log
  for noise in ("oneDNN", "cudart_stub", "cuInit", "absl::InitializeLog", "uncached FunctionDataset"):
    assert noise not in log, log[:3000]


def _readme_serving_section() -> tuple[list[str], str]:
  """README.md's serving example: the command lines of its bash block and its Python client."""
  import re
  import shlex

  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Serve many prompts") :]
  section = section[: section.index("\n## ", 1)]
  bash = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
  commands = [line for line in bash.replace("\\\n", " ").splitlines() if shlex.split(line, comments=True)]
  return commands, re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_serving_example_runs_as_written(demo, tmp_path):
  """README's serving example, line by line: the copy of the shipped demo library, the admin token, the serve
  command (stand-ins: the port, the copy's folder, and small compiled shapes that still hold the demo's 20-token
  prompt and 10-vector prefix), its two curl commands and its Python client, against the real server: the trained
  prompt and prefix call an oak a plant, a cachalot an animal; the client's upload is kept in the copy, and the
  shipped library is unchanged."""
  import shlex

  from prompt_tuning import demo_data

  commands, client = _readme_serving_section()
  copy, export, serve, *curls = commands
  assert copy.startswith("cp -r prompt_tuning/assets/demo_library ") and export.startswith("export ")
  assert serve.startswith("prompt-tuning serve ") and curls and all(c.startswith("curl ") for c in curls)
  port = _free_port()
  library = tmp_path / "library"
  stand_ins = {"localhost:8000": f"127.0.0.1:{port}", "--port=8000": f"--port={port}", "/tmp/library": str(library)}

  def substitute(text: str) -> str:
    for readme_text, stand_in in stand_ins.items():
      text = text.replace(readme_text, stand_in)
    return text

  shipped_before = sorted(p.name for p in demo_data.DEMO_LIBRARY_DIR.iterdir())
  subprocess.run(shlex.split(substitute(copy)), check=True, cwd=ROOT)
  name, token = shlex.split(export, comments=True)[1].split("=", 1)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **{name: token})
  shapes = dict(SHAPES, max_prompt_length="32", max_prefix_length="16")
  shapes = [f"--gin.EngineShapes.{k}={v}" for k, v in shapes.items()]
  cmd = [sys.executable, "-m", "prompt_tuning.cli", *shlex.split(substitute(serve))[1:], *shapes]
  log = tmp_path / "server.log"
  with open(log, "w") as out:
    process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
  try:
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 240
    while time.time() < deadline and process.poll() is None:
      try:
        if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
          break
      except httpx.TransportError:
        time.sleep(0.5)
    assert process.poll() is None, log.read_text()[-3000:]
    generated, scored = (
      json.loads(subprocess.run(shlex.split(substitute(c)), capture_output=True, text=True, check=True).stdout)
      for c in curls
    )
    assert isinstance(generated["text"], str) and generated["prompt_id"] == "animal_or_plant", generated
    assert set(scored["per_prompt"]) == {"animal_or_plant", "animal_or_plant_prefix"}, scored
    assert scored["prediction"] == "<extra_id_0> plant", scored
    cachalot = "cachalot: large whale with a large cavity in the head. Is a cachalot an animal or a plant?"
    for prompt_id in ("animal_or_plant", "animal_or_plant_prefix"):
      body = {
        "text": cachalot,
        "candidates": ["<extra_id_0> animal", "<extra_id_0> plant"],
        "prompt_ids": [prompt_id],
        "class_label_softmax": True,
      }
      assert _post(url, "/v1/score", body).json()["prediction"] == "<extra_id_0> animal", prompt_id
    printed = subprocess.run(
      [sys.executable, "-c", substitute(client)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert httpx.get(f"{url}/v1/prompts/user-42").status_code == 200  # the client's upload is in the library
  finally:
    stop_server(process)
  assert (library / "user-42.safetensors").is_file()
  assert sorted(p.name for p in demo_data.DEMO_LIBRARY_DIR.iterdir()) == shipped_before


def test_choose_tokens_samples_only_the_rows_that_ask():
  """Per-slot decoding settings in one step: greedy rows take the argmax beside sampling rows; top-k 1 is greedy;
  top-k 3 and top-p keep to their candidates."""
  import jax

  from prompt_tuning.serve.engine import choose_tokens

  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4, np.float32))
  rows = {"temperature": [0.0, 1.0, 1.0, 1.0], "top_k": [0, 1, 3, 0], "top_p": [1.0, 1.0, 1.0, 0.6]}
  args = [np.asarray(rows[k], np.float32 if k != "top_k" else np.int32) for k in ("temperature", "top_k", "top_p")]
  choose = jax.jit(choose_tokens)
  draws = np.stack([np.asarray(choose(logits, *args, jax.random.key(i))) for i in range(64)])  # [64, 4]
  assert (draws[:, :2] == 0).all()  # greedy, and top-k 1
  assert set(draws[:, 2]) == {0, 1, 2}  # top-k 3 samples all three, never the fourth
  assert set(draws[:, 3]) == {0, 1}  # top-p 0.6: the smallest set reaching 0.6 is {0, 1}
  greedy_only = np.zeros(4, np.float32), np.zeros(4, np.int32), np.ones(4, np.float32)
  assert (np.asarray(choose(logits, *greedy_only, jax.random.key(0))) == 0).all()


def test_library_refuses_a_method_this_server_cannot_take():
  """A server not serving prefixes (EngineShapes.methods) refuses them with a 400 naming the method and the setting
  to change; its other methods still load."""
  from prompt_tuning.models.configs import T5Config
  from prompt_tuning.serve.store import Limits, PromptError, PromptLibrary

  config = T5Config(
    vocab_size=8, emb_dim=4, num_heads=1, head_dim=2, mlp_dim=3, num_encoder_layers=1, num_decoder_layers=1
  )
  limits = Limits(config, {"prompt": 2, "prefix": 0, "rank": 0}, methods=("prompt", "ia3", "per_layer_prompt"))
  library = PromptLibrary(limits, max_library_bytes=1 << 20)
  with pytest.raises(PromptError, match="method 'prefix' is not served.*EngineShapes.methods") as refused:
    library.put("p", "prefix", {"decoder/key": np.zeros((1, 1, 1, 2)), "decoder/value": np.zeros((1, 1, 1, 2))})
  assert refused.value.status == 400
  assert library.put("s", "ia3", {"decoder/cross_attention/value_scale": np.ones((1, 2))}).length == 0
  assert library.put("d", "per_layer_prompt", {"add": np.ones((1, 2, 4))}).length == 2


def _wait_for(condition, seconds: float, what: str) -> None:
  deadline = time.time() + seconds
  while not condition():
    if time.time() > deadline:
      raise AssertionError(f"waited {seconds} s for {what}")
    time.sleep(0.02)


def test_uploads_survive_restart_and_kill_9_mid_upload(demo, tmp_path):
  """Every answered change is on disk: a restart restores each entry with its id and version, a DELETE stays
  deleted (and the id's next upload continues its versions), a kill -9 between an upload's write and its rename
  leaves the old entry whole, and concurrent PUTs of one id leave one complete file, the one served. The API token
  guards generate and score."""
  from prompt_tuning.serve import library_files

  config = demo[0]
  rng = np.random.default_rng(5)
  folder = tmp_path / "library"
  folder.mkdir()
  np.save(folder / "operator.npy", rng.normal(size=(2, config.emb_dim)).astype(np.float32))  # placed by hand

  def prompt(length: int) -> np.ndarray:
    return rng.normal(size=(length, config.emb_dim)).astype(np.float32)

  def put(url: str, prompt_id: str, array: np.ndarray) -> httpx.Response:
    body = {"method": "prompt", "arrays": {"prompt": array.tolist()}}
    return httpx.put(f"{url}/v1/prompts/{prompt_id}", json=body, headers=ADMIN, timeout=60)

  tokens = {"PROMPT_TUNING_API_TOKEN": API_TOKEN, library_files.TEST_PAUSE_BEFORE_RENAME_ENV: "1"}
  process, url = start_server(folder, tmp_path / "first.log", ("--no_warm_up",), env=tokens)
  kept, interrupted = prompt(3), prompt(4)
  try:
    assert put(url, "kept", prompt(2)).json()["version"] == 1
    assert put(url, "kept", kept).json()["version"] == 2
    assert put(url, "gone", prompt(1)).status_code == 200
    assert httpx.delete(f"{url}/v1/prompts/gone", headers=ADMIN).status_code == 200
    assert put(url, "operator", prompt(1)).json()["version"] == 2  # replaces the hand-placed .npy
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      upload = pool.submit(put, url, "kept", interrupted)
      _wait_for(lambda: list(folder.glob(".kept.safetensors.*.partial")), 30, "the upload's temporary file")
      os.kill(process.pid, signal.SIGKILL)  # mid-upload: its temporary file is there, the rename is not done
      with pytest.raises(httpx.TransportError):
        upload.result()
  finally:
    stop_server(process)
  assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".partial")) == [
    ".gone.deleted",  # the deleted id's last version, so its next upload is not version 1 again
    "kept.safetensors",
    "operator.safetensors",
  ]
  assert library_files.recorded_version(folder / "kept.safetensors") == 2

  tokens.pop(library_files.TEST_PAUSE_BEFORE_RENAME_ENV)
  process, url = start_server(folder, tmp_path / "second.log", ("--no_warm_up",), env=tokens)
  api = {"Authorization": f"Bearer {API_TOKEN}"}
  try:
    assert httpx.get(f"{url}/v1/prompts").status_code == 401  # the API token guards the library's GETs too
    assert httpx.get(f"{url}/v1/prompts", headers=api).json()["ids"] == ["kept", "operator"]
    restored = httpx.get(f"{url}/v1/prompts/kept", headers=api).json()
    assert restored["version"] == 2 and restored["arrays"] == {"prompt": [3, config.emb_dim]}
    assert httpx.get(f"{url}/v1/prompts/operator", headers=ADMIN).json()["version"] == 2
    assert not list(folder.glob(".*.partial"))  # what the crash left is cleaned at start
    assert put(url, "gone", prompt(1)).json()["version"] == 2  # deleted at version 1 before the restart
    # The restored entry is the uploaded one: greedy decoding under it equals decoding under the arrays alone.
    body = {"text": INPUTS[0], "prompt_id": "kept"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
      refused = httpx.post(f"{url}/v1/generate", json=body, headers=headers)
      assert refused.status_code == 401 and "PROMPT_TUNING_API_TOKEN" in refused.json()["detail"]
    assert _post(url, "/v1/score", {"text": "oak", "candidates": ["a"]}).status_code == 401
    answer = httpx.post(f"{url}/v1/generate", json=body, headers=api, timeout=120)
    assert answer.json()["token_ids"] == _alone(demo, {"prompt": kept}, INPUTS[0], "greedy")
    # Concurrent PUTs of one id: one complete file, the entry served, whatever the order they ran in.
    uploads = [prompt(2) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      replies = list(pool.map(lambda array: put(url, "race", array), uploads))
    versions = {reply.json()["version"]: array for reply, array in zip(replies, uploads)}
    assert sorted(versions) == list(range(1, 9))
    assert [p.name for p in folder.iterdir() if "race" in p.name] == ["race.safetensors"]
    method, arrays = library_files.read_entry_file(folder / "race.safetensors")
    np.testing.assert_array_equal(arrays["prompt"], versions[8])
    assert library_files.recorded_version(folder / "race.safetensors") == 8
    assert httpx.get(f"{url}/v1/prompts/race", headers=api).json()["version"] == 8
  finally:
    stop_server(process)
  assert API_TOKEN not in (tmp_path / "second.log").read_text()


def _serve_start_error(capfd, folder, *flags: str) -> str:
  """What `prompt-tuning serve` prints when it refuses to start (before loading the backbone), run in-process."""
  from prompt_tuning import cli

  code = cli.main(["serve", "--gin_file=demo/base.gin", f"--prompts_dir={folder}", "--no_warm_up", *flags])
  printed = capfd.readouterr().err
  assert code == 1, printed
  return printed


def test_a_library_that_cannot_take_changes_is_refused_at_start(tmp_path, capfd, monkeypatch):
  from prompt_tuning import demo_data
  from prompt_tuning.serve import access

  monkeypatch.setenv(access.ADMIN_TOKEN_ENV, ADMIN_TOKEN)
  shipped = _serve_start_error(capfd, demo_data.DEMO_LIBRARY_DIR)
  assert "never written to" in shipped and "cp -r" in shipped and "--read_only" in shipped
  both = _serve_start_error(capfd, tmp_path, "--read_only")
  assert "--read_only and an admin token" in both
  folder = tmp_path / "immutable"
  folder.mkdir()
  if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
    pytest.skip("chattr +i is not available here: no folder this (root) process cannot write")
  try:
    not_writable = _serve_start_error(capfd, folder)
  finally:
    subprocess.run(["chattr", "-i", str(folder)], check=True)
  assert "is not writable (Operation not permitted)" in not_writable and "--read_only" in not_writable
  assert ADMIN_TOKEN not in shipped + both + not_writable
  monkeypatch.setenv(access.ADMIN_TOKEN_ENV, "")
  assert "PROMPT_TUNING_ADMIN_TOKEN is empty" in _serve_start_error(capfd, tmp_path)


def test_a_library_without_an_admin_token_is_read_only_and_a_draining_server_answers_503(demo):
  """No admin token (or --read_only): PUT and DELETE answer 403 saying how to enable changes, before the body is
  read; a draining server answers 503. The app in-process (its routes refuse before the engine is touched)."""
  from fastapi.testclient import TestClient

  from prompt_tuning.serve import app, cli, store

  refusals = {}
  for flags in ([], ["--read_only"]):
    args = cli._parser().parse_args(["--prompts_dir", str(ROOT / "prompt_tuning/assets/demo_library"), *flags])
    tokens, files, refused = cli.library_access(args)
    assert tokens.admin is None and not files.writable
    limits = store.Limits(config=None, widths={}, methods=())  # no upload reaches the checks here
    server = app.Server(None, store.PromptLibrary(limits, 1 << 20), None, None, None, None, None, tokens, refused)
    client = TestClient(app.create_app(server))
    for reply in (client.put("/v1/prompts/x", json={"source": "a"}), client.delete("/v1/prompts/x", headers=ADMIN)):
      assert reply.status_code == 403, reply.text
    refusals[tuple(flags)] = reply.json()["detail"]
  assert "PROMPT_TUNING_ADMIN_TOKEN=<token>" in refusals[()] and "--admin_token_file" in refusals[()]
  assert "--read_only" in refusals[("--read_only",)]
  # Once SIGTERM came (uvicorn's should_exit), new generate and score requests are refused with 503, not reset.
  server.draining = lambda: True
  for path in ("/v1/generate", "/v1/score"):
    reply = client.post(path, json={"text": "oak", "candidates": ["a"]})
    assert reply.status_code == 503 and "shutting down" in reply.json()["detail"], reply.text
    assert reply.headers["connection"] == "close" and reply.headers["retry-after"] == "1"


def test_a_call_of_several_steps_gives_what_single_steps_give(tiny_decoder_model):
  """`Engine.step` runs several decoder steps in one call (a loop on the device): each slot gets the tokens, scores
  and finishing step one step per call gives, rows finishing mid-call included, and the rng advances alike; asked
  to stop on a finish, a call returns after the first step that finishes a slot."""
  import jax

  from prompt_tuning import partitioning
  from prompt_tuning.serve.engine import Engine, EngineShapes

  config, params = tiny_decoder_model
  shapes = EngineShapes(
    slots=4, input_buckets=(8,), max_prompt_length=2, max_prefix_length=0, max_decode_length=8, max_steps_per_call=3,
    admit_buckets=(4,), score_buckets=(1,), beam_buckets=(1,), methods=("prompt",),
  )  # fmt: skip
  engine = Engine(config, params, partitioning.make_mesh(), shapes)
  tokens = np.random.default_rng(0).integers(2, config.vocab_size, (3, 8)).astype(np.int32)
  settings = {"max_length": [2, 5, 8], "temperature": [0.0, 0.0, 0.0], "top_k": [0] * 3, "top_p": [1.0] * 3}
  settings = {k: np.asarray(v, np.float32 if k in ("temperature", "top_p") else np.int32) for k, v in settings.items()}

  def decode(steps: int, stop_on_finish: bool = False) -> tuple[list[dict], list[int], jax.Array]:
    state = engine.admit(engine.init_state(), [0, 1, 2], tokens, [engine.row_vectors(None)] * 3, settings)
    rng, rows, calls = jax.random.key(0), [], []
    while len(rows) < 8 and not all(any(r["done"][j] for r in rows) for j in range(3)):  # until every row finished
      state, rng, out = engine.step(state, rng, steps, stop_on_finish)
      calls.append(len(out["token"]))
      rows += [{k: v[i, :3] for k, v in out.items()} for i in range(calls[-1])]
    return rows, calls, rng

  single, calls, rng = decode(1)
  assert calls == [1] * len(single) and len(single) > 3
  several, calls, rng_several = decode(3)
  assert sum(calls) == len(single) and set(calls[:-1]) == {3}  # the last call stops once no slot is active
  finished = np.zeros(3, bool)  # rows that finished at an earlier step: their later outputs are not compared
  for one, other in zip(single, several, strict=True):
    np.testing.assert_array_equal(np.where(finished, 0, one["token"]), np.where(finished, 0, other["token"]))
    np.testing.assert_array_equal(np.where(finished, False, one["done"]), np.where(finished, False, other["done"]))
    np.testing.assert_allclose(np.where(finished, 0, one["logp"]), np.where(finished, 0, other["logp"]), rtol=1e-6)
    finished |= one["done"]
  assert finished.all()
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(rng_several))
  first_finish = next(i for i, r in enumerate(single) if r["done"].any()) + 1
  _, calls, _ = decode(3, stop_on_finish=True)
  assert calls[0] == min(first_finish, 3)


def test_a_step_over_the_running_slots_gives_what_a_step_over_every_slot_gives(tiny_decoder_model):
  """With step buckets the running slots alone are stepped (padded up to a bucket, their per-slot state gathered and
  written back; their cache rows gathered too at most a quarter of the slots, else each reading and writing its own
  cache row in place): the tokens, scores and finishing steps of every running slot are those of a step over every
  slot, wherever the slots sit and with padding rows in the bucket, and the slots not running are left as they
  were, cache included. The default buckets are the powers of two from 4 and 1.5
  times those from 16, below the slots; a bucket above the slots is refused."""
  import jax

  from prompt_tuning import partitioning
  from prompt_tuning.serve.engine import Engine, EngineShapes

  assert EngineShapes(slots=32).step_sizes == (4, 8, 16, 24, 32)
  assert EngineShapes(slots=64).step_sizes == (4, 8, 16, 24, 32, 48, 64)
  assert EngineShapes(slots=4, admit_buckets=(1,)).step_sizes == (4,)  # no default bucket below 4 slots
  with pytest.raises(ValueError, match="exceed slots 4"):
    EngineShapes(slots=4, admit_buckets=(1,), step_buckets=(2, 8))
  config, params = tiny_decoder_model
  sizes = dict(slots=4, input_buckets=(8,), max_prompt_length=2, max_prefix_length=0, max_decode_length=8)
  sizes.update(max_steps_per_call=3, admit_buckets=(4,), score_buckets=(1,), beam_buckets=(1,), methods=("prompt",))
  every = Engine(config, params, partitioning.make_mesh(), EngineShapes(**sizes, step_buckets=()))
  in_place = Engine(config, params, partitioning.make_mesh(), EngineShapes(**sizes, step_buckets=(2,)))
  assert [p for p in in_place.warm_up() if p.startswith("step")] == ["step rows=2 steps<=3", "step rows=4 steps<=3"]
  gathered = Engine(config, params, partitioning.make_mesh(), EngineShapes(**sizes, step_buckets=(1,)))
  all_tokens = np.random.default_rng(0).integers(2, config.vocab_size, (2, 8)).astype(np.int32)

  def decode(engine, steps, running):
    n = len(running)
    tokens, settings = all_tokens[:n], {"max_length": np.array([3, 6][:n], np.int32)}
    settings |= {
      "temperature": np.zeros(n, np.float32),
      "top_k": np.zeros(n, np.int32),
      "top_p": np.ones(n, np.float32),
    }
    state = engine.admit(engine.init_state(), running, tokens, [engine.row_vectors(None)] * n, settings)
    before = jax.device_get(state)
    rng, outs = jax.random.key(0), []
    while len(outs) < 8 and not (outs and np.concatenate([o["done"][:, running] for o in outs]).any(axis=0).all()):
      state, rng, out = engine.step(state, rng, steps, running=running)
      outs.append(out)
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, before, jax.device_get(state)

  # Not the first slots: the gather follows the slot ids; one slot running in the bucket of 2: a padding row. The
  # bucket of 1 (a quarter of the slots) gathers the cache rows too.
  cases = [(in_place, 1, [1, 3]), (in_place, 3, [1, 3]), (in_place, 3, [2]), (gathered, 3, [2]), (gathered, 1, [0])]
  for engine, steps, running in cases:
    idle = [i for i in range(4) if i not in running]
    want, _, every_state = decode(every, steps, running)
    got, before, after = decode(engine, steps, running)
    for key in ("token", "done", "finite"):
      np.testing.assert_array_equal(got[key][:, running], want[key][:, running], err_msg=key)
    # Tolerances: a 1-row matmul rounds differently from a batched one.
    np.testing.assert_allclose(got["logp"][:, running], want["logp"][:, running], rtol=1e-5, atol=1e-6)
    assert got["done"][:, idle].all() and not got["token"][:, idle].any()  # not running: finished, empty
    flat_before = dict(jax.tree_util.tree_leaves_with_path(before))
    flat_every = dict(jax.tree_util.tree_leaves_with_path(every_state))
    for path, leaf in jax.tree_util.tree_leaves_with_path(after):
      name = jax.tree_util.keystr(path)
      np.testing.assert_array_equal(leaf[idle], flat_before[path][idle], err_msg=f"{name}: a slot not running")
      np.testing.assert_allclose(leaf[running], flat_every[path][running], rtol=1e-5, atol=1e-6, err_msg=name)


def test_an_input_in_a_shorter_bucket_decodes_as_in_the_longest(tiny_decoder_model):
  """An admission in a shorter input bucket projects its cross-attention keys and values from its own positions and
  pads them to the slots' encoder length: its steps give the tokens and scores the same requests give admitted in
  the longest bucket, and the cache beyond its positions holds zeros."""
  import jax

  from prompt_tuning import partitioning
  from prompt_tuning.serve.engine import Engine, EngineShapes
  from prompt_tuning.serve.store import make_entry

  config, params = tiny_decoder_model
  shapes = EngineShapes(
    slots=2, input_buckets=(4, 8), max_prompt_length=2, max_prefix_length=0, max_decode_length=6, max_steps_per_call=6,
    admit_buckets=(2,), score_buckets=(1,), beam_buckets=(1,), methods=("prompt",),
  )  # fmt: skip
  engine = Engine(config, params, partitioning.make_mesh(), shapes)
  short = np.array([[5, 9, 7, 1], [11, 3, 1, 0]], np.int32)
  settings = {"max_length": np.array([6, 6], np.int32), "temperature": np.zeros(2, np.float32)}
  settings |= {"top_k": np.zeros(2, np.int32), "top_p": np.ones(2, np.float32)}
  prompt = np.random.default_rng(0).normal(size=(2, config.emb_dim)).astype(np.float32)
  entry = make_entry("p", "prompt", {"prompt": prompt}, engine.limits(), 1, "test")
  rows = [engine.row_vectors(None), engine.row_vectors(entry)]

  def decode(tokens):
    state = engine.admit(engine.init_state(), [0, 1], tokens, rows, settings)
    cache = jax.device_get(state["cache"])
    _, _, out = engine.step(state, jax.random.key(0), 6)
    return out, cache

  got, cache = decode(short)
  want, _ = decode(np.pad(short, ((0, 0), (0, 4))))
  np.testing.assert_array_equal(got["token"], want["token"])
  np.testing.assert_allclose(got["logp"], want["logp"], rtol=1e-5, atol=1e-6)
  for layer in cache["decoder"].values():
    keys = layer["encoder_decoder_attention"]["cached_key"]  # [slots, H, P + 8, Dh]
    assert keys.shape[2] == 2 + 8 and not keys[:, :, 2 + 4 :].any() and keys[:, :, : 2 + 3].any()
