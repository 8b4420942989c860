/**
 * Weight bandwidth of the matmul and expert kernels on the current WebGPU adapter, next to a plain
 * ArrayBuffer copy measured in the same run. Not a test: prints tables. Besides wall-clock GB/s
 * it prints GB per CPU-second of this process (llvmpipe runs on our own threads), which stays
 * comparable when other processes share the cores.
 *   ./bin/deno run -A --unstable-webgpu bench/kernels.ts [--arrays | --attention | --experts]
 * --arrays: the private-array rows only; --attention: the attention rows only; --experts: the
 * expert rows only (T = 1, 8, 64; pool buffers and textures, one pool and three).
 */
import process from "node:process";
import { openGpu } from "../src/gpu/device.ts";
import { ADAPTER_CHOICES, OpConfigError, Ops } from "../src/gpu/ops.ts";
import type { Op, WeightDType, WeightRef } from "../src/gpu/ops_api.ts";
import { uploadWeightTexture } from "../src/gpu/resident.ts";
import { weightBytes } from "../src/gpu/weight_dtype.ts";
import { stepRecord } from "../src/gpu/ops_api.ts";

/** Dispatches per timed submit: enough to hide the ~11 ms submit+readback cost on llvmpipe. */
const REPS = 20;
/** Bytes of the CPU copy reference (larger than the last-level cache). */
const COPY_BYTES = 64 << 20;
/** Weights: a fixed bit pattern of small normal numbers (values do not matter for bandwidth). */
const WEIGHT_BITS = 0x3c003c00;
/** Expert geometry of Qwen3-30B-A3B: hidden, intermediate, experts per token, experts. */
const MOE = { D: 2048, I: 768, K: 8, E: 128 };

const gpu = await openGpu();
const ops = new Ops(gpu);
/** The tiled expert kernels' baseline workgroup order (tile-major), for the rows beside it. */
const tileMajorOps = new Ops(gpu, { interleavedTiles: false, workgroupTiles: false });
/** Attention without the three-pass kernels' scores scratch and tiles: always the one-pass kernel
 * (decode's default on adapters other than llvmpipe, and their prefill's before the tiles). */
const onePassOps = new Ops(gpu, { attentionScratchBytes: 0, attentionTiles: false });
/** The flash-style tiled attention (attention_tiled.wgsl; prefill's default on adapters other
 * than llvmpipe), here on every step, decode's too. */
const tiledAttentionOps = new Ops(gpu, {
  attentionScratchBytes: 0,
  attentionTiles: true,
  attentionTilesFrom: 1,
});
/** Three-pass attention while its scores fit in 80 MiB (llvmpipe's default), blocked, and its
 * baseline: one position / head-dim chunk per lane. */
const THREE_PASS_SCRATCH = ADAPTER_CHOICES.llvmpipe.attentionScratchBytes;
const threePassOps = new Ops(gpu, { attentionScratchBytes: THREE_PASS_SCRATCH });
const unblockedOps = new Ops(gpu, {
  attentionBlocks: false,
  attentionScratchBytes: THREE_PASS_SCRATCH,
});
/** Decode matmuls (T <= 8) in matmul.wgsl, 8 rows a lane (llvmpipe's default, the baseline), and
 * in matvec.wgsl, a workgroup per 8 rows (other adapters' default). */
const laneRowsOps = new Ops(gpu, { coalescedMatvec: false });
const matvecOps = new Ops(gpu, { coalescedMatvec: true });
/** Prefill matmul tiles in a lane: 16 tokens from 32 a step (llvmpipe's default) and 8 (the
 * baseline); and 64 x 64 tiles staged in workgroup memory (matmul_tiled.wgsl, other adapters'). */
const wideTileOps = new Ops(gpu, { workgroupTiles: false });
const narrowTileOps = new Ops(gpu, { wideTiles: false, workgroupTiles: false });
const sharedTileOps = new Ops(gpu, { workgroupTiles: true });
/** Private arrays at each kernel's declared maximum (the baseline of exactArrays). */
const maxArrayOps = new Ops(gpu, { exactArrays: false });
/** Every Ops above: time() writes each one's step (an op reads its own Ops' step buffer). */
const allOps = [
  ops,
  tileMajorOps,
  onePassOps,
  tiledAttentionOps,
  threePassOps,
  unblockedOps,
  laneRowsOps,
  matvecOps,
  wideTileOps,
  narrowTileOps,
  sharedTileOps,
  maxArrayOps,
];
const device = gpu.device;
const made: (GPUBuffer | GPUTexture)[] = [];

