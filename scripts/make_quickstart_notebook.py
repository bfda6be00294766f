"""Writes notebooks/quickstart.ipynb (without outputs) from the cells below: edit here, run, commit both.

.venv/bin/python scripts/make_quickstart_notebook.py
"""

# ruff: noqa: E501  (the notebook's code lines live in strings)

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
  new_markdown_cell("""# Prompt tuning in a few steps

This notebook walks the path of `make demo` one step at a time, on the project's own small pretrained T5 (shipped in
`prompt_tuning/assets/demo_t5`, nothing is downloaded):

1. load the frozen model and its vocabulary;
2. look at the task: "Is a poodle a kind of canine?" -> yes / no, from WordNet, with held-out words;
3. initialize a soft prompt from the class labels;
4. train it with the project's trainer (only the prompt changes);
5. evaluate by ranking the class labels, before and after;
6. inspect the nearest vocabulary tokens of the prompt vectors;
7. export the prompt as a Hugging Face PEFT adapter.

It runs on a CPU in a few minutes. `QUICKSTART_STEPS` (environment variable) sets the number of training steps
(CI uses a handful) and `QUICKSTART_EXAMPLES` the number of test examples scored."""),
  new_code_cell("""import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
STEPS = int(os.environ.get("QUICKSTART_STEPS", "300"))
EXAMPLES = int(os.environ.get("QUICKSTART_EXAMPLES", "1000"))
WORK_DIR = Path(tempfile.mkdtemp(prefix="quickstart_"))

import jax
import numpy as np
import seqio

import prompt_tuning as pt
from prompt_tuning import demo_data, infer, inspect_prompts, prompts, train
from prompt_tuning.checkpoints import peft
from prompt_tuning.data import get_class_labels, set_vocabulary_path

print(f"{STEPS} training steps, {EXAMPLES} test examples, runs in {WORK_DIR}")"""),
  new_markdown_cell("""## 1. The frozen model

A T5 1.1 (gated GELU, untied output layer) of about 10M parameters, pretrained here with T5's span corruption on
WordNet's glosses and the King James Bible (see `MODEL_CARD.md` beside it). It is stored as a Hugging Face folder in
bfloat16; `load_pretrained` reads it back as float32."""),
  new_code_cell("""print((demo_data.DEMO_MODEL_DIR / "MODEL_CARD.md").read_text().split("\\n## ")[0])
config, params = pt.load_pretrained(demo_data.DEMO_MODEL_DIR)
embedding = params["token_embedder"]["embedding"]  # [vocab, embed]
vocabulary = seqio.SentencePieceVocabulary(str(demo_data.DEMO_VOCABULARY), extra_ids=100)
set_vocabulary_path(str(demo_data.DEMO_VOCABULARY))  # the tasks' vocabulary
n_params = sum(x.size for x in jax.tree.leaves(params))
print(f"{n_params:,} parameters; embedding {embedding.shape}; vocabulary {vocabulary.vocab_size} ids")
print(config)"""),
  new_markdown_cell("""## 2. The task

Built from WordNet's noun hierarchy: a positive asks about a true category of the word (1 to 3 levels up), the negative
about a sibling of that category (a co-hyponym, e.g. "feline" for "canine"). No word of the test split appears in
training. It is registered as a seqio task with class labels, so every tool of the project can use it by name."""),
  new_code_cell("""task_name = demo_data.register_wordnet_task()
task = seqio.get_mixture_or_task(task_name)
for example in task.source.get_dataset("test", shuffle=False).take(4).as_numpy_iterator():
    print(example["inputs"].decode(), "->", example["targets"].decode())
print(get_class_labels(task_name))
print({split: task.num_input_examples(split) for split in ("train", "validation", "test")})"""),
  new_markdown_cell("""## 3. A prompt initialized from the class labels

Lester et al. (2021): the first prompt vectors are the embeddings of the labels ("no", "yes"), the others embeddings of
common tokens. An initializer is a function `(rng, embedding [V, D], length) -> prompt [P, D]`."""),
  new_code_cell("""PROMPT_LENGTH = 20
init = prompts.class_labels(["no", "yes"], vocabulary, fallback=prompts.sampled_vocab(num_common=2000))
prompt0 = init(jax.random.key(0), embedding, PROMPT_LENGTH)
print(prompt0.shape)
print(inspect_prompts.format_nearest(inspect_prompts.nearest_tokens(prompt0[:4], embedding, k=3, vocabulary=vocabulary)))"""),
  new_markdown_cell("""## 4. Train the prompt

`RunConfig` is what the gin configs bind (configs/demo/prompt.gin is this run); `train.train` is the real trainer:
the backbone stays frozen, gradients and optimizer state exist for the prompt only, and checkpoints hold the prompt
alone (a few kilobytes)."""),
  new_code_cell("""def run_config(model_dir, prompt_length=PROMPT_LENGTH, prompt_init=init):
    return train.RunConfig(
        model_dir=str(model_dir),
        initial_checkpoint_path=str(demo_data.DEMO_MODEL_DIR),
        mixture_or_task_name=task_name,
        task_feature_lengths={"inputs": 24, "targets": 5},
        prompt=pt.methods.Prompt(prompt_length, prompt_init),
        batch_size=32,
        dropout_rate=0.0,
    )

tuned_dir = WORK_DIR / "prompt"
metrics = train.train(run_config(tuned_dir), num_train_steps=STEPS, checkpoint_every=STEPS, log_every=max(1, STEPS // 10))
print({k: round(v, 4) for k, v in metrics.items() if k.startswith("train/")})
print(sorted(p.name for p in (tuned_dir / "numpy_checkpoints").iterdir()))"""),
  new_markdown_cell("""## 5. Evaluate: rank the class labels

`infer` in score mode computes log p(label | input) for the two class labels and picks the larger, so the answer is
always a valid label. The model was pretrained on span corruption only, so the task is posed as a span to fill in
(Lester et al. 2021, "Span Corruption + Sentinel"): the input ends with `<extra_id_0>` and the labels are
`<extra_id_0> no` / `<extra_id_0> yes`. Compare with the same prompt untrained. Be warned: this small, briefly
pretrained model knows little about hypernymy, and a few hundred steps of prompt tuning barely move it from chance
(see `demo_results.json` beside the model card for the full comparison)."""),
  new_code_cell("""import json

def accuracy(cfg):
    path = infer.infer(cfg, split="test", mode="score", num_examples=EXAMPLES, output_file=str(Path(cfg.model_dir) / "scores.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(r["prediction"] == r["targets"] for r in rows) / len(rows)

before = accuracy(run_config(WORK_DIR / "untrained"))
after = accuracy(run_config(tuned_dir))
print(f"class-label prompt, untrained: {before:.1%}   after {STEPS} steps of prompt tuning: {after:.1%}")"""),
  new_markdown_cell("""## 6. What did the prompt learn?

The nearest vocabulary embeddings (cosine similarity) of each trained prompt vector; the first two started as the
embeddings of "no" and "yes"."""),
  new_code_cell("""prompt = prompts.load_prompt_file(tuned_dir, embed_dim=config.emb_dim)  # the latest numpy checkpoint
print(inspect_prompts.format_nearest(inspect_prompts.nearest_tokens(prompt[:6], embedding, k=4, vocabulary=vocabulary)))
print("moved from its initialization by", float(np.linalg.norm(prompt - np.asarray(prompt0))))"""),
  new_markdown_cell("""## 7. Export to PEFT

The prompt as a Hugging Face PEFT prompt-tuning adapter (`adapter_config.json` + `adapter_model.safetensors`);
`PeftModel.from_pretrained` puts it in front of the same model's inputs (the demo folder opens with
`transformers.T5ForConditionalGeneration.from_pretrained`)."""),
  new_code_cell("""adapter = peft.export_peft_adapter(prompt, WORK_DIR / "peft_adapter", base_model_name_or_path=str(demo_data.DEMO_MODEL_DIR))
print(sorted(p.name for p in Path(adapter).iterdir()))
print(json.loads((Path(adapter) / "adapter_config.json").read_text())["num_virtual_tokens"])
assert np.allclose(peft.load_peft_adapter(adapter), prompt)"""),
]
nb = new_notebook(
  cells=cells,
  metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
  },
)
nbformat.write(nb, str(Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"))
