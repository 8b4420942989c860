/**
 * The block-quantized weight loaders (kernels/weights_q8_0.wgsl, _q4_0, _q5_0, _q4_k, _q6_k):
 * every element read through load_w4 and load_w8 equals GGML's dequantize_row_* bit for bit, on
 * hand-built blocks (random bytes; f16 scales normal, negative, subnormal, zero, largest; quants at
 * their extremes), and equal src/quant/dequantize.ts; matmul, the expert kernels and embed read
 * quantized weights as the float64 reference computes on their dequantized values.
 */
import assert from "node:assert";
import { commonSource, kernelSource } from "../src/gpu/shader.ts";
import { readF32 } from "../src/gpu/readback.ts";
import type { QuantWeightDType } from "../src/gpu/ops_api.ts";
import { dequantizeRows } from "../src/quant/dequantize.ts";
import {
  repackQ4KRows8,
  repackQ4Rows8,
  repackQ6KRows8,
  repackQ8Rows8,
} from "../src/gpu/resident.ts";
import type { QuantType } from "../src/quant/formats.ts";
import * as ref from "../src/reference/ops.ts";
import { Ops } from "../src/gpu/ops.ts";
import {
  assertClose,
  buffer,
  checkExpertPairs,
  gpu,
  gpuTest,
  ops,
  randomF32,
  rng,
  run,
  SHARED_SIZES,
} from "./kernel_harness.ts";

type Quant = QuantWeightDType;

/** f32 accumulation against float64, relative to the largest output (as the f32 kernel tests). */
const TOL = 2e-6;

/** Values and bytes per block, offset of each f16 scale in a block (ggml-common.h). */
const LAYOUT: Record<Quant, { elems: number; bytes: number; halves: number[] }> = {
  q8_0: { elems: 32, bytes: 34, halves: [0] },
  q4_0: { elems: 32, bytes: 18, halves: [0] },
  q5_0: { elems: 32, bytes: 22, halves: [0] },
  q4_k: { elems: 256, bytes: 144, halves: [0, 2] },
  q6_k: { elems: 256, bytes: 210, halves: [208] },
};
const QUANTS = Object.keys(LAYOUT) as Quant[];

// ---- a CPU dequantizer written from GGML's C (ggml-quants.c dequantize_row_*) ----

/** IEEE half to number (exact; subnormals included). */
function half(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 31, mant = h & 1023;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return exp === 0 ? sign * mant * 2 ** -24 : sign * (1024 + mant) * 2 ** (exp - 25);
}

const f = Math.fround;

