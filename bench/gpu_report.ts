/**
 * The figures a real GPU gives, in one run (tools/gpu/run.sh runs it on a lent GPU machine; it runs
 * wherever WebGPU does, so it is tried here on llvmpipe with --small):
 *   - the adapter, its limits and the optional features the runtime takes (subgroups,
 *     shader-f16, timestamp-query);
 *   - one readback's round trip (ms), the floor of every readback;
 *   - the GPU's own copy bandwidth: copyBufferToBuffer of a large buffer, timed by timestamp
 *     queries when offered (else by wall time around onSubmittedWorkDone), counting bytes read
 *     plus bytes written, the ceiling a decode matvec is measured against;
 *   - a synthetic model written to DIR (default: 2 layers of Qwen3-30B-A3B shapes, 32 of its 128
 *     experts, its vocab of 151936; --small: the SMALL fixture shape in BF16), all experts
 *     resident: greedy decode tokens/s of the adaptive decode loop (median of 3 after an untimed
 *     run) and the weight bytes a token reads, prefill tokens/s of 64/512/2048-token prompts (one
 *     forward each after an untimed one), and the last-token logits of a fixed 16-token prompt
 *     (DIR/runtime_logits.json) that tools/gpu/transformers_run.py compares with transformers';
 *   - the same with llvmpipe's kernel choices (llvmpipeKernels: 8 rows a lane in decode matmuls,
 *     tiles of tokens in a lane in prefill ones, lane norms, three-pass attention) beside the
 *     adapter's defaults, and how far their logits are apart;
 *   - prefill with the adapter's defaults plus the flash-style tiled attention (attentionTiles:
 *     attention_tiled.wgsl, off by default until a GPU has measured it).
 * Prints one JSON object (also written to --out FILE).
 *
 *   ./bin/deno run -A --unstable-webgpu bench/gpu_report.ts --dir DIR [--small] [--out FILE]
 */
import { parseArgs } from "node:util";
import { SMALL } from "../weights/fixture.ts";
import { bytesPerToken, QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel, type GpuModelOptions } from "../src/gpu/model.ts";
import { ADAPTER_CHOICES } from "../src/gpu/ops.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { GREEDY } from "../src/sampling.ts";
import { median } from "./memcpy.ts";

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    small: { type: "boolean", default: false },
    out: { type: "string" },
  },
});
if (values.dir === undefined) throw new RangeError("--dir DIR: where the model is written");
const dir = values.dir;
// (32 of the 128 experts, as every real-shape bench here: a token still reads 8 experts of the
// real size; writing all 128 would take minutes of a short GPU lease)
const shape = values.small
  ? { ...SMALL, dtype: "BF16" as const }
  : { ...QWEN3_30B_A3B, experts: 32 };
/** The prompt whose last-token logits are compared with transformers' (ids below every vocab). */
const REPORT_PROMPT = Array.from({ length: 16 }, (_, i) => (i * 37 + 11) % 500);
const DECODE_TOKENS = values.small ? 32 : 128;
const PREFILL_LENGTHS = [64, 512, 2048];
/** The kernel choices llvmpipe's defaults make, measured beside the adapter's own (on a GPU: the
 * kernels issue's before and after). */
const LLVMPIPE_KERNELS: GpuModelOptions = ADAPTER_CHOICES.llvmpipe;

