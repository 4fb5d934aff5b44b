#!/usr/bin/env bash
# The whole GPU check of issue 29 in one run, for the few minutes a GPU is lent:
#
#   bash benchmarks/gpu_check.sh [--quick] [OUT]      # OUT: results folder (default $OUT, else
#                                                     # benchmarks/results/gpu_check)
#
# 1. install  -- on a machine without a package registry, the wheels in .whl/ (duckdb, SQLAlchemy,
#                Alembic and their needs; `pip download` them here) go to /tmp/site; torch, numpy,
#                pyarrow and pytest are the machine's own. Elsewhere the current environment is used.
# 2. search   -- benchmarks.gpu: TDM, 4-tree RecForest and DR at 10^6 items, batch 1024, beam 50,
#                fp32 / bf16 / fp16, TDM also compiled (batch 4096 in the reduced precisions last).
# 3. agreement-- benchmarks.precision on trained ml-1m-subset indexes in $GPU_CHECK_STORES (default
#                .devcarry/gpu/*.duckdb: `benchmarks.curves --train-only --store F` runs, copied
#                compact): overlap@50 with fp32 and the recall change of each precision.
# 4. tests    -- the CUDA tests (tests/test_cuda.py, tests/test_precision.py).
# 5. then, if time is left: the search at batch 4096, and benchmarks.quality for TDM at its CONFIGS
#    size, seed 0, ml-1m-subset.
#
# Each step runs under its own time limit, all of them within GPU_CHECK_SECONDS (default 540: a
# device call allows 600), in the order above (most wanted first), and the script goes on when one
# fails; OUT/summary.txt says each step's status and seconds, OUT/check.log holds everything
# printed. `--quick` rehearses the same steps at toy sizes (on a 2-core CPU: 5-7 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; shift; fi
OUT="${1:-${OUT:-benchmarks/results/gpu_check}}"
mkdir -p "$OUT"
: >"$OUT/summary.txt"
exec > >(tee -a "$OUT/check.log") 2>&1

PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if ! "$PY" -c "import duckdb, sqlalchemy, alembic" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
        PY=python3
    else
        echo "duckdb/SQLAlchemy/Alembic missing and no wheels in .whl/" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GROVE_PROGRESS=plain
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
echo "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'), device $DEVICE"
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi

BUDGET=${GPU_CHECK_SECONDS:-540}  # the whole check ends within this many seconds
DEADLINE=$(($(date +%s) + BUDGET))
step() {  # step NAME SECONDS COMMAND...: run under min(SECONDS, time left), record status and duration
    local name=$1 limit=$2 left start rc
    shift 2
    left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 30 ]; then
        echo "$name skipped: ${left}s left of ${BUDGET}s" | tee -a "$OUT/summary.txt"
        return
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo "== $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout "$limit" "$@"
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$OUT/summary.txt"
}

if [ -n "$QUICK" ]; then
    step search 300 "$PY" -m benchmarks.gpu --quick --devices "$DEVICE" --compile --cpu-precisions fp32 bf16 fp16 \
        --latency 5 --out-dir "$OUT"
else
    step search 300 "$PY" -m benchmarks.gpu --devices "$DEVICE" --indexes recforest dr tdm --compile \
        --compile-precisions fp32 fp16 --latency 200 --out-dir "$OUT"
fi
stores=$(ls ${GPU_CHECK_STORES:-.devcarry/gpu/*.duckdb} 2>/dev/null)
if [ -n "$stores" ]; then
    # a CPU rehearsal emulates fp16, minutes where a GPU takes seconds (benchmarks/README.md)
    # shellcheck disable=SC2086
    step agreement "$([ -n "$QUICK" ] && echo 300 || echo 120)" "$PY" -m benchmarks.precision $stores \
        --device "$DEVICE" --precisions fp32 bf16 fp16 $QUICK --out-dir "$OUT"
else
    echo "agreement skipped: no stores (GPU_CHECK_STORES)" | tee -a "$OUT/summary.txt"
fi
# (the CLI and service tests of test_precision need the service's packages, which a GPU machine may lack)
step tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_precision.py \
    -k "not cli_retrieve and not service_config"
if [ -z "$QUICK" ]; then
    step search_b4096 90 "$PY" -m benchmarks.gpu --devices "$DEVICE" --batch 4096 --precisions bf16 fp16 \
        --indexes tdm recforest --compile --compile-precisions fp16 --tag b4096 --out-dir "$OUT"
    step quality 240 "$PY" -m benchmarks.quality --device "$DEVICE" --methods tdm --seeds 0 --dataset ml-1m-subset \
        --no-speed --tag gpu_tdm_full --out-dir "$OUT"
fi
echo "== summary"
cat "$OUT/summary.txt"