/** The f32 values GGML's dequantize_row_<type> computes for `blocks` whole blocks of `bytes`. */
function dequantize(type: Quant, bytes: Uint8Array): Float32Array {
  const { elems, bytes: size } = LAYOUT[type];
  const nb = bytes.length / size;
  const y = new Float32Array(nb * elems);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const i8 = (v: number) => (v << 24) >> 24;
  for (let i = 0; i < nb; i++) {
    const o = i * size, yo = i * elems;
    const x = bytes.subarray(o, o + size);
    if (type === "q8_0") {
      const d = half(dv.getUint16(o, true));
      for (let j = 0; j < 32; j++) y[yo + j] = f(i8(x[2 + j]) * d);
    } else if (type === "q4_0") {
      const d = half(dv.getUint16(o, true));
      for (let j = 0; j < 16; j++) {
        y[yo + j] = f(((x[2 + j] & 0x0f) - 8) * d);
        y[yo + j + 16] = f(((x[2 + j] >> 4) - 8) * d);
      }
    } else if (type === "q5_0") {
      const d = half(dv.getUint16(o, true));
      const qh = dv.getUint32(o + 2, true);
      for (let j = 0; j < 16; j++) {
        const xh0 = ((qh >>> j) << 4) & 0x10;
        const xh1 = (qh >>> (j + 12)) & 0x10;
        y[yo + j] = f((((x[6 + j] & 0x0f) | xh0) - 16) * d);
        y[yo + j + 16] = f((((x[6 + j] >> 4) | xh1) - 16) * d);
      }
    } else if (type === "q4_k") {
      const d = half(dv.getUint16(o, true));
      const min = half(dv.getUint16(o + 2, true));
      const scales = x.subarray(4, 16);
      const scaleMin = (j: number): [number, number] =>
        j < 4 ? [scales[j] & 63, scales[j + 4] & 63] : [
          (scales[j + 4] & 0xf) | ((scales[j - 4] >> 6) << 4),
          (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        ];
      let q = 16, is = 0, yi = yo;
      for (let j = 0; j < 256; j += 64) {
        let [sc, m] = scaleMin(is);
        const d1 = f(d * sc), m1 = f(min * m);
        [sc, m] = scaleMin(is + 1);
        const d2 = f(d * sc), m2 = f(min * m);
        for (let l = 0; l < 32; l++) y[yi++] = f(f(d1 * (x[q + l] & 0xf)) - m1);
        for (let l = 0; l < 32; l++) y[yi++] = f(f(d2 * (x[q + l] >> 4)) - m2);
        q += 32;
        is += 2;
      }
    } else {
      const d = half(dv.getUint16(o + 208, true));
      let ql = 0, qh = 128, sc = 192, yi = yo;
      for (let n = 0; n < 256; n += 128) {
        for (let l = 0; l < 32; l++) {
          const is = l >> 4;
          const q1 = i8((x[ql + l] & 0xf) | (((x[qh + l] >> 0) & 3) << 4)) - 32;
          const q2 = i8((x[ql + l + 32] & 0xf) | (((x[qh + l] >> 2) & 3) << 4)) - 32;
          const q3 = i8((x[ql + l] >> 4) | (((x[qh + l] >> 4) & 3) << 4)) - 32;
          const q4 = i8((x[ql + l + 32] >> 4) | (((x[qh + l] >> 6) & 3) << 4)) - 32;
          y[yi + l] = f(f(d * i8(x[sc + is])) * q1);
          y[yi + l + 32] = f(f(d * i8(x[sc + is + 2])) * q2);
          y[yi + l + 64] = f(f(d * i8(x[sc + is + 4])) * q3);
          y[yi + l + 96] = f(f(d * i8(x[sc + is + 6])) * q4);
        }
        yi += 128;
        ql += 64;
        qh += 32;
        sc += 8;
      }
    }
  }
  return y;
}

// ---- hand-built blocks ----

/** f16 bit patterns of finite scales: normal of either sign, subnormal, zero, extremes. */
function scaleBits(i: number, next: () => number): number {
  const r = (n: number) => Math.floor(((next() + 1) / 2) * n);
  const sign = (i >> 3) & 1 ? 0x8000 : 0;
  switch (i % 8) {
    case 0: // a typical weight scale, around 2^-8..2^-4
      return sign | ((r(5) + 7) << 10) | r(1024);
    case 1: // any normal
      return sign | ((r(30) + 1) << 10) | r(1024);
    case 2: // subnormal
      return sign | (r(1023) + 1);
    case 3: // smallest subnormal
      return sign | 1;
    case 4: // zero (either sign)
      return sign;
    case 5: // largest finite
      return sign | 0x7bff;
    case 6: // smallest normal
      return sign | 0x0400;
    default:
      return sign | ((r(30) + 1) << 10) | r(1024);
  }
}

/** nb blocks of `type`: random bytes with scales from scaleBits; blocks 1..3 hold the quants'
 * extremes (every bit set, none set, alternating 0x80/0x7f). `typical`: random bytes with
 * scales of typical weights only (2^-8..2^-4, either sign), for the matmul tests. */
function randomBlocks(type: Quant, nb: number, seed: number, typical = false): Uint8Array {
  const { bytes: size, halves } = LAYOUT[type];
  const next = rng(seed);
  const out = new Uint8Array(nb * size);
  for (let i = 0; i < out.length; i++) out[i] = Math.floor(((next() + 1) / 2) * 256) & 255;
  const fill = [0, 0xff, 0x00, -1];
  for (let b = 0; b < nb; b++) {
    const block = out.subarray(b * size, (b + 1) * size);
    if (!typical && b >= 1 && b <= 3) {
      for (let j = 0; j < size; j++) block[j] = fill[b] >= 0 ? fill[b] : j % 2 ? 0x7f : 0x80;
    }
    for (const [k, at] of halves.entries()) {
      const h = scaleBits(typical ? (next() < 0 ? 8 : 0) : b * halves.length + k, next);
      block[at] = h & 255;
      block[at + 1] = h >> 8;
    }
  }
  return out;
}

/** The words of `bytes` (zero-padded to a whole number of words). */
function words(bytes: Uint8Array): Uint32Array {
  const padded = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
  padded.set(bytes);
  return new Uint32Array(padded.buffer);
}

// ---- every element through the loader ----

/** A kernel that writes load_w8(8i) (WIDE) or load_w4(4i) of every group i to `out`. */
const PROBE = `
@group(0) @binding(1) var<storage, read> weights: array<WeightWord>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

override WIDE: bool = true;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (WIDE) {
    if (2u * i + 1u < arrayLength(&out)) {
      let w = load_w8(i * 8u);
      out[2u * i] = w.lo;
      out[2u * i + 1u] = w.hi;
    }
  } else if (i < arrayLength(&out)) {
    out[i] = load_w4(i * 4u);
  }
}
`;

/** Every element of the blocks in `bytes` as load_w8 (wide) or load_w4 returns it. */
async function probe(type: Quant, bytes: Uint8Array, wide: boolean): Promise<Float32Array> {
  const device = gpu.device;
  const n = (bytes.length / LAYOUT[type].bytes) * LAYOUT[type].elems;
  const code = [commonSource(), kernelSource(`weights_${type}`), PROBE].join("\n");
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ label: `probe ${type}`, code });
  const layout = device.createBindGroupLayout({
    entries: (["uniform", "read-only-storage", "storage"] as const).map((type, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type },
    })),
  });
  const pipeline = device.createComputePipeline({
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: "main", constants: { WIDE: wide ? 1 : 0 } },
  });
  const out = buffer(n * 4);
  const bindGroup = device.createBindGroup({
    layout,
    entries: [ops.step, buffer(words(bytes)), out].map((b, binding) => ({
      binding,
      resource: { buffer: b, size: binding === 2 ? n * 4 : undefined },
    })),
  });
  const error = await device.popErrorScope();
  assert.strictEqual(error, null, `${type}: ${error?.message}`);
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(Math.ceil(n / (wide ? 8 : 4) / 64));
  pass.end();
  device.queue.submit([encoder.finish()]);
  return await readF32(gpu, out, 0, n);
}

