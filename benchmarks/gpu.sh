#!/usr/bin/env bash
# One command on a single GPU machine with no internet (Python + torch + transformers + peft preinstalled):
#   bash benchmarks/gpu.sh            -> benchmarks/results/gpu_2b.json, gpu_8b.json  (< 8 minutes on one H200)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
timeout 200 python benchmarks/gpu_bench.py --preset 2b --out "$OUT"
timeout 260 python benchmarks/gpu_bench.py --preset 8b --out "$OUT"
