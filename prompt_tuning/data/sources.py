"""Where task data comes from: tensorflow-datasets, read through a `seqio.FunctionDataSource`.

`seqio.TfdsDataSource` fixes its data directory when the task is registered (on import, before any flag is parsed)
and asks tfds metadata for split sizes, which an unprepared or mocked dataset does not have. `TfdsSource` instead:

- looks the data directory up each time it reads: `set_tfds_data_dir(path)` (what `--tfds_data_dir` should call),
  else the gin binding `prompt_tuning.data.tfds_data_dir.path`, else `$TFDS_DATA_DIR` as it is now, else tfds's
  default (`~/tensorflow_datasets`);
- can read different splits from different datasets (the QQP -> MRPC transfer tasks train on one, evaluate on the
  other), and filter a split (WSC trains on its positive examples only);
- reports split sizes from tfds metadata when the dataset is prepared, else from the published sizes below (used by
  `seqio.mixing_rate_num_examples`).
"""

import dataclasses
import os
from collections.abc import Callable, Mapping

import gin
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.data.errors import DataConfigError

_data_dir_override: str | None = None

# Published split sizes (examples before preprocessing) of the datasets the built-in tasks read.
SPLIT_SIZES: dict[str, dict[str, int]] = {
  "super_glue/boolq:1.0.2": {"train": 9427, "validation": 3270, "test": 3245},
  "super_glue/cb:1.0.2": {"train": 250, "validation": 56, "test": 250},
  "super_glue/copa:1.0.2": {"train": 400, "validation": 100, "test": 500},
  "super_glue/multirc:1.0.2": {"train": 27243, "validation": 4848, "test": 9693},
  "super_glue/record:1.0.2": {"train": 100730, "validation": 10000, "test": 10000},
  "super_glue/rte:1.0.2": {"train": 2490, "validation": 277, "test": 3000},
  "super_glue/wic:1.0.2": {"train": 5428, "validation": 638, "test": 1400},
  "super_glue/wsc.fixed:1.0.2": {"train": 554, "validation": 104, "test": 146},
  "super_glue/axb:1.0.2": {"test": 1104},
  "super_glue/axg:1.0.2": {"test": 356},
  "glue/cola:2.0.0": {"train": 8551, "validation": 1043, "test": 1063},
  "glue/sst2:2.0.0": {"train": 67349, "validation": 872, "test": 1821},
  "glue/mrpc:2.0.0": {"train": 3668, "validation": 408, "test": 1725},
  "glue/qqp:2.0.0": {"train": 363846, "validation": 40430, "test": 390965},
  "glue/stsb:2.0.0": {"train": 5749, "validation": 1500, "test": 1379},
  "glue/mnli:2.0.0": {
    "train": 392702,
    "validation_matched": 9815,
    "validation_mismatched": 9832,
    "test_matched": 9796,
    "test_mismatched": 9847,
  },
  "glue/qnli:2.0.0": {"train": 104743, "validation": 5463, "test": 5463},
  "glue/rte:2.0.0": {"train": 2490, "validation": 277, "test": 3000},
  "glue/wnli:2.0.0": {"train": 635, "validation": 71, "test": 146},
  "squad/v1.1:3.0.0": {"train": 87599, "validation": 10570},
  # MRQA 2019's out-of-domain dev sets (Fisch et al. 2019, Table 1), tfds's `test` split.
  "mrqa/bio_asq:1.0.0": {"test": 1504},
  "mrqa/drop:1.0.0": {"test": 1503},
  "mrqa/duo_rc:1.0.0": {"test": 1501},
  "mrqa/race:1.0.0": {"test": 674},
  "mrqa/relation_extraction:1.0.0": {"test": 2948},
  "mrqa/textbook_qa:1.0.0": {"test": 1503},
}


def set_tfds_data_dir(path: str | None) -> None:
  """Makes every built-in task read tfds data from `path` (None: back to gin / the tfds default)."""
  global _data_dir_override
  _data_dir_override = path
  seqio.set_tfds_data_dir_override(path)  # Also for seqio.TfdsDataSource tasks registered elsewhere.


_use_cached_tasks = False


def set_use_cached_tasks(use_cached: bool) -> None:
  """USE_CACHED_TASKS (t5x's macro): read tasks that support it from seqio's offline cache (folders added with
  `seqio.add_global_cache_dirs`, i.e. --seqio_additional_cache_dirs)."""
  global _use_cached_tasks
  _use_cached_tasks = bool(use_cached)


def use_cached_tasks() -> bool:
  """Whether runs read seqio's offline cache (`set_use_cached_tasks`)."""
  return _use_cached_tasks


def tfds_data_dir_override() -> str | None:
  """Returns the directory set by `set_tfds_data_dir`, if any."""
  return _data_dir_override