/** Asserts got and want are the same f32 values bit for bit (NaN never expected). */
function assertSameBits(got: Float32Array, want: Float32Array, what: string): void {
  assert.strictEqual(got.length, want.length, `${what}: length`);
  const gotBits = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const wantBits = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < want.length; i++) {
    if (gotBits[i] !== wantBits[i]) {
      assert.fail(
        `${what}: element ${i} is ${got[i]} (0x${gotBits[i].toString(16)}), ` +
          `GGML gives ${want[i]} (0x${wantBits[i].toString(16)})`,
      );
    }
  }
}

/** Blocks per probe: every scale kind at both block parities (2-byte and 4-byte aligned). */
const BLOCKS: Record<Quant, number> = { q8_0: 96, q4_0: 96, q5_0: 96, q4_k: 24, q6_k: 24 };

for (const type of QUANTS) {
  gpuTest(`weights_${type}: load_w8 and load_w4 equal GGML's dequantize bit for bit`, async () => {
    const bytes = randomBlocks(type, BLOCKS[type], 7 + type.length);
    const want = dequantize(type, bytes);
    assert.ok(want.every(Number.isFinite), "finite test values");
    assertSameBits(await probe(type, bytes, true), want, `${type} load_w8`);
    assertSameBits(await probe(type, bytes, false), want, `${type} load_w4`);
    const elems = LAYOUT[type].elems;
    assertSameBits(
      dequantizeRows(type.toUpperCase() as QuantType, bytes, BLOCKS[type], elems),
      want,
      `${type} dequantizeRows`,
    );
  });
}

