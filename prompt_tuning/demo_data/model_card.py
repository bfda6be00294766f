"""MODEL_CARD.md of the shipped demo models, written by the export step from the training facts: demo_t5 (the 10M
span-corruption model, with the demo's measured history) and the rest of the demo family (FAMILY_TEMPLATE)."""

from __future__ import annotations

from pathlib import Path

TEMPLATE_HEAD = """# demo_t5: the project's own small pretrained T5

A T5 1.1 encoder-decoder pretrained from scratch by this project, so that `make demo` can show prompt tuning on a
real pretrained model with nothing downloaded at run time. It is a teaching and testing model: small, briefly
trained, English only, and far weaker than any published T5.

## Model

- Architecture: T5 1.1 (`t5_1_1_demo` in `prompt_tuning/models/configs.py`): {layers} encoder + {layers} decoder
  layers, width {emb_dim}, {num_heads} heads of {head_dim}, gated-GELU MLP of {mlp_dim}, untied output layer,
  32 relative-position buckets, no dropout.
- Parameters: {parameters:,}. Stored as a Hugging Face folder (`config.json` + `model.safetensors`) in bfloat16
  ({model_mb:.1f} MB); `prompt_tuning.load_pretrained` reads it back as float32, and
  `transformers.T5ForConditionalGeneration.from_pretrained` opens it too.
- Vocabulary: `sentencepiece.model`, a unigram SentencePiece model of {pieces:,} pieces trained on the same corpus
  (pad 0, EOS 1, unk 2, no BOS, like T5), plus 100 sentinels: `seqio.SentencePieceVocabulary(path, extra_ids=100)`
  has {vocab_size:,} ids, the embedding's rows; `<extra_id_0>` is id {last_id}.

## Training

- Objective: T5's span corruption (`prompt_tuning/data/span_corruption.py`): 15% of the tokens in spans of mean
  length 3, each replaced by a sentinel; inputs of 128 tokens (chunks of 141), targets of up to 29.
- Recipe: `configs/pretrain_demo.gin`, run with the project's own trainer (model tuning of a randomly initialized
  backbone): Adafactor with T5's pretraining settings (parameter scaling, decay 0.8, clipping 1.0), batch 32, z-loss
  1e-4, seed 0; learning rate 0.01 constant for steps 1-1000, then 0.03 (`PHASES` in
  `prompt_tuning/demo_data/build.py`, a resumed run). At lr 0.01 the loss sat on a plateau near 4.6 where the decoder
  all but ignored the encoder (loss with the true inputs 4.78, with another example's inputs 4.81, at step 750);
  after the increase it left the plateau around step 1300 (at step 1500: 4.26 with the true inputs, 5.21 with
  another example's).
- Steps: {steps:,} (about {epochs:.1f} passes over the corpus), on {machine} in {hours:.1f} hours of wall-clock time
  (shared with other work).
- Final loss: training {train_loss:.3f} (cross-entropy {train_xent:.3f} per target token){eval_text}.

"""

DATA = """## Data and licences

- **WordNet 3.0** glosses and usage examples, from Debian's `wordnet-base` (/usr/share/wordnet/data.noun, .verb,
  .adj, .adv). Each synset is written as a dictionary entry: its lemmas, its direct hypernyms' first lemmas in
  parentheses, its definition and examples. Licence (permissive, notice required): "WordNet 3.0 Copyright 2006 by
  Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
  UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. [...]" -- the full WordNet 3.0 licence is
  in /usr/share/doc/wordnet-base/copyright and at https://wordnet.princeton.edu/license-and-commercial-use; it
  permits use, copying, modification and distribution for any purpose with that notice.
- **The King James Version of the Bible** (1611; its text is in the public domain), from Debian's `bible-kjv-text`
  (the Bible Retrieval System's compressed text: "unrestricted use provided that this legend is included"), printed
  by Debian's `bible` program (package `bible-kjv`, GPL version 2 or later), which is only run as a tool: no GPL code
  or data is part of the model or of this project. One chapter per passage, verse numbers removed.
- Corpus: {corpus_chars} characters, WordNet entries grouped 16 to a passage, passages shuffled (seed 0); one passage
  in 100 is held out for validation. No weights here were trained on copyleft text.
- The demo's WordNet tasks (`prompt_tuning/assets/wordnet_categories`, animal or plant; `wordnet_task`, hypernymy)
  are derived from the same WordNet release and carry the same licence. The model saw every WordNet entry during
  pretraining, including the definitions and direct hypernyms of the tasks' held-out words (their lexicographer
  classes never appear): the tasks measure how well a method draws on what the frozen model learned, not knowledge
  from nowhere.

"""

