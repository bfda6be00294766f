"""Registers the built-in tasks and mixtures with seqio, under the names the reference implementation uses.

Each benchmark in `benchmarks.py` gives six tasks; for BoolQ:

  super_glue_boolq_v102                     T5's format: "boolq passage: ... question: ..."
  taskless_super_glue_boolq_v102            no benchmark name: "passage: ... question: ..."
  task_index_super_glue_boolq_v102          a sentinel naming the task instead: "<extra_id_0> passage: ..."
  ..._examples (of each of the three)       the same, plus a text summary of a few predictions among the metrics

Mixtures, proportional to the number of training examples (`seqio.mixing_rate_num_examples`), in the same six
variants: `super_glue_v102_proportional` (the eight SuperGLUE tasks with a train split) and `glue_v200_proportional`
(the nine GLUE tasks), e.g. `task_index_glue_v200_proportional_examples`; and the reference's zero-shot QA transfer
mixtures, `squad_to_<mrqa name>` and `squad_to_mrqa` (`qa_transfer_mixtures`).

`register_builtin_tasks()` runs on `import prompt_tuning.data` and skips names that are already registered, so it is
safe to call again.
"""

import functools
import itertools

import seqio

from prompt_tuning.data import class_labels, metrics, postprocessors
from prompt_tuning.data.benchmarks import MRQA_OUT_OF_DOMAIN, Benchmark, all_benchmarks, mrqa_task_name
from prompt_tuning.data.errors import UnknownTaskError
from prompt_tuning.data.vocab import output_features, sentinel

PREFIX_VARIANTS = ("", "taskless_", "task_index_")
SUFFIX_VARIANTS = ("", "_examples")
MIXTURES = {"super_glue": "super_glue_v102_proportional", "glue": "glue_v200_proportional"}


def variant_name(base_name: str, prefix_variant: str = "", suffix_variant: str = "") -> str:
  """Returns e.g. `taskless_super_glue_boolq_v102_examples` from its parts."""
  return f"{prefix_variant}{base_name}{suffix_variant}"


def _input_prefix(benchmark: Benchmark, prefix_variant: str) -> str | None:
  if prefix_variant == "taskless_":
    return None
  if prefix_variant == "task_index_":
    return sentinel(benchmark.task_index)
  return benchmark.prefix


def standard_preprocessors(formatter=None) -> list:
  """The pipeline of every task: format to text (unless the source already did), tokenize, (cache point), EOS."""
  return ([formatter] if formatter is not None else []) + [
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    seqio.preprocessors.append_eos_after_trim,
  ]


def scoring(postprocess_fn, metric_fns, with_examples: bool) -> dict:
  """Returns the task's `postprocess_fn` and `metric_fns`, wrapped to also log example texts if `with_examples`."""
  if not with_examples:
    return {"postprocess_fn": postprocess_fn, "metric_fns": list(metric_fns)}
  return {
    "postprocess_fn": postprocessors.with_examples(postprocess_fn),
    "metric_fns": [metrics.on_values(fn) for fn in metric_fns] + [metrics.text_examples],
  }


def _register_task(name: str, **task_kwargs) -> None:
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, output_features=output_features(), **task_kwargs)


def register_benchmark(benchmark: Benchmark) -> list[str]:
  """Registers the six variants of one benchmark; returns their names."""
  names = []
  for prefix_variant, suffix_variant in itertools.product(PREFIX_VARIANTS, SUFFIX_VARIANTS):
    name = variant_name(benchmark.name, prefix_variant, suffix_variant)
    formatter = functools.partial(benchmark.formatter, prefix=_input_prefix(benchmark, prefix_variant))
    _register_task(
      name,
      source=benchmark.source,
      preprocessors=standard_preprocessors(formatter),
      **scoring(benchmark.postprocess_fn, benchmark.metric_fns, with_examples=bool(suffix_variant)),
    )
    class_labels.register_class_labels(name, benchmark.class_labels)
    names.append(name)
  return names


def _register_mixtures(base_name: str, benchmarks: list[Benchmark], rate=seqio.mixing_rate_num_examples) -> None:
  for prefix_variant, suffix_variant in itertools.product(PREFIX_VARIANTS, SUFFIX_VARIANTS):
    name = variant_name(base_name, prefix_variant, suffix_variant)
    if name in seqio.MixtureRegistry.names():
      continue
    members = [variant_name(b.name, prefix_variant, suffix_variant) for b in benchmarks]
    seqio.MixtureRegistry.add(name, members, default_rate=rate)


def qa_transfer_mixtures() -> dict[str, list[str]]:
  """Lester et al. section 6's zero-shot domain transfer: train on SQuAD, evaluate out of domain (MRQA).

  `squad_to_<name>` holds SQuAD and one MRQA set, `squad_to_mrqa` SQuAD and all six (the reference's names; every
  variant as for the tasks, e.g. `squad_to_textbookqa_examples`). The MRQA sets have no train split, so training
  on a mixture reads SQuAD alone (seqio skips a member without the split) and evaluating it scores every member.
  Base names -> member base names.
  """
  squad = "squad_v010_allanswers"
  mixtures = {f"squad_to_{name}": [squad, mrqa_task_name(name)] for name in MRQA_OUT_OF_DOMAIN}
  mixtures["squad_to_mrqa"] = [squad] + [mrqa_task_name(name) for name in MRQA_OUT_OF_DOMAIN]
  return mixtures


def register_builtin_tasks() -> None:
  """Registers every built-in task and mixture (idempotent)."""
  benchmarks = all_benchmarks()
  for benchmark in benchmarks:
    register_benchmark(benchmark)
  for collection, base_name in MIXTURES.items():
    members = [b for b in benchmarks if b.collection == collection and b.trainable]
    _register_mixtures(base_name, members)
  by_name = {b.name: b for b in benchmarks}
  for base_name, members in qa_transfer_mixtures().items():
    _register_mixtures(base_name, [by_name[m] for m in members], rate=1.0)


def builtin_task_names() -> list[str]:
  """Names of every built-in task (not mixtures), in registration order."""
  return [
    variant_name(b.name, p, s) for b in all_benchmarks() for p, s in itertools.product(PREFIX_VARIANTS, SUFFIX_VARIANTS)
  ]


def builtin_mixture_names() -> list[str]:
  """Names of every built-in mixture."""
  bases = [*MIXTURES.values(), *qa_transfer_mixtures()]
  return [variant_name(m, p, s) for m in bases for p, s in itertools.product(PREFIX_VARIANTS, SUFFIX_VARIANTS)]


def all_names() -> list[str]:
  """Every registered task and mixture name (including those registered by other code), sorted."""
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
  """Returns the registered task or mixture called `name`.

  Raises:
    UnknownTaskError: no such name; the message suggests close matches.
  """
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  raise UnknownTaskError(name, all_names())
