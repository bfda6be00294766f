"""tfds really prepares GLUE and SuperGLUE in the pinned environment: only the network is missing here.

Two halves of tfds's preparation path, for one GLUE and one SuperGLUE builder:
- with the archive already in tfds's download cache (a small archive of the published layout, placed where tfds's
  download manager looks for it, with its INFO file), `download_and_prepare` extracts it, generates the examples and
  writes the dataset; our task then reads it through `--tfds_data_dir`. Any module tfds or etils lacks for that (as
  `importlib_resources` was) fails here.
- without the archive, the download is the one step left, and our command turns its failure into our error naming
  `--tfds_data_dir` and `tfds build`. The network is shut for the test by a proxy that refuses connections
  (127.0.0.1, a closed port), so the test does not depend on the machine's network and fails fast.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.core.download import downloader  # noqa: E402
from tensorflow_datasets.core.download import resource as tfds_resource  # noqa: E402

from prompt_tuning.data import cli as tasks_cli  # noqa: E402


def _boolq_rows(n, labelled=True):
  rows = [{"question": f"is {i} even", "passage": f"{i} is a number.", "idx": i} for i in range(n)]
  for row in rows:
    if labelled:
      row["label"] = row["idx"] % 2 == 0
  return "\n".join(json.dumps(row) for row in rows) + "\n"


def _cola_rows(n):
  return "".join(f"gj04\t{i % 2}\t\tsentence number {i} .\n" for i in range(n))


# The published archives' layout (BoolQ.zip, CoLA.zip), with a few rows each.
ARCHIVES = {
  "super_glue/boolq": {
    "BoolQ/train.jsonl": _boolq_rows(4),
    "BoolQ/val.jsonl": _boolq_rows(3),
    "BoolQ/test.jsonl": _boolq_rows(2, labelled=False),
  },
  "glue/cola": {
    "CoLA/train.tsv": _cola_rows(4),
    "CoLA/dev.tsv": _cola_rows(3),
    "CoLA/test.tsv": "index\tsentence\n0\ta test sentence .\n1\tanother one .\n",
  },
}
TASKS = {"super_glue/boolq": "super_glue_boolq_v102", "glue/cola": "glue_cola_v200"}


@pytest.fixture
def no_network(monkeypatch):
  """Every HTTP(S) request goes to a proxy that refuses connections; tfds retries once, not ten times."""
  for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
    monkeypatch.setenv(name, "http://127.0.0.1:9")
  for name in ("NO_PROXY", "no_proxy"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(downloader, "MAX_RETRIES", 1)


def _place_in_download_cache(builder, download_dir, files):
  """Writes the builder's archive where tfds's download manager finds a finished download (file + INFO)."""
  url = builder.builder_config.data_url
  url_info = builder.url_infos[url]
  path = download_dir / builder.name / tfds_resource.get_dl_fname(url, url_info.checksum)
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w") as archive:
    for name, text in files.items():
      archive.writestr(name, text)
  tfds_resource.write_info_file(
    url=url, path=path, dataset_name=builder.name, original_fname=url.rsplit("/", 1)[-1], url_info=url_info
  )


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_tfds_prepares_once_the_archive_is_downloaded(name, tmp_path, no_network, reference_dir, capsys):
  data_dir, download_dir = tmp_path / "tfds", tmp_path / "downloads"
  builder = tfds.builder(name, data_dir=str(data_dir))
  _place_in_download_cache(builder, download_dir, ARCHIVES[name])
  builder.download_and_prepare(download_dir=str(download_dir))

  splits = {split: info.num_examples for split, info in builder.info.splits.items()}
  assert splits == {"train": 4, "validation": 3, "test": 2}
  vocab = str(reference_dir / "t5_spm_32000.model")
  argv = ["show", TASKS[name], "--split", "validation", "--num", "1", "--vocab", vocab, "--tfds_data_dir"]
  assert tasks_cli.main([*argv, str(data_dir)]) == 0
  shown = capsys.readouterr().out
  assert "--- example 0 (validation)" in shown
  assert ("passage: " in shown) if name == "super_glue/boolq" else ("sentence: sentence number" in shown)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_without_network_the_user_gets_our_error(name, tmp_path, no_network, reference_dir, capsys):
  vocab = str(reference_dir / "t5_spm_32000.model")
  argv = ["show", TASKS[name], "--vocab", vocab, "--tfds_data_dir", str(tmp_path / "tfds")]
  tic = time.perf_counter()
  assert tasks_cli.main(argv) == 2
  elapsed = time.perf_counter() - tic
  # tfds's progress bars go to stderr too; our message is the last line.
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error.startswith(f"error: could not read {name}")
  # The download was the step that failed (not a missing module), and the message says what to do.
  assert "ConnectionError" in error or "ProxyError" in error, error
  assert "ModuleNotFoundError" not in error
  assert f"`tfds build {name}" in error and "--tfds_data_dir" in error
  assert elapsed < 60, f"preparing without network took {elapsed:.0f} s to fail"


def test_a_generation_task_without_its_data_gives_our_error(tmp_path, no_network):
  """XSum (`xsum_v110`): tfds fetches its split lists, then needs the articles downloaded by hand; offline, reading it
  is our error naming the dataset, `tfds build` and --tfds_data_dir (the QA and generation tasks read tfds through
  the same source as GLUE)."""
  import seqio

  from prompt_tuning import data

  source = seqio.get_mixture_or_task("xsum_v110").source
  data.set_tfds_data_dir(str(tmp_path))
  try:
    with pytest.raises(
      data.DataConfigError, match=r"xsum:1.1.0 \[validation\].*tfds build xsum:1.1.0.*--tfds_data_dir"
    ):
      source.get_dataset("validation", shuffle=False)
  finally:
    data.set_tfds_data_dir(None)
