"""Hand-written records of every benchmark, through each task's own formatter, against hand-written T5 text."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

import prompt_tuning.data  # noqa: E402, F401 - registers the tasks.
from prompt_tuning.data import tensorflow_setup, vocab  # noqa: E402

tensorflow_setup.limit_tensorflow_threads(2)

VOCAB_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "t5_spm_32000.model"

BOOLQ = {
  "question": "is windows movie maker part of windows essentials",
  "passage": "Windows Movie Maker -- Windows Movie Maker is a discontinued video editing software by Microsoft.",
  "idx": 0,
  "label": 1,
}
MULTIRC = {
  "paragraph": "<b>Sent 1: </b>While this process moved along, diplomacy continued its rounds.<br><b>Sent 2: </b>"
  "Direct pressure on the Taliban had proved unsuccessful.<br>",
  "question": "What did the high-level effort to persuade Pakistan include?",
  "answer": "Children, Gerd, or Dorian Popa",
  "idx": {"paragraph": 0, "question": 1, "answer": 2},
  "label": 0,
}
RECORD = {
  "passage": "The harrowing stories of women locked up for 'moral crimes' in Afghanistan have been revealed.\n"
  "@highlight\nThe BBC gained exclusive access to Badam Bagh prison\n@highlight\nMost women there are jailed",
  "query": "The @placeholder prison is Afghanistan's only female jail.",
  "entities": ["Afghanistan", "Badam Bagh", "BBC"],
  "answers": ["Badam Bagh", "Badam Bagh prison"],
  "idx": {"passage": 3, "query": 4},
}
WSC = {
  "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful.",
  "span1_index": 0,
  "span2_index": 13,
  "span1_text": "Mark",
  "span2_text": "He",
  "idx": 0,
  "label": 1,
}
MRPC = {
  "sentence1": 'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting evidence .',
  "sentence2": 'Referring to him as only " the witness " , Amrozi accused his brother of distorting his evidence .',
  "idx": 0,
  "label": 1,
}
QQP = {
  "question1": "How is the life of a math student? Could you describe your own experiences?",
  "question2": "Which level of preparation is enough for the exam jlpt5?",
  "idx": 0,
  "label": 0,
}
CAT = {"sentence1": "The cat sat on the mat.", "sentence2": "The cat did not sit on the mat.", "idx": 0, "label": 1}
NURSE = {
  "premise": "The nurse notified the patient that his shift would be ending in an hour.",
  "hypothesis": "The nurse's shift would be ending in an hour.",
  "idx": 0,
  "label": 0,
}

# (task, record, expected [(inputs, targets), ...])
CASES = [
  (
    "super_glue_boolq_v102",
    BOOLQ,
    [(f"boolq passage: {BOOLQ['passage']} question: {BOOLQ['question']}", "True")],
  ),
  (
    "super_glue_cb_v102",
    {
      "premise": "It was a complex language. Not written down but handed down.",
      "hypothesis": "the language was peeled down",
      "idx": 0,
      "label": 0,
    },
    [
      (
        "cb hypothesis: the language was peeled down premise: It was a complex language. Not written down but handed "
        "down.",
        "entailment",
      )
    ],
  ),
  (
    "super_glue_copa_v102",
    {
      "premise": "My body cast a shadow over the grass.",
      "choice1": "The sun was rising.",
      "choice2": "The grass was cut.",
      "question": "cause",
      "idx": 0,
      "label": 0,
    },
    [
      (
        "copa choice1: The sun was rising. choice2: The grass was cut. premise: My body cast a shadow over the grass. "
        "question: cause",
        "choice1",
      )
    ],
  ),
  (
    "super_glue_multirc_v102",
    MULTIRC,
    [
      (
        "multirc question: What did the high-level effort to persuade Pakistan include? answer: Children, Gerd, or "
        "Dorian Popa paragraph: Sent 1: While this process moved along, diplomacy continued its rounds. Sent 2: Direct "
        "pressure on the Taliban had proved unsuccessful. ",
        "False",
      )
    ],
  ),
  (
    "super_glue_record_v102",
    RECORD,
    [
      (
        "record query: The @placeholder prison is Afghanistan's only female jail. entities: Afghanistan, Badam Bagh, "
        "BBC passage: The harrowing stories of women locked up for 'moral crimes' in Afghanistan have been revealed. "
        "The BBC gained exclusive access to Badam Bagh prison. Most women there are jailed",
        answer,
      )
      for answer in ("Badam Bagh", "Badam Bagh prison")
    ],
  ),
  (
    "super_glue_rte_v102",
    {
      "premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
      "hypothesis": "Weapons of Mass Destruction Found in Iraq.",
      "idx": 0,
      "label": 1,
    },
    [
      (
        "rte hypothesis: Weapons of Mass Destruction Found in Iraq. premise: No Weapons of Mass Destruction Found in "
        "Iraq Yet.",
        "not_entailment",
      )
    ],
  ),
  (
    "super_glue_wic_v102",
    {
      "word": "place",
      "sentence1": "Do you want to come over to my place later?",
      "sentence2": "A political system with no place for the less prominent groups.",
      "start1": 31,
      "start2": 27,
      "end1": 36,
      "end2": 32,
      "idx": 0,
      "label": 0,
    },
    [
      (
        "wic sentence1: Do you want to come over to my place later? sentence2: A political system with no place for "
        "the less prominent groups. word: place",
        "False",
      )
    ],
  ),
  (
    "super_glue_wsc_v102",
    WSC,
    [
      (
        "wsc: Mark told Pete many lies about himself, which Pete included in his book. *He* should have been more "
        "truthful.",
        "Mark",
      )
    ],
  ),
  (
    "super_glue_axb_v102",
    CAT,
    [(f"rte sentence1: {CAT['sentence1']} sentence2: {CAT['sentence2']}", "not_entailment")],
  ),
  (
    "super_glue_axg_v102",
    NURSE,
    [(f"rte hypothesis: {NURSE['hypothesis']} premise: {NURSE['premise']}", "entailment")],
  ),
  (
    "glue_cola_v200",
    {"sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "idx": 0, "label": 1},
    [("cola sentence: Our friends won't buy this analysis, let alone the next one we propose.", "acceptable")],
  ),
  (
    "glue_sst2_v200",
    {"sentence": "it 's a charming and often affecting journey . ", "idx": 0, "label": 1},
    [("sst2 sentence: it 's a charming and often affecting journey . ", "positive")],
  ),
  ("glue_mrpc_v200", MRPC, [(f"mrpc sentence1: {MRPC['sentence1']} sentence2: {MRPC['sentence2']}", "equivalent")]),
  ("glue_qqp_v200", QQP, [(f"qqp question1: {QQP['question1']} question2: {QQP['question2']}", "not_duplicate")]),
  (
    "glue_stsb_v200",
    {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "idx": 0, "label": 3.8},
    [("stsb sentence1: A plane is taking off. sentence2: An air plane is taking off.", "3.8")],
  ),
  (
    "glue_mnli_v200",
    {
      "premise": "Conceptually cream skimming has two basic dimensions - product and geography.",
      "hypothesis": "Product and geography are what make cream skimming work. ",
      "idx": 0,
      "label": 1,
    },
    [
      (
        "mnli hypothesis: Product and geography are what make cream skimming work.  premise: Conceptually cream "
        "skimming has two basic dimensions - product and geography.",
        "neutral",
      )
    ],
  ),
  (
    "glue_qnli_v200",
    {
      "question": "When did the third Digimon series begin?",
      "sentence": "Unlike the two seasons before it, Digimon Tamers takes a darker approach to its story.",
      "idx": 0,
      "label": 1,
    },
    [
      (
        "qnli question: When did the third Digimon series begin? sentence: Unlike the two seasons before it, Digimon "
        "Tamers takes a darker approach to its story.",
        "not_entailment",
      )
    ],
  ),
  ("glue_rte_v200", CAT, [(f"rte sentence1: {CAT['sentence1']} sentence2: {CAT['sentence2']}", "not_entailment")]),
  (
    "glue_wnli_v200",
    {
      "sentence1": "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
      "sentence2": "The carrot had a hole.",
      "idx": 0,
      "label": 1,
    },
    [
      (
        "wnli sentence1: I stuck a pin through a carrot. When I pulled the pin out, it had a hole. sentence2: The "
        "carrot had a hole.",
        "entailment",
      )
    ],
  ),
  # Transfer pairs: one shared format; QQP's duplicate/not_duplicate read as equivalent/not_equivalent.
  (
    "glue_qqp_to_mrpc_v200",
    QQP,
    [(f"paraphrase sentence1: {QQP['question1']} sentence2: {QQP['question2']}", "not_equivalent")],
  ),
  (
    "glue_qqp_to_mrpc_v200",
    MRPC,
    [(f"paraphrase sentence1: {MRPC['sentence1']} sentence2: {MRPC['sentence2']}", "equivalent")],
  ),
  # Variants.
  ("taskless_super_glue_boolq_v102", BOOLQ, [(f"passage: {BOOLQ['passage']} question: {BOOLQ['question']}", "True")]),
  (
    "task_index_super_glue_boolq_v102_examples",
    BOOLQ,
    [(f"<extra_id_0> passage: {BOOLQ['passage']} question: {BOOLQ['question']}", "True")],
  ),
  ("taskless_super_glue_wsc_v102", WSC, [(WSC["text"].replace(" He ", " *He* "), "Mark")]),
  (
    "task_index_super_glue_axb_v102",
    CAT,
    [(f"<extra_id_5> sentence1: {CAT['sentence1']} sentence2: {CAT['sentence2']}", "not_entailment")],
  ),
  (
    "taskless_glue_mrpc_to_qqp_v200",
    MRPC,
    [(f"sentence1: {MRPC['sentence1']} sentence2: {MRPC['sentence2']}", "equivalent")],
  ),
  # An unlabeled (test split) example gets "<unk>".
  ("glue_sst2_v200", {"sentence": "fine .", "idx": 0, "label": -1}, [("sst2 sentence: fine .", "<unk>")]),
]


def format_record(task_name: str, record: dict) -> list[dict]:
  """Runs one raw record through the task's formatter (its first preprocessor)."""
  task = seqio.get_mixture_or_task(task_name)
  record = (
    dict(record, label=tf.constant(record["label"], tf.int64)) if isinstance(record.get("label"), int) else record
  )
  dataset = task.preprocessors[0](tf.data.Dataset.from_tensors(record))
  return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize(("task_name", "record", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_formats_like_t5(task_name, record, expected):
  examples = format_record(task_name, record)
  assert [(e["inputs"].decode(), e["targets"].decode()) for e in examples] == expected


def test_multirc_and_record_keep_the_indices_their_metrics_group_by():
  (multirc,) = format_record("super_glue_multirc_v102", MULTIRC)
  assert (multirc["idx/paragraph"], multirc["idx/question"], multirc["idx/answer"]) == (0, 1, 2)
  record = format_record("super_glue_record_v102", RECORD)
  assert [(r["idx/passage"], r["idx/query"]) for r in record] == [(3, 4), (3, 4)]
  assert [a.decode() for a in record[0]["answers"]] == RECORD["answers"]
  no_answers = format_record("super_glue_record_v102", dict(RECORD, answers=tf.constant([], tf.string)))
  assert [r["targets"].decode() for r in no_answers] == ["<unk>"]


@pytest.mark.parametrize(
  ("text", "index", "expected"),
  [
    # T5 special-cases these two WSC texts; here the pronoun is found without special cases.
    ('John laughed. "Good for him," he said. ', 4, 'John laughed. "Good for *him*," he said. '),
    ("Some day they might want to use it , but really", 6, "Some day they might want to use *it* , but really"),
    ("A text where the pronoun is absent.", 2, "A text where the pronoun is absent."),
  ],
)
def test_wsc_marks_the_pronoun_robustly(text, index, expected):
  pronoun = "him" if "him" in text else "it"
  record = dict(WSC, text=text, span2_index=index, span2_text=pronoun)
  (example,) = format_record("taskless_super_glue_wsc_v102", record)
  assert example["inputs"].decode() == expected


@pytest.mark.parametrize(("score", "target"), [(0.0, "0.0"), (2.53, "2.6"), (3.8, "3.8"), (4.99, "5.0"), (1.1, "1.2")])
def test_stsb_rounds_to_the_nearest_fifth(score, target):
  record = {"sentence1": "a", "sentence2": "b", "idx": 0, "label": score}
  (example,) = format_record("glue_stsb_v200", record)
  assert example["targets"].decode() == target


@pytest.mark.skipif(not VOCAB_PATH.exists(), reason=f"reference vocabulary {VOCAB_PATH} is absent")
def test_task_index_sentinel_is_one_token():
  t5 = vocab.get_vocabulary(str(VOCAB_PATH))
  assert t5.vocab_size == 32100
  assert t5.encode("<extra_id_0> passage: x")[0] == 32099
  assert t5.encode(vocab.sentinel(17))[0] == 32099 - 17
  with pytest.raises(ValueError, match="outside the 100"):
    vocab.sentinel(100)