function storage(size: number, fill?: number): GPUBuffer {
  const b = device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
  if (fill !== undefined) device.queue.writeBuffer(b, 0, new Uint32Array(size / 4).fill(fill));
  made.push(b);
  return b;
}

function release(): void {
  for (const b of made.splice(0)) b.destroy();
}

/** A weight texture (TextureWeight) of `bytes` bytes of `fill`, freed by release(). */
function weightTexture(bytes: number, fill: number): GPUTexture {
  const t = uploadWeightTexture(
    device,
    new Uint8Array(new Uint32Array(bytes / 4).fill(fill).buffer),
    "w",
  );
  if (!t) throw new Error(`${bytes} B do not fit one weight texture`);
  made.push(t);
  return t;
}

/** With the adapter's `timestamp-query` feature (granted by openGpu when offered): the GPU's own
 * begin and end of each timed pass, resolved into a buffer read back after the pass. */
const timestamps = gpu.features.includes("timestamp-query")
  ? {
    set: device.createQuerySet({ type: "timestamp", count: 2 }),
    resolve: device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    }),
    read: device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    }),
  }
  : null;

/** Wall and CPU seconds of this process per recording of `list`: REPS recordings in one submit,
 * waited for with onSubmittedWorkDone; and the GPU's seconds per recording from timestamp
 * queries (null without the feature). */
async function time(
  list: Op[],
  T: number,
  pos0 = 0,
): Promise<{ wall: number; cpu: number; gpu: number | null }> {
  for (const o of allOps) device.queue.writeBuffer(o.step, 0, stepRecord(T, pos0));
  const once = async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass(
      timestamps
        ? {
          timestampWrites: {
            querySet: timestamps.set,
            beginningOfPassWriteIndex: 0,
            endOfPassWriteIndex: 1,
          },
        }
        : undefined,
    );
    for (let i = 0; i < REPS; i++) for (const op of list) op.record(pass, T);
    pass.end();
    if (timestamps) {
      enc.resolveQuerySet(timestamps.set, 0, 2, timestamps.resolve, 0);
      enc.copyBufferToBuffer(timestamps.resolve, 0, timestamps.read, 0, 16);
    }
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await once(); // warm-up: pipeline compile, first touch of the buffers
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await once();
  const wall = (performance.now() - t0) / 1000 / REPS;
  const c = process.cpuUsage(c0);
  let gpuS: number | null = null;
  if (timestamps) {
    await timestamps.read.mapAsync(GPUMapMode.READ);
    const [begin, end] = new BigUint64Array(timestamps.read.getMappedRange().slice(0));
    timestamps.read.unmap();
    gpuS = Number(end - begin) / 1e9 / REPS; // timestamps are in nanoseconds
  }
  return { wall, cpu: (c.user + c.system) / 1e6 / REPS, gpu: gpuS };
}

function matmulOp(
  dtype: WeightDType,
  N: number,
  K: number,
  T: number,
  layout: "rows" | "rows8" | "texture",
  from = ops,
): Op {
  const bytes = weightBytes(dtype, Math.ceil(N / 8) * 8 * K);
  const w: WeightRef = layout === "texture"
    ? { texture: weightTexture(bytes, WEIGHT_BITS), dtype, offsetElems: 0, layout: "rows8" }
    : { buffer: storage(bytes, WEIGHT_BITS), dtype, offsetElems: 0, layout };
  return from.matmul({
    x: storage(T * K * 4),
    w,
    out: storage(T * N * 4),
    K,
    N,
    outStride: N,
    outOffset: 0,
    accumulate: false,
  });
}

/** Attention of a T-token prefill step ending at `positions`: the op and its FLOP (4 x heads x
 * head_dim x the positions the step's tokens attend to). */
function attentionOp(
  from: Ops,
  heads: number,
  kvHeads: number,
  headDim: number,
  T: number,
  positions: number,
): { op: Op; flop: number } {
  let attended = 0;
  for (let t = 0; t < T; t++) attended += positions - T + t + 1;
  const kv = () => storage(positions * kvHeads * headDim * 4, 0x3c003c00);
  const op = from.attention({
    q: storage(T * heads * headDim * 4, 0x3c003c00),
    kCache: kv(),
    vCache: kv(),
    out: storage(T * heads * headDim * 4),
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    scale: 1 / Math.sqrt(headDim),
  });
  return { op, flop: 4 * heads * headDim * attended };
}