TEMPLATE_TAIL = """## Reproduce

    sudo apt-get install wordnet-base bible-kjv
    make demo-model            # scripts/build_demo_model.sh: corpus, vocab, pretrain, export, task

The corpus, the vocabulary and the task files are byte-for-byte reproducible; pretraining is seeded, but XLA's CPU
arithmetic can differ between machines, so retrained weights match only approximately.
`python -m prompt_tuning.demo --record` rewrites `demo_results.json`, the reference run of the demo.

## Results on the demo task, and limits

Trained for about an hour on two CPU cores, it fills span-corruption blanks with fluent-looking fragments of WordNet
and Bible language, but its knowledge is shallow. On the demo's task, "Is a cachalot an animal or a plant?" after the
word's definition (WordNet's lexicographer classes, 1,000 held-out words; `python -m prompt_tuning.demo`, the full
run in `demo_results.json`, 8 minutes on 2 CPU cores), trained and scored with the softmax over the labels' tokens
(`RunConfig.class_label_softmax`, see below), 400 steps each: the frozen model 50.0% with no prompt and with a random
one (it answers "plant" to all), **prompt tuning 71.1%** (20 tokens, 5,120 parameters), prefix tuning 84.3%, model
tuning 88.6%.

On the demo's first task, WordNet hypernymy ("Is a poodle a kind of canine?", `prompt_tuning/assets/wordnet_task`),
**no method beats chance**: the frozen model, prompt tuning, prefix tuning and even model tuning all score 50.0% by
label ranking after 400 steps, and model tuning stays at chance on its own training questions too.

Why, measured (test split unless noted; details in the project's issue notes):

- Little of the needed knowledge is there to draw on: ranking a held-out word's true category above its negative by
  the frozen model's span-fill likelihood, in the pretraining format itself ("poodle (<extra_id_0>): <definition>"),
  calibrated by the category's prior, is right for 57% of pairs (53% for the question as asked).
- Giving the model the word's definition in the input (`WITH_DEFINITION`, where the rule "yes if the category is named
  in the definition" alone scores 72%) does not help within 400 steps: model tuning 49.4%.
- A prompt barely steers this frozen model. On a control task whose answer is written in the input ("tern says
  yes." -> yes), a 20-token prompt stays at 50.6% after 150 steps and a 100-token prompt reaches 75.2% after 200
  (Lester et al. 2021, section 4: small models need long prompts); on "person or thing?" with the definition in the
  input, a 100-token prompt at lr 1.0 learns the answer format (loss 0.57) but not the answer (51.9%, 500 steps).
- Pretraining on to step 3,000 (loss 3.77) changed none of these.
- LM adaptation (`configs/lm_adapt_demo.gin`, 600 steps of prefix LM, eval loss 4.63) makes the model steerable --
  the control task reaches 99.4% with a 100-token prompt in 300 steps -- but not knowledgeable: the WordNet task with
  definitions stays at 49.4% and "person or thing?" at 52.4% (100-token prompts, 400 and 300 steps).
- Ranking class labels with their EOS (as T5X does) hides what signal there is. The model almost never ends a span
  with EOS: after "<extra_id_0> animal" the EOS costs 8.9-10.0 nats (the model expects `<extra_id_1>`, 1.2 nats), and
  that cost depends on the label word (about 0.6 nats less after "plant" than after "animal"), so every ranked run
  predicts one label until a method has learned to end its answers. Frozen, on "Is it an animal or a plant?" with
  the definition (WordNet's lexicographer classes noun.animal and noun.plant, held-out words), the ranking scores
  49.8% with EOS and 57.4% without.
- That animal-or-plant task is within the frozen encoder's reach where hypernymy is not: a logistic regression on its
  mean output separates held-out words on 79% (hypernymy with definitions: 50%). A 20-token prompt trained with
  cross-entropy over the whole vocabulary raises the ranking's AUC from 0.58 (frozen, without EOS) to 0.66-0.81, but
  keeps a 0.5-1.1-nat bias toward "plant" that the training moves slowly and unsteadily: 50% accuracy after 300-600
  steps (Adafactor lr 0.3 or 1.0, Adam lr 0.01 or 0.1), 55.6% and 64.2% after 1,000 (Adam lr 0.1; question and
  "poodle (<extra_id_0>): <definition>" forms), 55.0% after 1,500. A 100-token prompt did no better in 300 steps.
- Normalizing the softmax over the labels' tokens and EOS only (`RunConfig.class_label_softmax`, the verbalizer loss
  of Schick & Schuetze 2021) removes that bias: the same 20-token prompt at the paper's Adafactor lr 0.3 reaches
  70.8% in 400 steps (AUC 0.78; 233 "animal", 267 "plant"), with Adam lr 0.1 68.6%; the frozen model scored the same
  way answers "plant" to all (49.8%, AUC 0.51). A prompt can teach this model to choose among labels long before it
  can teach it to put its whole output distribution on them.

This is the regime where Lester et al. (2021, section 3.2 and figure 3) found prompt tuning fails: a small model
trained only on span corruption. LM adaptation fixes the steering, not the knowledge; the labels' softmax lets a
prompt use what the model does know (animal or plant), not what it does not (hypernymy). Much longer pretraining is
the next thing to try. Do not use this model for anything but demonstrations and tests.
"""


