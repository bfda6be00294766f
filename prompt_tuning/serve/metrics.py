"""Prometheus metrics of the server (prometheus-client), one registry per server.

- `serve_queue_depth`: requests submitted and not yet taken by the batcher;
- `serve_requests_in_flight`: generate/score requests accepted and not yet answered;
- `serve_batch_size{kind}`: rows per admission, decoding step, beam batch and scoring batch;
- `serve_request_latency_seconds{kind}`: submission to result, per method;
- `serve_generated_tokens_total`: tokens decoded (tokens/s is its rate);
- `serve_engine_seconds{program}`: wall time of each call into the model (admit, step, beam, score), the host's
  wait for its outputs included: its sum beside the elapsed time is the share the batcher spends in the model;
- `serve_prompt_cache_total{result}`: device prompt cache hits and misses;
- `serve_library_prompts`, `serve_library_bytes`, `serve_device_cache_bytes`: the library's size.
"""

from __future__ import annotations

import prometheus_client as prom

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_ENGINE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
  def __init__(self):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.queue_depth = prom.Gauge("serve_queue_depth", "requests waiting for the batcher", registry=r)
    self.in_flight = prom.Gauge(
      "serve_requests_in_flight", "generate/score requests accepted, not answered", registry=r
    )
    self.batch_size = prom.Histogram("serve_batch_size", "rows per batch", ["kind"], buckets=_BATCH_BUCKETS, registry=r)
    self.latency = prom.Histogram(
      "serve_request_latency_seconds", "submission to result", ["kind"], buckets=_LATENCY_BUCKETS, registry=r
    )
    self.engine_seconds = prom.Histogram(
      "serve_engine_seconds", "wall time of one call into the model", ["program"], buckets=_ENGINE_BUCKETS, registry=r
    )
    self.generated_tokens = prom.Counter("serve_generated_tokens", "tokens decoded", registry=r)
    self.prompt_cache = prom.Counter("serve_prompt_cache", "device prompt cache lookups", ["result"], registry=r)
    self.library_prompts = prom.Gauge("serve_library_prompts", "prompts in the library", registry=r)
    self.library_bytes = prom.Gauge("serve_library_bytes", "host bytes of the library", registry=r)
    self.device_cache_bytes = prom.Gauge("serve_device_cache_bytes", "bytes of prompts cached on device", registry=r)

  def render(self) -> bytes:
    return prom.generate_latest(self.registry)