/** Both expert stages for T tokens, each routed to K distinct experts of E (pseudo-random). Expert
 * e lives in slot e % slots of one pool buffer as large as a storage binding allows. The ops are
 * told the model's expert count (what picks their tile size) and come from `from`. */
function expertOps(
  dtype: WeightDType,
  T: number,
  E = MOE.E,
  from = ops,
  texture = false,
  poolCount = 1,
): Op[] {
  const { D, I, K } = MOE;
  const slotElems = 3 * I * D;
  // one pool binding's slots, split over poolCount pools (the model's groups bind several)
  const perPool = Math.floor(
    device.limits.maxStorageBufferBindingSize / weightBytes(dtype, slotElems) / poolCount,
  );
  const poolSlots = perPool * poolCount;
  const idx = new Uint32Array(T * K);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < K; j++) idx[t * K + j] = (t * 37 + j * 17 + ((t * t) % 11)) % E;
  }
  const idxBuf = storage(idx.byteLength);
  device.queue.writeBuffer(idxBuf, 0, idx);
  const slots = storage(E * 4);
  device.queue.writeBuffer(slots, 0, new Uint32Array(E).map((_, e) => e % poolSlots));
  const poolBytes = weightBytes(dtype, perPool * slotElems);
  const common = {
    idx: idxBuf,
    slots,
    slotBase: 0,
    group: {
      pools: Array.from(
        { length: poolCount },
        () => texture ? weightTexture(poolBytes, WEIGHT_BITS) : storage(poolBytes, WEIGHT_BITS),
      ),
      firstSlot: 0,
      slots: poolSlots,
      slotsPerPool: perPool,
    },
    poolDtype: dtype,
    slotElems,
    partOffset: 0,
    k: K,
    hidden: D,
    inter: I,
  };
  const h = storage(T * K * I * 4);
  return [
    from.expertsGateUp({
      ...common,
      x: storage(T * D * 4),
      missed: storage(E * 4),
      h,
      numExperts: E,
    }),
    from.expertsDown({ ...common, h, y: storage(T * K * D * 4), numExperts: E }),
  ];
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

/** One table row; `reuse` is how many tokens each weight byte serves (matmul: T, experts: 1). */
function row(
  label: string,
  T: number,
  reuse: number,
  bytes: number,
  s: { wall: number; cpu: number; gpu: number | null },
): void {
  const gbs = bytes / s.wall / 1e9;
  const gpuCols = s.gpu === null
    ? ""
    : `  ${(s.gpu * 1000).toFixed(3).padStart(10)}  ${
      (bytes / s.gpu / 1e9).toFixed(2).padStart(8)
    }`;
  console.log(
    `${label.padEnd(24)} ${String(T).padStart(2)}  ${(s.wall * 1000).toFixed(3).padStart(8)}  ` +
      `${gbs.toFixed(2).padStart(11)}  ${(bytes / s.cpu / 1e9).toFixed(2).padStart(8)}  ` +
      `${(gbs * reuse).toFixed(2).padStart(14)}${gpuCols}`,
  );
}

/** One row of a prefill table: ms per recording, GFLOP/s, cores busy, and the GPU's own figures. */
function rateRow(
  label: string,
  variant: string,
  flop: number,
  s: { wall: number; cpu: number; gpu: number | null },
): void {
  const rate = (sec: number, width: number) =>
    `${(sec * 1000).toFixed(3).padStart(width)}  ${(flop / sec / 1e9).toFixed(2).padStart(width)}`;
  console.log(
    `${label.padEnd(30)} ${variant.padEnd(11)}  ${rate(s.wall, 8)}  ` +
      `${(s.cpu / s.wall).toFixed(2).padStart(7)}` + (s.gpu === null ? "" : `  ${rate(s.gpu, 11)}`),
  );
}

/** Private arrays at their declared maximum (the baseline) and sized to each pipeline, alternating:
 * the 8-token matmul (steps of 2-8 or 17-24 tokens: batched decode, short prompts) and the 16-token
 * one at 64 tokens (its arrays full either way), the tiled expert
 * kernels with 4-pair tiles (Qwen3-30B-A3B's 128 experts at a 64-token step), attention with 2
 * query heads per kv head (the default model's). */
