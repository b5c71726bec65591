#!/usr/bin/env bash
# One-shot GPU verification of supcon_fast (docs/design.md, "The CUDA kernels"): run from anywhere on a GPU machine
#   tools/gpu_check.sh OUTDIR
# Prints GPU / driver / torch / nvcc versions, builds the extension, runs the op tests with a junit
# XML, runs compute-sanitizer memcheck on a small forward+backward, measures the bf16 matmul rate and
# runs bench_loss.py on CUDA, then profiles a SupCon step against CE (tools/profile_step.py). Every step
# reports and the script goes on after a failure; the exit status is the number of failed steps (0: all
# passed). Everything is written under OUTDIR:
#   versions.txt  build.log  pytest.log  pytest_junit.xml  memcheck.log  matmul_bf16.json
#   bench_loss_cuda_{bf16,fp32}.{json,png}  bench_loss_queue_cuda_bf16.{json,png}  bench_loss.log
#   step_<arch>_<impl>.{json,md,png}  profile_step.log  summary.json
# Needs no network and installs nothing (torch 2.11 there, no DALI: supcon_fast.data is not imported).
# Budget: <= 9 minutes on one H200: each step has its own timeout, in order of what the results need
# most, and the step profile (last) gets what is left of BUDGET_S (default 540 s).
set -uo pipefail
START=$(date +%s)
BUDGET_S="${BUDGET_S:-540}"

OUT="${1:?usage: tools/gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
export PY OUT ROOT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

declare -a STEP_NAMES=() STEP_RCS=() STEP_SECS=()
FAILED=0

# run_step NAME TIMEOUT_S LOGFILE CMD...: runs CMD (a program, or a function exported with export -f)
# with a timeout, tees to LOGFILE, records the result.
run_step() {
  local name="$1" limit="$2" log="$3"; shift 3
  local t0 rc
  echo "=== [$name] $(date -u +%H:%M:%S) (timeout ${limit}s) ==="
  t0=$(date +%s)
  if [[ "$(type -t "$1")" == "function" ]]; then
    timeout --kill-after=10 "$limit" bash -c "$*" 2>&1 | tee "$log"
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  fi
  rc=${PIPESTATUS[0]}
  STEP_NAMES+=("$name"); STEP_RCS+=("$rc"); STEP_SECS+=("$(( $(date +%s) - t0 ))")
  if [[ $rc -eq 0 ]]; then echo "=== [$name] OK ($(( $(date +%s) - t0 ))s) ==="
  else echo "=== [$name] FAILED rc=$rc ($(( $(date +%s) - t0 ))s)$([[ $rc -eq 124 ]] && echo ': timed out') ==="; FAILED=$((FAILED + 1)); fi
}

# ---- 1. versions ------------------------------------------------------------------------------
versions() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "commit: $(git -C "$ROOT" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)"
  echo "--- nvidia-smi"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || echo "nvidia-smi failed"
  nvidia-smi 2>&1 | head -15 || true
  echo "--- nvcc"
  if command -v nvcc >/dev/null 2>&1; then nvcc --version | tail -2
  elif [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version | tail -2
  else echo "nvcc not found"; fi
  echo "--- python / torch"
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"device {i}: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
EOF
}
export -f versions
run_step versions 30 "$OUT/versions.txt" versions

# ---- 2. build ---------------------------------------------------------------------------------
# TORCH_CUDA_ARCH_LIST is left to setup.py (the visible GPU's arch). csrc/cuda/supcon_cuda.cu is one
# translation unit (every kernel family, dtype and options build) that compiles on one core for a
# single arch, whatever the core count: minutes, hence the limit.
run_step build 300 "$OUT/build.log" env MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace

# ---- 3. tests ---------------------------------------------------------------------------------
TESTS=()
for t in tests/test_ops.py tests/test_ops_cuda.py tests/test_ops_options.py tests/test_loss_api.py; do
  if [[ -f "$t" ]]; then TESTS+=("$t"); else echo "(missing $t: skipped)"; fi
done
# -m 'not emulated': the CUDA emulation's cases already run in every CI; here the GPU's own.
run_step pytest 150 "$OUT/pytest.log" "$PY" -m pytest -q -x -p no:cacheprovider -m "not emulated and not slow" \
  "${TESTS[@]}" --junitxml="$OUT/pytest_junit.xml"

# ---- 4. compute-sanitizer memcheck on one small forward + backward ----------------------------
SANITIZER=""
for c in compute-sanitizer "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
         "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer"; do
  if command -v "$c" >/dev/null 2>&1; then SANITIZER="$(command -v "$c")"; break; fi
done
cat > "$OUT/memcheck_case.py" <<'EOF'
import torch
from supcon_fast import ops
assert ops.has_kernel("cuda"), "no CUDA kernel registered"
torch.manual_seed(0)
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for n, d, offset, m, vin in ((300, 130, 0, 300, False), (300, 130, 37, 100, True), (70, 13, 0, 70, True)):
        z = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=1).to(dtype).requires_grad_()
        y = torch.randint(0, 20, (n,), device="cuda")
        loss = ops.supcon_fwd(z, y, offset, m, 0.1, vin)[0]
        loss.sum().backward()
        torch.cuda.synchronize()
        print(dtype, n, d, offset, m, vin, "loss", float(loss.sum()), "grad", float(z.grad.float().abs().sum()))
