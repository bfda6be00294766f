"""The demo model's SentencePiece vocabulary, trained on its pretraining corpus with T5's special ids.

Like T5's: a unigram model, pad 0, EOS 1, unk 2, no BOS; seqio adds 100 sentinels (`<extra_id_0>` is the last id),
`seqio.SentencePieceVocabulary(path, extra_ids=100)`. `NUM_PIECES` + 100 = 8192 = the model's embedding rows.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from prompt_tuning.demo_data import corpus

NUM_PIECES = 8092
EXTRA_IDS = 100
VOCAB_SIZE = NUM_PIECES + EXTRA_IDS


def train_vocabulary(corpus_file: str | Path, out_file: str | Path, num_pieces: int = NUM_PIECES) -> Path:
  """Trains the SentencePiece model on the corpus' sentences; writes and returns `out_file` (`*.model`)."""
  out_file = Path(out_file)
  out_file.parent.mkdir(parents=True, exist_ok=True)
  with open(out_file, "wb") as model:
    spm.SentencePieceTrainer.train(
      sentence_iterator=corpus.sentences(corpus_file),
      model_writer=model,
      model_type="unigram",
      vocab_size=num_pieces,
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      character_coverage=0.9999,
      input_sentence_size=2_000_000,
      shuffle_input_sentence=False,
      num_threads=2,
      minloglevel=2,
    )
  return out_file
