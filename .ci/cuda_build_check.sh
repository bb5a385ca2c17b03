#!/usr/bin/env bash
# Compile the CUDA build of mflow_cli._C (csrc/*.cu included) once, so a CUDA compile error cannot land.
# No GPU is needed: it uses a CUDA build of torch (torch==2.14.1, cu130, from the local wheel index) in a
# venv under /tmp (never inside the repo) and nvcc from CUDA_HOME (default /usr/local/cuda). The build runs
# in a temporary copy of csrc/ + setup.py, so no CUDA .so is left where the CPU test venv would import it.
# Exits non-zero on any compile error. Env: MFLOW_CUDA_VENV (default /tmp/mflow-cuda-venv, reused when it
# already holds a CUDA torch), TORCH_CUDA_ARCH_LIST (default 9.0), CUDA_HOME.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${MFLOW_CUDA_VENV:-/tmp/mflow-cuda-venv}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PATH="$CUDA_HOME/bin:$PATH"
start=$(date +%s)

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda_build_check: no nvcc at $CUDA_HOME/bin/nvcc" >&2
  exit 1
fi
if ! "$venv/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "cuda_build_check: creating $venv with torch==2.14.1 (CUDA build)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.14.1 setuptools wheel ninja numpy
fi

work=$(mktemp -d /tmp/mflow-cuda-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$repo/csrc" "$repo/setup.py" "$work/"
mkdir "$work/mflow_cli"
touch "$work/mflow_cli/__init__.py"
cd "$work"
MFLOW_BUILD_CUDA=1 MFLOW_REQUIRE_EXT=1 MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/python" setup.py -q build_ext --inplace
# The module must load, report CUDA, and run its CPU path (no GPU here).
"$venv/bin/python" - <<'PY'
import torch
import mflow_cli._C as ext
assert ext.with_cuda, "extension built without CUDA"
x = torch.randn(4, 2, dtype=torch.float64)
p = torch.randn(4, 1, 14, dtype=torch.float64)
out, ld = ext.rq_forward(x, p, torch.tensor([1]), False, 5, 3.0, 1e-3, 1e-3, 1e-3, 10.0)
back, ld_inv = ext.rq_forward(out, p, torch.tensor([1]), True, 5, 3.0, 1e-3, 1e-3, 1e-3, 10.0)
assert torch.allclose(back, x) and torch.allclose(ld, -ld_inv)
print(f"cuda_build_check: {ext.__file__.rsplit('/', 1)[-1]} built with CUDA (torch {torch.__version__})")
PY
echo "cuda_build_check: OK in $(( $(date +%s) - start )) s"