print("memcheck case done")
EOF
if [[ -n "$SANITIZER" ]]; then
  memcheck() {
    "$SANITIZER" --tool memcheck --error-exitcode 3 --print-limit 20 "$PY" "$OUT/memcheck_case.py"
    local rc=$?
    if [[ $rc -ne 0 && $rc -ne 3 ]]; then
      echo "compute-sanitizer did not complete (rc=$rc: the tool could not run here, or the case failed; see above): reported, not counted as a failure"; return 0
    fi
    return $rc
  }
  export SANITIZER
  export -f memcheck
  run_step memcheck 60 "$OUT/memcheck.log" memcheck
else
  echo "compute-sanitizer not found: memcheck skipped (reported, not a failure)" | tee "$OUT/memcheck.log"
fi

# ---- 5. bf16 matmul rate at 8192^3 --------------------------------------------------------------
matmul() {
  OUTFILE="$OUT/matmul_bf16.json" "$PY" - <<'EOF'
import json, os, torch
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(5):
    a @ b
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
iters = 50
start.record()
for _ in range(iters):
    a @ b
end.record()
torch.cuda.synchronize()
ms = start.elapsed_time(end) / iters
tflops = 2 * n ** 3 / (ms * 1e-3) / 1e12
res = {"op": "matmul", "dtype": "bfloat16", "m": n, "n": n, "k": n, "ms": ms, "tflops": tflops,
       "device": torch.cuda.get_device_name(), "torch": torch.__version__}
print(json.dumps(res))
json.dump(res, open(os.environ["OUTFILE"], "w"), indent=1)
EOF
}
export -f matmul
run_step matmul_bf16 25 "$OUT/matmul_bf16.log" matmul

# ---- 6. loss benchmark: the fused kernels against the materialized reference --------------------
# bf16 up to a million views (the reference runs out of memory past 65,536), fp32, and a queue case
# (512 current views against 65,536 queue rows). Each case is a fresh process; the JSON is rewritten
# after every case, so a step stopped by its limit keeps what it finished.
bench_all() {
  local rc=0
  "$PY" tools/bench_loss.py --device cuda --dtype bf16 --dim 128 --n 4096 16384 65536 262144 1048576 \
    --impls fused reference --timeout 60 --json "$OUT/bench_loss_cuda_bf16.json" || rc=1
  "$PY" tools/bench_loss.py --device cuda --dtype fp32 --dim 128 --n 4096 16384 65536 \
    --impls fused reference --timeout 60 --json "$OUT/bench_loss_cuda_fp32.json" || rc=1
  "$PY" tools/bench_loss.py --device cuda --dtype bf16 --dim 128 --n 512 --queue 65536 \
    --impls fused reference --timeout 60 --json "$OUT/bench_loss_queue_cuda_bf16.json" || rc=1
  return $rc
}
export -f bench_all
if [[ -f tools/bench_loss.py ]]; then
  run_step bench_loss 240 "$OUT/bench_loss.log" bench_all
else
  echo "tools/bench_loss.py missing: benchmark skipped"; STEP_NAMES+=("bench_loss"); STEP_RCS+=("127"); STEP_SECS+=("0")
  FAILED=$((FAILED + 1))
fi

# ---- 7. step cost: SupCon against CE, phase by phase (ResNet-50 / ResNet-200, bf16, 16-GPU contrast set) --
# Last: it gets what is left of BUDGET_S (each run writes its own JSON as it finishes).
LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
(( LEFT < 30 )) && LEFT=30
if [[ -f tools/profile_step.py ]]; then
  profile_all() {
    local rc=0 arch impl bs
    for arch in resnet50 resnet200; do
      for impl in fused reference; do
        for bs in 512 256 128; do  # 512 images (1024 views) per GPU, or the largest that fits
          if "$PY" tools/profile_step.py --arch "$arch" --image-size 224 --batch-size "$bs" --views 2 --steps 6 \
               --warmup 2 --device cuda --synthetic --amp bf16 --channels-last --loss-impl "$impl" \
               --contrast-n 16384 --json "$OUT/step_${arch}_${impl}.json"; then break; fi
          echo "($arch $impl batch $bs did not run: trying a smaller batch)"
          [[ $bs -eq 128 ]] && rc=1
        done
      done
    done
    return $rc
  }
  export -f profile_all
  run_step profile_step "$LEFT" "$OUT/profile_step.log" profile_all
fi

# ---- summary ------------------------------------------------------------------------------------
{
  echo "{"
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"commit\": \"$(git -C "$ROOT" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)\","
  echo "  \"steps\": ["
  for i in "${!STEP_NAMES[@]}"; do
    sep=$([[ $i -lt $(( ${#STEP_NAMES[@]} - 1 )) ]] && echo "," || echo "")
    echo "    {\"step\": \"${STEP_NAMES[$i]}\", \"rc\": ${STEP_RCS[$i]}, \"seconds\": ${STEP_SECS[$i]}}$sep"
  done
  echo "  ],"
  echo "  \"failed\": $FAILED"
  echo "}"
} > "$OUT/summary.json"
echo "=== summary ($OUT/summary.json) ==="
for i in "${!STEP_NAMES[@]}"; do
  printf '  %-12s rc=%-4s %4ss\n' "${STEP_NAMES[$i]}" "${STEP_RCS[$i]}" "${STEP_SECS[$i]}"
done
echo "failed steps: $FAILED"
exit "$FAILED"
