#!/usr/bin/env bash
# One command on a single GPU machine with no internet (Python + torch + transformers + peft + accelerate there):
#   bash benchmarks/gpu.sh            -> benchmarks/results/gpu_bench.json  (< 10 minutes on one H200)
#   bash benchmarks/gpu.sh fsdp       -> benchmarks/results/fsdp_check.json (FSDP 2 through accelerate on the visible
#                                        GPUs: the gathered adapters against a plain run; ~2 minutes on one GPU)
# adaptune's other needs (trl, datasets, omegaconf, httpx2; fastapi/uvicorn/openai/pydantic for `transformers serve`;
# transformers itself where the machine's is older than 5.24, adaptune's floor) travel as wheels in .whl/ when the
# machine lacks them (docs/scaling.md says how they were fetched).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" -c "import torch, transformers, peft, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" || true
if [ "${1:-}" = "fsdp" ]; then
  exec timeout "${FSDP_CHECK_TIMEOUT:-420}" "$PY" benchmarks/fsdp_check.py --out "$OUT"
fi
timeout "${GPU_BENCH_TIMEOUT:-560}" "$PY" benchmarks/gpu_bench.py --out "$OUT" "$@"
