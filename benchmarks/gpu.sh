#!/usr/bin/env bash
# GPU benchmark (issue 4): samples/s of plain torch, the guarded loop and the Ray Train path (1 GPU worker),
# fp32 and bf16 autocast, on the accelerator machine (torch preinstalled, Python 3.12, no Airflow and
# nothing of ours installed). Runs in well under 5 minutes; writes gpu.json (+ gpu.log, nvidia-smi.txt) to
# $OUT when set, else to benchmarks/results/.
#
# Here, once (builds the 33 MB Ray bundle into the git-ignored .gpu/ with ../shared/gpu/ray-bundle.sh):
#   benchmarks/gpu.sh bundle
# There (the device tool, carry [".gpu"]):
#   benchmarks/gpu.sh [bench_gpu.py options, e.g. --rows 1000000]
# Without a bundle (e.g. this machine's venv, which has Ray): PYTHON=.venv/bin/python benchmarks/gpu.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == bundle ]]; then
  shift
  grep -qxF /.gpu/ .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
  exec "${GD_SHARED:-../shared}/gpu/ray-bundle.sh" .gpu "$@"
fi

py=${PYTHON:-python3}
if [[ -f .gpu/site-cp312.tar.xz ]]; then
  # the two lines of ray-bundle.sh's header
  mkdir -p /tmp/site && tar -xJf .gpu/site-cp312.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
command -v nvidia-smi >/dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

# the core training path must import with torch + numpy only (no Airflow, pandas, scikit-learn)
"$py" - <<'PY'
import sys
import torch, numpy
import gd_provider.core.training.loop, gd_provider.core.training.spec  # noqa: E401
heavy = sorted(m for m in ("airflow", "pandas", "pyarrow", "sklearn", "mlflow") if m in sys.modules)
assert not heavy, f"gd_provider.core.training.loop imported {heavy}"
try:  # Ray Train itself, not only Ray: ray.train needs pandas, pyarrow, fsspec and requests too
    import ray
    import ray.train.torch  # noqa: F401
    ray_ok = f"ray {ray.__version__} (ray.train.torch imports)"
except Exception as exc:
    cause = f", cause: {exc.__cause__!r}" if exc.__cause__ else ""
    ray_ok = f"no Ray Train ({type(exc).__name__}: {exc}{cause}): the Ray path is skipped"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, {ray_ok}, "
      f"cuda {torch.cuda.is_available()}")
PY

device=(--device cuda)  # on the accelerator a missing GPU is an error, not a skip
for a in "$@"; do [[ $a == --device* ]] && device=(); done
timeout "${GPU_BENCH_TIMEOUT_S:-280}" "$py" benchmarks/bench_gpu.py "${device[@]}" --out "$out/gpu.json" "$@" 2>&1 \
  | tee "$out/gpu.log"
exit "${PIPESTATUS[0]}"