// ---- the kernels on quantized weights ----

/** `rows` rows of `cols` values of `type` (typical scales) and their exact values. */
function quantMatrix(type: Quant, rows: number, cols: number, seed: number) {
  const bytes = randomBlocks(type, (rows * cols) / LAYOUT[type].elems, seed, true);
  return { bytes, values: dequantize(type, bytes) };
}

/** [K, offset rows, T]: decode and prefill, one or two K-quant blocks per row; 40 rows of offset
 * put the matrix past the binding's alignment (bound from a nonzero offset). */
const MATMUL_CASES: [number, number, number][] = [
  [256, 0, 1],
  [256, 3, 7],
  [512, 1, 1],
  [512, 40, 7],
  [256, 3, 20], // past 8 tokens: matmul.wgsl's tiles, or matmul_tiled.wgsl
];
/** Lanes owning rows (llvmpipe's default) and workgroups sharing them (matvec.wgsl,
 * matmul_tiled.wgsl, the experts' matvec and workgroup tiles: other adapters'), forced. */
const KERNELS: [string, Ops][] = [
  ["lane kernels", new Ops(gpu, { coalescedMatvec: false, workgroupTiles: false })],
  [
    "GPU kernels",
    new Ops(gpu, {
      coalescedMatvec: true,
      workgroupTiles: true,
      sharedSizes: SHARED_SIZES,
    }),
  ],
];
/** Neither a multiple of the rows per invocation (8) nor of the workgroup. */
const MATMUL_ROWS = 75;

for (const [kernels, o] of KERNELS) {
  for (const type of QUANTS) {
    gpuTest(
      `matmul() (${kernels}) on ${type} weights matches the float64 reference (T 1, 7, 20)`,
      async () => {
        for (const [K, offsetRows, T] of MATMUL_CASES) {
          const N = MATMUL_ROWS;
          const w = quantMatrix(type, offsetRows + N + 1, K, K + offsetRows);
          const x = randomF32(T * K, 100 + T);
          const out = buffer(T * N * 4);
          const op = o.matmul({
            x: buffer(x),
            w: { buffer: buffer(words(w.bytes)), dtype: type, offsetElems: offsetRows * K },
            out,
            K,
            N,
            outStride: N,
            outOffset: 0,
            accumulate: false,
          });
          run([op], T, 0, o.step);
          const got = await readF32(gpu, out, 0, T * N);
          const want = ref.matmul(x, w.values.subarray(offsetRows * K), T, K, N);
          assertClose(got, want, TOL, `${type} K=${K} offset=${offsetRows} rows T=${T}`);
        }
      },
    );
  }
}

for (const type of QUANTS) {
  gpuTest(`embed() gathers rows of a ${type} table exactly`, async () => {
    const D = LAYOUT[type].elems * 2, rows = 9, first = 100, offsetRows = 5;
    const table = quantMatrix(type, offsetRows + rows, D, 3);
    const tokens = [104, 100, 108, 7, 104, 109, 101]; // 7 and 109: another chunk's rows
    const T = tokens.length;
    const initial = new Float32Array(T * D).fill(12345);
    const out = buffer(initial);
    run([
      ops.embed({
        ids: buffer(new Uint32Array(tokens)),
        idsStride: T,
        table: { buffer: buffer(words(table.bytes)), dtype: type, offsetElems: offsetRows * D },
        first,
        rows,
        hidden: D,
        out,
      }),
    ], T);
    const got = await readF32(gpu, out, 0, T * D);
    const want = new Float32Array(initial);
    tokens.forEach((id, t) => {
      if (id >= first && id < first + rows) {
        const at = (offsetRows + id - first) * D;
        want.set(table.values.subarray(at, at + D), t * D);
      }
    });
    assertSameBits(got, want, `${type} embed`);
  });
}

/** Slot-table value of a non-resident expert (ABSENT of src/gpu/expert_pool.ts). */
const ABSENT = 0xffffffff;
const UNTOUCHED = 12345;
/** Two layers of E experts, K per token; layer 1's table points into two pool buffers. */
const E = 6, K = 3;
const LAYER1_SLOTS = [4, 0, ABSENT, 2, 3, ABSENT];
const POOLS = [{ first: 0, slots: 3 }, { first: 3, slots: 2 }];