async function arrayRows(): Promise<void> {
  console.log(
    "\nprivate arrays                 arrays       ms/call  GFLOP/s  CPU-s/s" +
      (timestamps ? "  GPU ms/call  GPU GFLOP/s" : ""),
  );
  const variants = [["declared", maxArrayOps], ["exact", ops]] as const;
  for (const T of [8, 64]) {
    const [N, K] = [4096, 2048];
    for (const [name, from] of variants) {
      const op = matmulOp("bf16", N, K, T, "rows8", from);
      rateRow(`matmul bf16 ${N}x${K} T${T}`, name, 2 * T * N * K, await time([op], T));
      release();
    }
  }
  for (const [name, from] of variants) {
    const { D, I, K } = MOE;
    const T = 64;
    const s = await time(expertOps("bf16", T, 128, from), T);
    rateRow(`experts bf16 E128 (4 pairs/expert)`, name, 2 * T * K * 3 * I * D, s);
    release();
  }
  for (const [name, from] of variants) {
    const { op, flop } = attentionOp(from, 16, 8, 64, 64, 512);
    rateRow(`attention H16/8 D64 at 512`, name, flop, await time([op], 64, 512 - 64));
    release();
  }
}

async function attentionRows(): Promise<void> {
  // Attention of a 64-token prefill step of Qwen3-30B-A3B's shape (32 query heads, 4 kv heads, head
  // dim 128) at the end of a 512- and a 2048-token prompt: GFLOP/s = 4 x heads x head_dim x the
  // positions the step's tokens attend to, per second. The one-pass kernel, the three-pass kernels
  // (scores kept in a scratch, llvmpipe's choice while they fit) with one position / head-dim
  // chunk per lane (the baseline) and blocked (several per lane, the default), and the tiled
  // kernel (other adapters' prefill; refused on llvmpipe past its loop limit).
  console.log(
    "\nattention prefill, 64 tokens   kernels      ms/call  GFLOP/s  CPU-s/s" +
      (timestamps ? "  GPU ms/call  GPU GFLOP/s" : ""),
  );
  for (const T of [64, 1]) {
    if (T === 1) {
      console.log(
        "\nattention decode, 1 token     kernels      ms/call  GFLOP/s  CPU-s/s" +
          (timestamps ? "  GPU ms/call  GPU GFLOP/s" : ""),
      );
    }
    for (const positions of [512, 2048]) {
      const variants = [
        ["one-pass", onePassOps],
        ["3-pass", unblockedOps],
        ["3-pass blk", threePassOps],
        ["tiles", tiledAttentionOps],
      ] as const;
      for (const [name, from] of variants) {
        let prepared: { op: Op; flop: number };
        try {
          prepared = attentionOp(from, 32, 4, 128, T, positions);
        } catch (e) {
          if (!(e instanceof OpConfigError)) throw e;
          console.log(`attention H32/4 D128 at ${positions}  ${name}: refused (${e.message})`);
          continue;
        }
        const { op, flop } = prepared;
        const s = await time([op], T, positions - T);
        rateRow(`attention H32/4 D128 at ${positions}`, name, flop, s);
        release();
      }
    }
  }
}

// both expert stages: 4 rows a lane (llvmpipe's) from a pool buffer and, marked "tex", from a pool
// texture (textureExperts), each with the slots in one pool and in three ("x3": the model's groups
// bind several, a switch per invocation), and, marked "mv", a workgroup per pair and 8 rows
// (experts_*_matvec.wgsl) below the tiled kernels' pairs (64 tokens: tiled)
async function expertRows(): Promise<void> {
  for (const T of [1, 8, 64]) {
    const { D, I, K } = MOE;
    const bytes = weightBytes("bf16", T * K * 3 * I * D); // every pair reads its expert's weights
    const lanes = T === 64 ? ops : laneRowsOps;
    const kernels: [string, Ops, boolean, number][] = [
      ["", lanes, false, 1],
      [" tex", lanes, true, 1],
      [" x3", lanes, false, 3],
      [" tex x3", lanes, true, 3],
      ...(T === 64 ? [] : [[" mv", matvecOps, false, 1] as [string, Ops, boolean, number]]),
    ];
    for (const [mark, from, texture, pools] of kernels) {
      const s = await time(expertOps("bf16", T, MOE.E, from, texture, pools), T);
      row(`experts bf16 D${D} I${I} K${K}${mark}`, T, 1, bytes, s);
      release();
    }
  }
}

/** The adapter, a CPU copy for reference, and the bandwidth table's header. */
function header(): void {
  console.log(`adapter: ${gpu.adapterInfo.description || gpu.adapterInfo.vendor}`);
  const copy = copyGBs();
  console.log(
    `ArrayBuffer copy: ${copy.wall.toFixed(1)} GB/s wall, ${copy.cpu.toFixed(1)} GB/CPU-s`,
  );
  console.log(
    "op                        T   ms/call  weight GB/s  GB/CPU-s  GB/s x tokens" +
      (timestamps ? "  GPU ms/call  GPU GB/s" : ""),
  );
  if (!timestamps) console.log("(no timestamp-query feature: GPU-side times not measured)");
}

