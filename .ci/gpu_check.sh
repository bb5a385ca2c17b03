#!/usr/bin/env bash
# The GPU checks of issue 15 as one call on a lent GPU machine (the device tool's `run`, from the repo root):
#
#   bash .ci/gpu_check.sh                     # everything, logs and a summary under $OUT
#   DEVICE=cpu QUICK=1 bash .ci/gpu_check.sh  # the same steps on the CPU at tiny sizes: a dry run of this script
#
# Steps (each timed; a failing step is reported and the next one still runs; the exit status is the first
# failure's):
#   1. build mflow_cli._C in place against that machine's torch (its CUDA kernels included when torch has CUDA);
#   2. the device-aware tests on the device: pytest --device $DEVICE tests/kernels tests/flows tests/models;
#   3. mflow bench --device $DEVICE (the kernels and flows against their baselines);
#   4. dnf_gan2d (64×64, the image architecture) for $EPOCHS epochs on the procedural image manifold under each
#      train.precision (float32, tf32, bf16; tf32 only on CUDA), seconds per epoch from its metrics.jsonl.
# Pure-Python dependencies that machine lacks (nflows) travel as wheels in .whl/ (carry it; see the device
# tool's README): `pip wheel --no-deps -w .whl nflows==0.14` (nflows is a source archive only) and, for the
# zuko rows, `pip download --no-deps -d .whl zuko`.
# Env: DEVICE (default cuda), OUT (default /tmp/mflow-gpu-check), EPOCHS (default 3), QUICK (1: tiny sizes).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/mflow-gpu-check}
EPOCHS=${EPOCHS:-3}
QUICK=${QUICK:-0}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
status=0

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mflow-site \
    .whl/*.whl && export PYTHONPATH="/tmp/mflow-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, one summary line with its seconds and exit status
  local name=$1
  shift
  local start
  start=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc $rc in $(( $(date +%s) - start )) s" | tee -a "$summary"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    tail -n 20 "$OUT/$name.log"
  fi
}

{
  echo "device $DEVICE, $(date -u +%FT%TZ), $(uname -m), $(nproc) cores"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$summary"

step build "$PYTHON" setup.py build_ext --inplace
"$PYTHON" -c "from mflow_cli import kernels; print(kernels.backend_info())" | tee -a "$summary"

tests=(tests/kernels tests/flows tests/models)
[ "$QUICK" = 1 ] && tests=(tests/kernels/test_kernels.py tests/models/test_contract.py)
step tests "$PYTHON" -m pytest -q -p no:cacheprovider --device "$DEVICE" "${tests[@]}"
grep -iE "passed|failed|error" "$OUT/tests.log" | tail -n 1 | tee -a "$summary"

bench=(--device "$DEVICE" -t 1)
[ "$QUICK" = 1 ] && bench+=(--quick -r 1 --no-models)
step bench "$PYTHON" -m mflow_cli bench "${bench[@]}"

train=(--set device="$DEVICE" --set data.source=procedural --set train.epochs="$EPOCHS" --set threads=1)
[ "$QUICK" = 1 ] && train+=(--set data.n_train=50 --set data.n_test=25 --set data.resolution=16
                           --set model.levels=2 --set model.hidden_features=8)
precisions=(float32 bf16)
[ "$DEVICE" != cpu ] && precisions=(float32 tf32 bf16)
for precision in "${precisions[@]}"; do
  run="$OUT/dnf_gan2d_$precision"
  step "train_$precision" "$PYTHON" -m mflow_cli train recipes/dnf_gan2d.yaml --out "$run" --force "${train[@]}" \
    --set train.precision="$precision"
  [ -f "$run/metrics.jsonl" ] && "$PYTHON" - "$run/metrics.jsonl" "$precision" << 'EOF' | tee -a "$summary"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"epoch"' in line]
times = [r["time"] for r in rows]
gaps = [round(b - a, 1) for a, b in zip(times, times[1:])]
print(f"dnf_gan2d {sys.argv[2]}: epochs", [r["epoch"] for r in rows], "seconds between epoch ends", gaps,
      "loss", [round(r["loss"], 1) for r in rows])
EOF
done
exit "$status"