for (const type of QUANTS) {
  // D and I whole blocks (down's rows are I long); one block of padding per slot puts every
  // other slot at an odd block (a 2-byte aligned start for 34-, 18-, 22- and 210-byte blocks).
  const block = LAYOUT[type].elems;
  const [D, I] = block === 256 ? [256, 256] : [96, 64];
  const SLOT_ELEMS = 3 * I * D + block;
  for (const [kernels, o] of KERNELS) {
    gpuTest(
      `expertsGateUp()/expertsDown() (${kernels}) on ${type} pools match the float64 reference`,
      async () => {
        const pools = POOLS.map((p) => quantMatrix(type, p.slots, SLOT_ELEMS, 50 + p.first));
        const poolBufs = pools.map((p) => buffer(words(p.bytes)));
        const expert = (slot: number) => {
          const pi = POOLS.findIndex((p) => slot >= p.first && slot < p.first + p.slots);
          const at = (slot - POOLS[pi].first) * SLOT_ELEMS;
          const v = pools[pi].values;
          return {
            gate: v.subarray(at, at + I * D),
            up: v.subarray(at + I * D, at + 2 * I * D),
            down: v.subarray(at + 2 * I * D, at + 3 * I * D),
          };
        };
        const table = new Uint32Array([1, 1, 1, 1, 1, 1, ...LAYER1_SLOTS]);
        const slots = buffer(table);
        // T = 50: 150 (token, expert) pairs take the tiled kernels.
        for (const T of [1, 3, 50]) {
          const next = rng(T);
          const idxArr = new Uint32Array(T * K);
          for (let t = 0; t < T; t++) {
            const order = Array.from({ length: E }, (_, e) => e).sort(() => next());
            idxArr.set(order.slice(0, K), t * K);
          }
          const x = randomF32(T * D, 7 + T);
          const idx = buffer(idxArr), missed = buffer(table.byteLength);
          const h = buffer(new Float32Array(T * K * I).fill(UNTOUCHED));
          const y = buffer(new Float32Array(T * K * D).fill(UNTOUCHED));
          const xBuf = buffer(x);
          const common = { idx, slots, slotBase: E, poolDtype: type, slotElems: SLOT_ELEMS, k: K };
          // Both pools bound by one op (one group), as the model binds a group of pool buffers.
          const group = {
            pools: poolBufs,
            firstSlot: 0,
            slots: POOLS[0].slots + POOLS[1].slots,
            slotsPerPool: POOLS[0].slots,
          };
          const list = [
            o.expertsGateUp({
              ...common,
              partOffset: 0,
              x: xBuf,
              missed,
              group,
              h,
              hidden: D,
              inter: I,
            }),
            o.expertsDown({
              ...common,
              partOffset: 2 * I * D,
              h,
              group,
              y,
              hidden: D,
              inter: I,
            }),
          ];
          run(list, T, 0, o.step);
          const gotH = await readF32(gpu, h, 0, T * K * I);
          const gotY = await readF32(gpu, y, 0, T * K * D);
          await checkExpertPairs({
            idx: idxArr,
            x,
            gotH,
            gotY,
            missed,
            slotOf: LAYER1_SLOTS,
            absent: ABSENT,
            expert,
            D,
            I,
            K,
            E,
            tol: TOL,
            untouched: UNTOUCHED,
            what: `${type} T=${T}`,
          });
        }
      },
    );
  }
}

/** The quantized types matmul reads repacked in 8-row blocks: repack, bytes per 256 values, and
 * the [K, T] cases (K whole blocks). */
