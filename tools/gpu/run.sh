#!/bin/sh
# The GPU machine's run (tools/gpu/prepare.sh first, here): from the repository root there,
#   run(command="sh tools/gpu/run.sh", carry=[".device"], timeout_s=540)
# unpacks the Vulkan loader, Deno and its npm cache from .device/, then writes to $OUT:
#   report.json     bench/gpu_report.ts: adapter, copy bandwidth, the real-shape model's decode and
#                   prefill tokens/s and its logits of a fixed prompt (the model is written first)
#   transformers.json  tools/gpu/transformers_run.py: transformers' logits against the runtime's,
#                   its bf16 eager prefill and decode tokens/s on the same checkpoint
#   profile.txt     bench/profile.ts: that model's 512-token prefill (SMALL: 32) and 8 decode steps, each op's
#                   GPU time by timestamp queries
#   kernels.txt     bench/kernels.ts: per-kernel GB/s and GFLOP/s (timestamp queries)
#   tests.txt       the GPU tests (kernels against their references, the model against the float64
#                   reference, batching, budget invariance) on the real adapter
#   logs.txt        what gpu_report and transformers_run printed
#   budget.txt      bench/budget.ts --tokens 32 --reps 1: the default model's exact decode by
#                   expert budget
#   sampler.txt     bench/sampler.ts --no-decode: a sampling step's GPU time at vocab 151,936,
#                   radix select against bisection (one workgroup each)
# Each step has its own time limit, so one that hangs leaves the others.
# LOCAL=1 skips the .debs (a machine with its own Vulkan loader); SMALL=1 writes the SMALL model.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
dev=.device
if [ -z "${LOCAL:-}" ]; then
  for f in "$dev"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/nvidia-smi.txt" 2>&1
fi
work=$(mktemp -d)
xz -dc "$dev/deno.xz" >"$work/deno" && chmod +x "$work/deno"
mkdir -p "$work/deno_dir" && tar -xJf "$dev/deno_dir.tar.xz" -C "$work/deno_dir"
export DENO_DIR="$work/deno_dir" DENO_NO_UPDATE_CHECK=1
deno="$work/deno"
# the tests that exercise the adapter (tools/gpu/tests.list), fastest first
GPU_TESTS=$(cat tools/gpu/tests.list)
model="$work/model"
small=""
if [ -n "${SMALL:-}" ]; then small=--small; fi
"$deno" --version | head -1
log="$OUT/logs.txt"
step() { echo "$(date +%T) $*"; }
step gpu_report
timeout 280 "$deno" run --cached-only -A --unstable-webgpu bench/gpu_report.ts --dir "$model" \
  $small --out "$OUT/report.json" >"$log" 2>&1
echo "gpu_report: exit $?"
tail -4 "$log"
if python3 -c "import transformers, torch; assert torch.cuda.is_available()" 2>/dev/null; then
  decode_tokens=128
  if [ -n "${SMALL:-}" ]; then decode_tokens=32; fi
  step transformers_run
  timeout 120 python3 tools/gpu/transformers_run.py "$model" --decode-tokens "$decode_tokens" \
    --out "$OUT/transformers.json" >>"$log" 2>&1
  echo "transformers_run: exit $?"
  tail -3 "$log"
else
  echo "transformers_run: skipped (no transformers, or no CUDA device for torch)"
fi
ptokens=512
if [ -n "${SMALL:-}" ]; then ptokens=32; fi
step profile
timeout 50 "$deno" run --cached-only -A --unstable-webgpu bench/profile.ts --dir "$model" \
  --tokens "$ptokens" --decode 8 --reps 1 >"$OUT/profile.txt" 2>&1
echo "profile: exit $?"
step kernels
timeout 100 "$deno" run --cached-only -A --unstable-webgpu bench/kernels.ts >"$OUT/kernels.txt" 2>&1
echo "kernels: exit $?"
step tests
# one file at a time (each prints its failures at its end; one that hangs loses only itself);
# the runtime's own import map: these tests import no package of deno.test.json's beyond it
for t in $GPU_TESTS; do
  timeout 45 "$deno" test --cached-only --no-check -A --unstable-webgpu \
    --unstable-no-legacy-abort "$t" >>"$OUT/tests.txt" 2>&1
  echo "$t: exit $?" | tee -a "$OUT/tests.txt"
done
step budget
# issue 9 on a GPU: exact decode of the default model by expert budget (every readback's floor
# against a faster resident decode)
timeout 150 "$deno" run --cached-only -A --unstable-webgpu bench/budget.ts --tokens 32 --reps 1 \
  >"$OUT/budget.txt" 2>&1
echo "budget: exit $?"
step sampler
timeout 30 "$deno" run --cached-only -A --unstable-webgpu bench/sampler.ts --no-decode --rounds 5 \
  >"$OUT/sampler.txt" 2>&1
echo "sampler: exit $?"
step done
rm -rf "$work"