@gin.configurable(module="prompt_tuning.data")
def tfds_data_dir(path: str | None = None) -> str | None:
  """Returns the tfds data directory: `set_tfds_data_dir`, else gin's `path`, else `$TFDS_DATA_DIR`, else None.

  tfds itself reads `$TFDS_DATA_DIR` once, when it is imported; reading it here at each call also honors a value set
  later (e.g. by a command line front end after its imports). None means tfds's default directory.
  """
  return _data_dir_override or path or os.environ.get("TFDS_DATA_DIR") or None


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
  """One split of a tfds dataset, e.g. `TfdsSplit("glue/mrpc:2.0.0", "validation")`."""

  name: str
  split: str


class TfdsSource(seqio.FunctionDataSource):
  """Reads each split from tensorflow-datasets at call time (see the module docstring)."""

  def __init__(
    self,
    splits: Mapping[str, TfdsSplit],
    split_filters: Mapping[str, Callable[[dict[str, tf.Tensor]], tf.Tensor]] | None = None,
  ):
    """Creates the source.

    Args:
      splits: maps each split name of the task to the tfds dataset and split it reads.
      split_filters: per task split, a predicate on raw examples; examples where it is false are dropped.
    """
    self._tfds_splits = dict(splits)
    self._split_filters = dict(split_filters or {})
    super().__init__(dataset_fn=self._load, splits=list(self._tfds_splits), caching_permitted=True)

  @classmethod
  def from_tfds_name(cls, name: str, splits: Mapping[str, str] | None = None, **kwargs) -> "TfdsSource":
    """Returns a source reading every split (or `splits`: task split -> tfds split) of one tfds dataset."""
    splits = splits or {split: split for split in SPLIT_SIZES[name]}
    return cls({split: TfdsSplit(name, tfds_split) for split, tfds_split in splits.items()}, **kwargs)

  @property
  def tfds_splits(self) -> dict[str, TfdsSplit]:
    return dict(self._tfds_splits)

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    """Reads `split`, shuffling tfds files if `shuffle` (seqio then shuffles examples and shards them per host)."""
    del sequence_length, use_cached, num_epochs  # Handled by seqio after the source.
    if shard_info and shard_info.num_shards > 1:
      # list_shards() reports one shard per split, so seqio shards examples rather than asking the source to.
      raise ValueError("TfdsSource reads whole splits; let seqio shard the examples")
    return self._load(split, shuffle_files=shuffle, seed=seed)

  def _load(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    if split not in self._tfds_splits:
      raise ValueError(f"split {split!r} is not one of this task's splits {sorted(self._tfds_splits)}")
    source, data_dir = self._tfds_splits[split], tfds_data_dir()
    try:
      dataset = tfds.load(
        source.name,
        split=source.split,
        data_dir=data_dir,
        shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
      )
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds; all mean the same thing to the user.
      raise DataConfigError(
        f"could not read {source.name} [{source.split}] from {data_dir or 'the default tfds data directory'} "
        f"({type(e).__name__}: {e}); prepare it first (`tfds build {source.name}`) and pass its directory as "
        "--tfds_data_dir (or bind prompt_tuning.data.tfds_data_dir.path)"
      ) from e
    if split in self._split_filters:
      dataset = dataset.filter(self._split_filters[split])
    return dataset

  def num_input_examples(self, split: str) -> int | None:
    """Returns the split's size from tfds metadata when prepared, else its published size, else None."""
    source = self._tfds_splits.get(split)
    if source is None:
      return None
    size = _prepared_split_size(source)
    return size if size is not None else SPLIT_SIZES.get(source.name, {}).get(source.split)

  def __repr__(self) -> str:
    splits = ", ".join(f"{k}={v.name}[{v.split}]" for k, v in self._tfds_splits.items())
    return f"TfdsSource({splits})"

  __str__ = __repr__


_prepared_sizes: dict[tuple[TfdsSplit, str | None], int] = {}


def _prepared_split_size(source: TfdsSplit) -> int | None:
  """The split's size from tfds metadata, when the dataset is prepared in the current data directory."""
  key = (source, tfds_data_dir())
  if key not in _prepared_sizes:
    try:
      splits = tfds.builder(source.name, data_dir=key[1]).info.splits
      if source.split not in splits:
        return None  # Not prepared (yet): look again next time.
      _prepared_sizes[key] = splits[source.split].num_examples
    except Exception:  # noqa: BLE001 - metadata is optional here; fall back to the published size.
      return None
  return _prepared_sizes[key]


def check_cached(task_or_mixture: seqio.Task | seqio.Mixture) -> None:
  """Under USE_CACHED_TASKS, each task that supports seqio's offline cache must be found in a cache folder.

  Tasks that do not support caching are read on the fly, as seqio and t5x do.

  Raises:
    DataConfigError: a cacheable task is in no cache folder, saying where it looked and what to do.
  """
  tasks = task_or_mixture.tasks if isinstance(task_or_mixture, seqio.Mixture) else [task_or_mixture]
  for task in tasks:
    if task.supports_caching and not task.cache_dir:
      raise DataConfigError(
        f"USE_CACHED_TASKS=True, but task {task.name!r} is not in seqio's cache (searched "
        f"{list(seqio.utils.get_global_cache_dirs()) or 'no folder'}): cache it with seqio's cache_tasks_main and pass "
        "its folder as --seqio_additional_cache_dirs, or set USE_CACHED_TASKS=False"
      )
