#!/usr/bin/env bash
# Rebuilds the demo's assets from scratch (`make demo-model`): the pretraining corpus (WordNet glosses + the King
# James Bible, from Debian packages), the SentencePiece vocabulary, the pretrained demo T5 (configs/pretrain_demo.gin,
# about an hour on 2 CPU cores), its export to prompt_tuning/assets/demo_t5, and the WordNet task files.
#
#   scripts/build_demo_model.sh [STEP ...]     steps: corpus vocab pretrain export task (default: all)
#   BUILD_DIR=.cache/demo_build PYTHON=.venv/bin/python scripts/build_demo_model.sh
#
# Pretraining resumes from the latest checkpoint in $BUILD_DIR/pretrain; delete that folder to start over.
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
"$PYTHON" -m prompt_tuning.demo_data.build --build-dir "$BUILD_DIR" "$@"
echo "demo model rebuilt in $(( $(date +%s) - start ))s; see prompt_tuning/assets/demo_t5/MODEL_CARD.md"