/** GB/s of copyBufferToBuffer (bytes read + written), by timestamps when offered. */
async function copyBandwidth(
  gpu: Gpu,
): Promise<{ gbPerS: number; bestGbPerS: number; bytes: number; by: string }> {
  const device = gpu.device;
  const bytes =
    Math.min(1 << 30, gpu.limits.maxBufferSize, gpu.limits.maxStorageBufferBindingSize) &
    ~0xffff;
  const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const a = device.createBuffer({ size: bytes, usage }),
    b = device.createBuffer({ size: bytes, usage });
  const stamps = gpu.features.includes("timestamp-query");
  const REPS = 8;
  const seconds: number[] = [];
  for (let round = 0; round < 12; round++) { // (clocks ramp up: the best is reported too)
    const enc = device.createCommandEncoder();
    let set: GPUQuerySet | null = null,
      resolve: GPUBuffer | null = null,
      read: GPUBuffer | null = null;
    if (stamps) {
      set = device.createQuerySet({ type: "timestamp", count: 2 });
      resolve = device.createBuffer({
        size: 16,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      read = device.createBuffer({
        size: 16,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      // an empty pass writes the first stamp, another the second (copies have no timestampWrites)
      enc.beginComputePass({ timestampWrites: { querySet: set, beginningOfPassWriteIndex: 0 } })
        .end();
    }
    for (let i = 0; i < REPS; i++) {
      enc.copyBufferToBuffer(i % 2 ? b : a, 0, i % 2 ? a : b, 0, bytes);
    }
    if (set && resolve && read) {
      enc.beginComputePass({ timestampWrites: { querySet: set, endOfPassWriteIndex: 1 } }).end();
      enc.resolveQuerySet(set, 0, 2, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
    }
    const t0 = performance.now();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    const wall = (performance.now() - t0) / 1000;
    let s = wall;
    if (read) {
      await read.mapAsync(GPUMapMode.READ);
      const [t1, t2] = new BigUint64Array(read.getMappedRange().slice(0));
      read.unmap();
      if (t2 > t1) s = Number(t2 - t1) / 1e9;
    }
    if (round > 0) seconds.push(s / REPS); // round 0 warms up
  }
  a.destroy();
  b.destroy();
  return {
    gbPerS: (2 * bytes) / median(seconds) / 1e9,
    bestGbPerS: (2 * bytes) / Math.min(...seconds) / 1e9,
    bytes,
    by: stamps ? "timestamps" : "wall",
  };
}

/** Milliseconds of one readback round trip (a 16-byte copy submitted, then mapAsync awaited):
 * median and minimum of 20, the floor every readback of the runtime pays. */
async function readbackMs(gpu: Gpu): Promise<{ median: number; min: number }> {
  const device = gpu.device;
  const src = device.createBuffer({ size: 16, usage: GPUBufferUsage.COPY_SRC });
  const read = device.createBuffer({
    size: 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const ms: number[] = [];
  for (let i = 0; i < 21; i++) {
    const t = performance.now();
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(src, 0, read, 0, 16);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    read.unmap();
    if (i > 0) ms.push(performance.now() - t);
  }
  src.destroy();
  read.destroy();
  return { median: median(ms), min: Math.min(...ms) };
}

const t0 = performance.now();
const gpu = await openGpu();
const report: Record<string, unknown> = {
  date: new Date().toISOString(),
  adapter: {
    vendor: gpu.adapterInfo.vendor,
    architecture: gpu.adapterInfo.architecture,
    device: gpu.adapterInfo.device,
    description: gpu.adapterInfo.description,
  },
  features: gpu.features,
  limits: {
    maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
    maxBufferSize: gpu.limits.maxBufferSize,
    maxComputeWorkgroupSizeX: gpu.limits.maxComputeWorkgroupSizeX,
    maxComputeInvocationsPerWorkgroup: gpu.limits.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupStorageSize: gpu.limits.maxComputeWorkgroupStorageSize,
  },
  copy: await copyBandwidth(gpu),
  readbackMs: await readbackMs(gpu),
  shape,
};
console.error("copy bandwidth:", JSON.stringify(report.copy));

try {
  Deno.statSync(`${dir}/config.json`);
  console.error(`model: ${dir} (already written)`);
} catch {
  console.error(`writing the model to ${dir} ...`);
  const w0 = performance.now();
  await writeFixtureInChild(dir, shape);
  report.writeS = (performance.now() - w0) / 1000;
}
const opened = openModelDir(dir);
const c = opened.weights.config;
const maxPrompt = Math.max(...PREFILL_LENGTHS);

/** Decode (unless `prefillOnly`) and prefill speeds, and the fixed prompt's last-token logits,
 * with `kernels`. */
async function measure(kernels: GpuModelOptions, prefillOnly = false) {
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: maxPrompt + 8,
    expertSource: opened.experts,
    ...kernels,
  });
  try {
    const s = model.newSession();
    const [logits] = await s.forward(REPORT_PROMPT, { lastOnly: true });
    s.free();
    const speeds: number[] = [];
    let readbacks = 0;
    for (let r = 0; r <= (prefillOnly ? -1 : 3); r++) {
      const s = model.newSession();
      const res = await s.decode(
        { feed: REPORT_PROMPT, maxTokens: DECODE_TOKENS, sampling: GREEDY, eosIds: [] },
        () => undefined,
      );
      s.free();
      if (r === 0) continue; // pipelines compile
      speeds.push(res.stats.tokens / (res.stats.ms / 1000));
      readbacks = res.stats.readbacks / res.stats.tokens;
    }
    const perToken = bytesPerToken(c, 2);
    const tokPerS = median(speeds);
    const decode = {
      tokens: DECODE_TOKENS,
      tokPerS,
      readbacksPerToken: readbacks,
      mbPerToken: perToken.total / 1e6,
      weightGbPerS: (perToken.total * tokPerS) / 1e9,
    };
    if (prefillOnly) console.error("decode: not measured (prefill only)");
    if (!prefillOnly) console.error("decode:", JSON.stringify(decode));
    const prefill: Record<string, number> = {};
    for (const n of PREFILL_LENGTHS) {
      const prompt = Array.from({ length: n }, (_, i) => (i * 7919 + 13) % c.vocabSize);
      const ms: number[] = [];
      for (let r = 0; r < 2; r++) {
        const s = model.newSession();
        const p0 = performance.now();
        await s.forward(prompt, { lastOnly: true });
        ms.push(performance.now() - p0);
        s.free();
      }
      prefill[n] = n / (ms[1] / 1000);
    }
    console.error("prefill:", JSON.stringify(prefill));
    return { decode, prefill, logits, maxBatch: model.maxBatch };
  } finally {
    model.destroy();
  }
}

try {
  // the adapter's kernels (the runtime's defaults), then llvmpipe's choices on the same adapter
  console.error("kernels: the adapter's defaults");
  const after = await measure({});
  // the fixed prompt's last-token logits, for transformers_run.py
  await Deno.writeTextFile(
    `${dir}/runtime_logits.json`,
    JSON.stringify({ prompt: REPORT_PROMPT, logits: Array.from(after.logits) }),
  );
  report.decode = after.decode;
  report.prefillTokPerS = after.prefill;
  report.maxBatch = after.maxBatch;
  console.error(`kernels: llvmpipe's (${JSON.stringify(LLVMPIPE_KERNELS)})`);
  const before = await measure(LLVMPIPE_KERNELS);
  let diff = 0;
  for (let i = 0; i < after.logits.length; i++) {
    diff = Math.max(diff, Math.abs(after.logits[i] - before.logits[i]));
  }
  report.llvmpipeKernels = {
    options: LLVMPIPE_KERNELS,
    decode: before.decode,
    prefillTokPerS: before.prefill,
    maxBatch: before.maxBatch,
    logitsMaxAbsDiff: diff,
  };
  // the adapter's defaults with prefill attention in tiles (attention_tiled.wgsl), prefill only
  console.error("kernels: the adapter's defaults, prefill attention in tiles");
  const tiled = await measure({ attentionTiles: true }, true);
  let tiledDiff = 0;
  for (let i = 0; i < after.logits.length; i++) {
    tiledDiff = Math.max(tiledDiff, Math.abs(after.logits[i] - tiled.logits[i]));
  }
  report.attentionTiles = { prefillTokPerS: tiled.prefill, logitsMaxAbsDiff: tiledDiff };
} finally {
  opened.close();
}
report.seconds = (performance.now() - t0) / 1000;
const json = JSON.stringify(report, null, 2);
console.log(json);
if (values.out) await Deno.writeTextFile(values.out, json);
gpu.device.destroy();
