/**
 * Matmul (matvec at T=1) weight bandwidth on the current WebGPU adapter, next to a plain
 * ArrayBuffer copy measured in the same run. Not a test: prints a table. Besides wall-clock GB/s
 * it prints GB per CPU-second of this process (llvmpipe runs on our own threads), which stays
 * comparable when other processes share the cores.
 *   ./bin/deno run -A --unstable-webgpu bench/kernels.ts
 */
import process from "node:process";
import { openGpu } from "../src/gpu/device.ts";
import { Ops } from "../src/gpu/ops.ts";
import type { WeightDType } from "../src/gpu/ops_api.ts";

/** Dispatches per timed submit: enough to hide the ~11 ms submit+readback cost on llvmpipe. */
const REPS = 20;
/** Bytes of the CPU copy reference (larger than the last-level cache). */
const COPY_BYTES = 64 << 20;
const BYTES: Record<WeightDType, number> = { f32: 4, bf16: 2, f16: 2 };

const gpu = await openGpu();
const ops = new Ops(gpu);
const device = gpu.device;

function storage(size: number): GPUBuffer {
  return device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
}

/** Wall seconds and CPU seconds of this process per op call: REPS calls in one submit, waited for
 * with onSubmittedWorkDone. */
async function timeOp(
  dtype: WeightDType,
  N: number,
  K: number,
  T: number,
): Promise<{ wall: number; cpu: number }> {
  const w = storage(N * K * BYTES[dtype]);
  // Weights: a fixed bit pattern of small normal numbers (values do not matter for bandwidth).
  device.queue.writeBuffer(w, 0, new Uint32Array(w.size / 4).fill(0x3c003c00));
  const x = storage(T * K * 4), out = storage(T * N * 4);
  const op = ops.matmul({
    x,
    w: { buffer: w, dtype, offsetElems: 0 },
    out,
    K,
    N,
    outStride: N,
    outOffset: 0,
    accumulate: false,
  });
  device.queue.writeBuffer(ops.step, 0, new Uint32Array([T, 0, T, 0]));
  const once = async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let i = 0; i < REPS; i++) op.record(pass, T);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await once(); // warm-up: pipeline compile, first touch of the buffers
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await once();
  const wall = (performance.now() - t0) / 1000 / REPS;
  const c = process.cpuUsage(c0);
  const cpu = (c.user + c.system) / 1e6 / REPS;
  w.destroy();
  x.destroy();
  out.destroy();
  return { wall, cpu };
}

function copyGBs(): { wall: number; cpu: number } {
  const src = new Uint8Array(COPY_BYTES).fill(1), dst = new Uint8Array(COPY_BYTES);
  dst.set(src); // warm-up
  const reps = 5;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) dst.set(src);
  const c = process.cpuUsage(c0);
  const bytes = COPY_BYTES * reps;
  return {
    wall: bytes / ((performance.now() - t0) / 1000) / 1e9,
    cpu: bytes / ((c.user + c.system) / 1e6) / 1e9,
  };
}

console.log(`adapter: ${gpu.adapterInfo.description || gpu.adapterInfo.vendor}`);
const copy = copyGBs();
console.log(
  `ArrayBuffer copy: ${copy.wall.toFixed(1)} GB/s wall, ${copy.cpu.toFixed(1)} GB/CPU-s`,
);
console.log("dtype  N x K        T   ms/call  weight GB/s  GB/CPU-s  GB/s per token");
for (const dtype of ["bf16", "f32"] as WeightDType[]) {
  for (const [N, K] of [[2048, 2048], [768, 2048]]) {
    for (const T of [1, 8]) {
      const s = await timeOp(dtype, N, K, T);
      const bytes = N * K * BYTES[dtype];
      const gbs = bytes / s.wall / 1e9;
      console.log(
        `${dtype.padEnd(6)} ${`${N} x ${K}`.padEnd(12)} ${String(T).padStart(2)}  ` +
          `${(s.wall * 1000).toFixed(3).padStart(7)}  ${gbs.toFixed(2).padStart(11)}  ` +
          `${(bytes / s.cpu / 1e9).toFixed(2).padStart(8)}  ${(gbs * T).toFixed(2).padStart(14)}`,
      );
    }
  }
}