const ROWS8_QUANTS = [
  {
    type: "q8_0",
    repack: repackQ8Rows8,
    bytes256: 272,
    cases: [[256, 1], [512, 7], [96, 9], [256, 40]],
  },
  {
    type: "q6_k",
    repack: repackQ6KRows8,
    bytes256: 210,
    cases: [[256, 1], [512, 7], [256, 9], [512, 40]],
  },
  {
    type: "q4_k",
    repack: repackQ4KRows8,
    bytes256: 144,
    cases: [[256, 1], [512, 7], [256, 9], [512, 40]],
  },
  {
    type: "q4_0",
    repack: (b: Uint8Array, n: number, k: number) => repackQ4Rows8(b, n, k, false),
    bytes256: 144,
    cases: [[256, 1], [512, 7], [96, 9], [256, 40]],
  },
  {
    type: "q5_0",
    repack: (b: Uint8Array, n: number, k: number) => repackQ4Rows8(b, n, k, true),
    bytes256: 176,
    cases: [[256, 1], [512, 7], [96, 9], [256, 40]],
  },
] as const;

for (const { type, repack, bytes256, cases } of ROWS8_QUANTS) {
  gpuTest(
    `matmul() over ${type} weights repacked in 8-row blocks gives exactly what it gives over the GGML rows (T 1, 7, 9, 40; stacked q/k/v splits)`,
    async () => {
      const N = MATMUL_ROWS; // the last block of 8 rows is padded
      for (const [K, T] of cases) {
        const w = quantMatrix(type, N, K, 3 * K + T);
        const rows8 = repack(w.bytes, N, K);
        assert.strictEqual(rows8.byteLength, (Math.ceil(N / 8) * 8 * K * bytes256) / 256);
        const xs = randomF32(T * K, 300 + T);
        const x = buffer(xs);
        for (const split of [false, true]) {
          // a split at rows 37 and 59 (inside blocks of 8), as a stacked q/k/v matmul does
          const cut = split ? { k: 37, v: 59 } : null;
          const outs = [0, 1].map(() => ({
            out: buffer(T * N * 4),
            kOut: buffer(T * N * 4),
            vOut: buffer(T * N * 4),
          }));
          const mm = [
            { buffer: buffer(words(w.bytes)), dtype: type, offsetElems: 0 },
            {
              buffer: buffer(rows8),
              dtype: type,
              offsetElems: 0,
              layout: "rows8" as const,
            },
          ].map((wr, i) =>
            ops.matmul({
              x,
              w: wr,
              out: outs[i].out,
              K,
              N,
              outStride: cut ? cut.k : N,
              outOffset: 0,
              accumulate: false,
              ...(cut ? { split: { ...cut, kOut: outs[i].kOut, vOut: outs[i].vOut } } : {}),
            })
          );
          run(mm, T);
          for (const b of ["out", "kOut", "vOut"] as const) {
            const n = T * N;
            assertSameBits(
              await readF32(gpu, outs[1][b], 0, n),
              await readF32(gpu, outs[0][b], 0, n),
              `K=${K} T=${T} split=${split} ${b}`,
            );
          }
          if (!cut) {
            const got = await readF32(gpu, outs[1].out, 0, T * N);
            assertClose(got, ref.matmul(xs, w.values, T, K, N), TOL, `K=${K} T=${T} vs reference`);
          }
        }
      }
    },
  );
}

gpuTest("repackQ8Rows8() keeps each value: row n's block g at its group, scale first", () => {
  const N = 11, K = 64;
  const w = quantMatrix("q8_0", N, K, 5);
  const out = repackQ8Rows8(w.bytes, N, K);
  assert.strictEqual(out.length, 2 * 2 * 272); // 2 blocks of 8 rows x 2 groups
  for (let n = 0; n < 16; n++) {
    for (let g = 0; g < 2; g++) {
      const d = ((n >> 3) * 2 + g) * 272, s = (n * 2 + g) * 34;
      const scale = [out[d + 2 * (n & 7)], out[d + 2 * (n & 7) + 1]];
      assert.deepStrictEqual(scale, n < N ? [w.bytes[s], w.bytes[s + 1]] : [0, 0], `n=${n} d`);
      for (let k = 0; k < 32; k++) {
        const at = d + 16 + 64 * (k >> 3) + 8 * (n & 7) + (k & 7);
        assert.strictEqual(out[at], n < N ? w.bytes[s + 2 + k] : 0, `n=${n} g=${g} k=${k}`);
      }
    }
  }
  return Promise.resolve();
});