if (Deno.args.includes("--experts")) {
  header();
  await expertRows();
  Deno.exit(0);
}
if (Deno.args.includes("--arrays")) {
  await arrayRows();
  Deno.exit(0);
}
if (Deno.args.includes("--attention")) {
  await attentionRows();
  Deno.exit(0);
}

header();
// row-major weights (the baseline; GGML's blocks for the quantized types), rows8 (the runtime's
// layout for resident f16/bf16, q8_0, q6_k and q4_k matrices) and rows8 in a weight texture
// (marked "tex": llvmpipe's default), alternating; each in matmul.wgsl (8 rows a lane) and, marked
// "mv", matvec.wgsl (a workgroup per 8 rows; rows8 of f16/bf16/f32 only)
for (const dtype of ["bf16", "q8_0", "q6_k", "q4_k", "f32"] as WeightDType[]) {
  for (const [N, K] of [[2048, 2048], [768, 2048], [16384, 2048]]) {
    for (const T of [1, 8]) {
      for (const layout of ["rows", "rows8", "texture"] as const) {
        if (layout === "texture" && dtype === "f32") continue; // f32 stays row-major
        const kernels = [["", laneRowsOps], [" mv", matvecOps]] as const;
        for (const [mark, from] of kernels) {
          if (mark && layout !== "rows" && dtype.startsWith("q")) continue; // matmul.wgsl's
          const tag = { rows: "", rows8: " r8", texture: " r8 tex" }[layout];
          row(
            `matmul ${dtype} ${N}x${K}${tag}${mark}`,
            T,
            T,
            weightBytes(dtype, N * K),
            await time([matmulOp(dtype, N, K, T, layout, from)], T),
          );
          release();
        }
      }
    }
  }
}
await expertRows();
// Prefill matmuls of a 64-token step (Qwen3-30B-A3B's q/o and k/v projections, bf16, rows8: the
// runtime's layout for resident matrices), 8-token tiles in a lane (the baseline), 16-token ones
// (llvmpipe's default from 32 tokens a step) and workgroup tiles (matmul_tiled.wgsl, other
// adapters' default), alternating: GFLOP/s = 2 x T x N x K per second.
console.log(
  "\nmatmul prefill, 64 tokens      tiles        ms/call  GFLOP/s  CPU-s/s" +
    (timestamps ? "  GPU ms/call  GPU GFLOP/s" : ""),
);
for (const [N, K] of [[4096, 2048], [2048, 4096], [512, 2048]]) {
  const T = 64;
  const flop = 2 * T * N * K;
  const tiles = [
    ["8 tokens", narrowTileOps, "rows8"],
    ["16 tokens", wideTileOps, "rows8"],
    ["16 tok tex", wideTileOps, "texture"],
    ["wg tiles", sharedTileOps, "rows8"],
  ] as const;
  for (const [name, from, layout] of tiles) {
    const s = await time([matmulOp("bf16", N, K, T, layout, from)], T);
    rateRow(`matmul bf16 ${N}x${K}`, name, flop, s);
    release();
  }
}

// Prefill steps of 64 tokens through the tiled expert kernels with lanes owning rows, tile-major
// (the baseline) and interleaved (llvmpipe's default), and a workgroup per tile and 8 rows
// (experts_*_tiled_wg.wgsl, other adapters'), alternating: GFLOP/s = 2 x pairs x 3 x I x D per
// second.
console.log(
  "\nexpert prefill, 64 tokens      order        ms/call  GFLOP/s  CPU-s/s" +
    (timestamps ? "  GPU ms/call  GPU GFLOP/s" : ""),
);
for (const E of [128, 32]) {
  const orders = [
    ["tile-major", tileMajorOps],
    ["interleaved", wideTileOps],
    ["wg tiles", sharedTileOps],
  ] as const;
  for (const [name, from] of orders) {
    const { D, I, K } = MOE;
    const T = 64;
    const flop = 2 * T * K * 3 * I * D;
    const s = await time(expertOps("bf16", T, E, from), T);
    rateRow(`experts bf16 E${E} (${T * K / E} pairs/expert)`, name, flop, s);
    release();
  }
}

await attentionRows();
