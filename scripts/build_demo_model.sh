#!/usr/bin/env bash
# Rebuilds the demo's assets from scratch (`make demo-model`): the pretraining corpus (WordNet glosses + the King
# James Bible, from Debian packages), the SentencePiece vocabulary, the demo family of T5s (prompt_tuning.demo_data.
# DEMO_FAMILY: 10M, 3.6M and 0.93M parameters, each pretrained with configs/pretrain_demo.gin, exported, LM-adapted
# with configs/lm_adapt_demo.gin and exported again into prompt_tuning/assets/demo_t5*; about two hours on 2 CPU
# cores in all), and the WordNet task files.
#
#   scripts/build_demo_model.sh                      everything
#   scripts/build_demo_model.sh [STEP ...] [--size S]   the steps of prompt_tuning.demo_data.build, for one size
#   BUILD_DIR=.cache/demo_build PYTHON=.venv/bin/python scripts/build_demo_model.sh
#
# Training resumes from the latest checkpoint in $BUILD_DIR/pretrain[_SIZE] (lm_adapt[_SIZE]); delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUILD_DIR=${BUILD_DIR:-.cache/demo_build}

missing=()
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
command -v bible >/dev/null || missing+=(bible-kjv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: install the corpus sources first: sudo apt-get install ${missing[*]}" >&2
  exit 2
fi
start=$(date +%s)
build() { "$PYTHON" -m prompt_tuning.demo_data.build --build-dir "$BUILD_DIR" "$@"; }
if [ $# -gt 0 ]; then
  build "$@"
else
  build corpus vocab
  for size in demo demo_3m demo_1m; do
    build pretrain export lm_adapt export_lm --size "$size"
  done
  build task
fi
echo "demo assets rebuilt in $(( $(date +%s) - start ))s; see prompt_tuning/assets/demo_t5*/MODEL_CARD.md"
