"""A real `gcp-storage-emulator` server process on a free 127.0.0.1 port (tests/conftest.py's session fixture
`gcs_emulator` starts one per test session; a test that stops it mid-run starts its own)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "t5-test-bucket"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(log: Path, bucket: str = BUCKET, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
  """(the server process, its URL http://127.0.0.1:PORT): in memory, with `bucket` made, listening."""
  port = free_port()
  cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}"]
  # Its request log goes to a file: a pipe nobody reads fills up and stalls the server.
  with open(log, "wb") as log_file:
    proc = subprocess.Popen([*cmd, "--in-memory", f"--default-bucket={bucket}"], stdout=log_file, stderr=log_file)
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"the GCS emulator exited: {log.read_text()[-2000:]}")
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return proc, f"http://127.0.0.1:{port}"
    time.sleep(0.1)
  stop(proc)
  raise RuntimeError(f"the GCS emulator did not listen on 127.0.0.1:{port} within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
  proc.terminate()
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def env(url: str) -> dict[str, str]:
  """The variables that send tensorstore (checkpoint arrays) and gcsfs (every other file) to the emulator."""
  return {"TENSORSTORE_GCS_HTTP_URL": url, "STORAGE_EMULATOR_HOST": url}