TEMPLATE = TEMPLATE_HEAD + DATA + TEMPLATE_TAIL


# The other members of the demo family (#17): the smaller span-corruption models and every LM-adapted one.
FAMILY_TEMPLATE_HEAD = """# {name}: {title}

{summary}

It is one of the project's family of demo models (`prompt_tuning.demo_data.DEMO_FAMILY`: 0.93M, 3.6M and 10.1M
parameters, each span-corruption only and LM-adapted), built by one recipe on one corpus and vocabulary so that a
sweep (`configs/sweeps/demo_scale.gin`) can ask how prompt tuning scales with size here. Like `demo_t5` it is a
teaching and testing model: small, briefly trained, English only, and far weaker than any published T5.

## Model

- Architecture: T5 1.1 (`t5_1_1_{size}` in `prompt_tuning/models/configs.py`, `gin/models/sizes/{size}.gin`):
  {layers} encoder + {layers} decoder layers, width {emb_dim}, {num_heads} heads of {head_dim}, gated-GELU MLP of
  {mlp_dim}, untied output layer, 32 relative-position buckets, no dropout.
- Parameters: {parameters:,}. Stored as a Hugging Face folder (`config.json` + `model.safetensors`) in bfloat16
  ({model_mb:.1f} MB); `prompt_tuning.load_pretrained` reads it back as float32. In gin:
  `INITIAL_CHECKPOINT_PATH = @prompt_tuning.demo_data.demo_model_path()` with
  `prompt_tuning.demo_data.demo_model_path.size = '{size}'`{lm_binding}.
- Vocabulary: the family's one SentencePiece model, `demo_t5/sentencepiece.model`
  (`prompt_tuning.demo_data.DEMO_VOCABULARY`; not copied here), {pieces:,} pieces + 100 sentinels = {vocab_size:,}
  ids, the embedding's rows.

## Training

{training}
- Machine: {machine}, {hours:.1f} hours of wall-clock time for this stage (shared with other work).
- Final loss: training {train_loss:.3f} (cross-entropy {train_xent:.3f} per target token){eval_text}.

"""

SPAN_TRAINING = """- Objective: T5's span corruption (`prompt_tuning/data/span_corruption.py`): 15% of the tokens in
  spans of mean length 3, each replaced by a sentinel; inputs of 128 tokens (chunks of 141), targets of up to 29.
- Recipe: `demo_t5`'s exactly (`configs/pretrain_demo.gin` with `SIZE = '{size}'`): a randomly initialized backbone,
  Adafactor with T5's pretraining settings (parameter scaling, decay 0.8, clipping 1.0), batch 32, z-loss 1e-4, seed
  0; learning rate 0.01 for steps 1-1000, then 0.03 (`PHASES` in `prompt_tuning/demo_data/build.py`).
- Steps: {steps:,} (about {epochs:.1f} passes over the corpus)."""

LM_TRAINING = """- Objective: LM adaptation (Lester et al. 2021, section 3.2): every weight of `{initialized_from}` (its
  {initial_steps:,} steps of span corruption) trained on T5's prefix-LM objective over the same corpus: a chunk of
  63 tokens is cut at a random point, the model reads the first part and writes the rest
  (`prompt_tuning/data/prefix_lm.py`); up to 64 input and 64 target tokens.
- Recipe: `configs/lm_adapt_demo.gin` with `SIZE = '{size}'`: the pretraining optimizer (Adafactor lr 0.01,
  parameter scaling), batch 32, z-loss 1e-4, seed 0. The paper adapts T5 for 100,000 steps, a tenth of its
  pretraining; this is half of the demo pretraining.
- Steps: {steps:,} of LM adaptation (about {epochs:.1f} passes over the corpus)."""

FAMILY_TEMPLATE_TAIL = """## Reproduce

    sudo apt-get install wordnet-base bible-kjv
    python -m prompt_tuning.demo_data.build corpus vocab              # once for the family
    python -m prompt_tuning.demo_data.build {steps_to_run} --size {size}

The corpus and the vocabulary are byte-for-byte reproducible; training is seeded, but XLA's CPU arithmetic can differ
between machines, so retrained weights match only approximately.

## Limits

What the demo models can and cannot learn from a prompt, measured on the 10M `demo_t5`, is in its model card
(`prompt_tuning/assets/demo_t5/MODEL_CARD.md`, "Results on the demo task, and limits"): trained this briefly, a
model this small knows little beyond the surface of its corpus. Do not use it for anything but demonstrations, tests
and small sweeps.
"""

_TITLES = {
  False: (
    "a smaller demo T5, span corruption only",
    "A T5 1.1 encoder-decoder pretrained from scratch by this project.",
  ),
  True: (
    "a demo T5, LM-adapted",
    "A T5 1.1 encoder-decoder pretrained from scratch by this project and then LM-adapted, as Lester et al. (2021)\n"
    "adapted T5 1.1 before prompt tuning it: they found span-corruption-only models hard to prompt-tune.",
  ),
}


def write_model_card(out_dir: Path, facts: dict, config, corpus_chars: int, pieces: int, vocab_size: int) -> Path:
  """Fills the template from the export's facts and the model's config; returns the card's path. Facts with a
  "size" (the export of any member but the 10M span-corruption demo_t5) get the family's card."""
  model_mb = (out_dir / "model.safetensors").stat().st_size / 1e6
  lm_adapted = facts.get("objective") == "prefix_lm"
  tokens_per_step = 32 * (63 if lm_adapted else 141)
  corpus_tokens = corpus_chars / 3.66  # Measured on the validation passages: 3.66 characters per token.
  eval_text = ""
  if facts.get("final_eval_loss") is not None:
    targets = "prefix-LM continuations" if lm_adapted else "span-corruption targets"
    eval_text = (
      f"; validation loss {facts['final_eval_loss']:.3f}, token accuracy "
      f"{100 * facts['final_eval_token_accuracy']:.1f}% (teacher-forced, {targets})"
    )
  fields = dict(
    layers=config.num_encoder_layers,
    emb_dim=config.emb_dim,
    num_heads=config.num_heads,
    head_dim=config.head_dim,
    mlp_dim=config.mlp_dim,
    parameters=facts["parameters"],
    model_mb=model_mb,
    pieces=pieces,
    vocab_size=vocab_size,
    last_id=vocab_size - 1,
    steps=facts["steps"],
    epochs=facts["steps"] * tokens_per_step / corpus_tokens,
    machine=facts.get("machine", "2 CPU cores"),
    hours=(facts.get("wall_clock_seconds") or 0) / 3600,
    train_loss=facts["final_train_loss"],
    train_xent=facts["final_train_cross_entropy"],
    eval_text=eval_text,
    corpus_chars=f"{corpus_chars:,}",
  )
  if "size" not in facts:
    text = TEMPLATE.format(**fields)
  else:
    size = facts["size"]
    initial = facts.get("initialized_from", {})
    training = (LM_TRAINING if lm_adapted else SPAN_TRAINING).format(
      size=size,
      initialized_from=initial.get("folder"),
      initial_steps=initial.get("steps", 0),
      steps=fields["steps"],
      epochs=fields["epochs"],
    )
    title, summary = _TITLES[lm_adapted]
    steps_to_run = ("pretrain export " if size != "demo" else "") + ("lm_adapt export_lm" if lm_adapted else "")
    lm_binding = " and `prompt_tuning.demo_data.demo_model_path.lm_adapted = True`" if lm_adapted else ""
    head = FAMILY_TEMPLATE_HEAD.format(
      name=out_dir.name, title=title, summary=summary, size=size, training=training, lm_binding=lm_binding, **fields
    )
    tail = FAMILY_TEMPLATE_TAIL.format(size=size, steps_to_run=steps_to_run.strip())
    text = head + DATA.format(corpus_chars=fields["corpus_chars"]) + tail
  path = out_dir / "MODEL_CARD.md"
  path.write_text(text)
  return path
