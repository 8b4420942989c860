/**
 * Shared fixtures of the kernel tests: one device, a seeded PRNG, buffers from typed arrays,
 * weight packing by dtype, running prepared ops for one step, and a closeness check.
 */
import assert from "node:assert";
import { openGpu } from "../src/gpu/device.ts";
import { Ops } from "../src/gpu/ops.ts";
import { type Op, stepRecord, type WeightDType } from "../src/gpu/ops_api.ts";
import { f16ToF32, f32ToBf16, f32ToF16 } from "../src/dtype.ts";
import { bf16ToF32 } from "../src/dtype.ts";
import { readU32 } from "../src/gpu/readback.ts";
import * as ref from "../src/reference/ops.ts";

export const gpu = await openGpu();
export const ops = new Ops(gpu);
export { SHARED_SIZES } from "./_sizes.ts";

/** A GPU test: WebGPU keeps handles open across tests, so resource sanitizers are off. */
export function gpuTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeResources: false, sanitizeOps: false });
}

/** Deterministic uniform numbers in [-1, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (((z ^ (z >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  };
}

/** n seeded values in [-scale, scale), as f32. */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed);
  return Float32Array.from({ length: n }, () => next() * scale);
}

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** A storage buffer holding `data` (or `data` zero bytes, rounded up to 16). */
export function buffer(
  data: ArrayBufferView | number,
  label = "test",
): GPUBuffer {
  const bytes = typeof data === "number" ? data : data.byteLength;
  const size = Math.max(16, Math.ceil(bytes / 16) * 16);
  const b = gpu.device.createBuffer({ label, size, usage: USAGE });
  if (typeof data !== "number") {
    gpu.device.queue.writeBuffer(
      b,
      0,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.byteLength,
    );
  }
  return b;
}

/** Weights in their packed GPU form (u32 words) and the exact values the GPU will see. */
export interface Packed {
  words: Uint32Array;
  values: Float64Array;
}

/** Packs values as dtype: f32 one per u32; bf16/f16 two per u32, element 2i in the low half. */
export function pack(values: ArrayLike<number>, dtype: WeightDType): Packed {
  const n = values.length;
  if (dtype === "f32") {
    const f = Float32Array.from(values);
    return { words: new Uint32Array(f.buffer), values: Float64Array.from(f) };
  }
  const halves = new Uint16Array(n + (n % 2));
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    halves[i] = dtype === "bf16" ? f32ToBf16(values[i]) : f32ToF16(values[i]);
    out[i] = dtype === "bf16" ? bf16ToF32(halves[i]) : f16ToF32(halves[i]);
  }
  return { words: new Uint32Array(halves.buffer), values: out };
}

/** Writes the Step uniform (of `step`, by default the shared Ops'), records `list` in one pass for
 * nTokens and submits: one sequence's tokens at pos0 + t, or `tokens` ([slab, position] each:
 * several sequences). */
export function run(
  list: Op[],
  nTokens: number,
  pos0 = 0,
  step = ops.step,
  tokens?: [number, number][],
): void {
  gpu.device.queue.writeBuffer(step, 0, stepRecord(nTokens, pos0, 0, tokens));
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  for (const op of list) op.record(pass, nTokens);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
}

/** Largest |actual - expected| divided by the largest |expected| (1 when expected is all 0). */
export function relError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.strictEqual(actual.length, expected.length, "length");
  let err = 0, scale = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  if (Number.isNaN(err)) return Infinity;
  return err / (scale || 1);
}

/** Asserts relError(actual, expected) <= tol. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
): void {
  const e = relError(actual, expected);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

/** The gate/up/down matrices of one expert slot. */
export interface ExpertMatrices {
  gate: ArrayLike<number>;
  up: ArrayLike<number>;
  down: ArrayLike<number>;
}

/**
 * Checks both expert stages' outputs for every (token, expert) pair of layer 1 (keys E + e):
 * h against the reference gate/up on the token's x, y against the reference down on the GPU's own
 * h (so each stage is checked on its own), pairs of absent experts left `untouched` and flagged in
 * `missed` ([2 * E], read back here).
 */
export async function checkExpertPairs(a: {
  idx: Uint32Array;
  x: Float32Array;
  gotH: Float32Array;
  gotY: Float32Array;
  missed: GPUBuffer;
  /** Expert e of layer 1 -> its slot, or `absent`. */
  slotOf: readonly number[];
  absent: number;
  expert: (slot: number) => ExpertMatrices;
  D: number;
  I: number;
  K: number;
  E: number;
  tol: number;
  untouched: number;
  what: string;
}): Promise<void> {
  const { D, I, K, E, gotH, gotY, what } = a;
  const wantMissed = new Uint32Array(2 * E);
  for (let pair = 0; pair < a.idx.length; pair++) {
    const e = a.idx[pair], slot = a.slotOf[e];
    const hRow = gotH.subarray(pair * I, (pair + 1) * I);
    const yRow = gotY.subarray(pair * D, (pair + 1) * D);
    if (slot === a.absent) {
      wantMissed[E + e] = 1;
      assert.ok(hRow.every((v) => v === a.untouched), `h of absent pair ${pair} written`);
      assert.ok(yRow.every((v) => v === a.untouched), `y of absent pair ${pair} written`);
      continue;
    }
    const w = a.expert(slot);
    const t = Math.floor(pair / K);
    const wantH = ref.expertGateUp(a.x.subarray(t * D, (t + 1) * D), w.gate, w.up, D, I);
    assertClose(hRow, wantH, a.tol, `${what} h pair=${pair}`);
    assertClose(yRow, ref.expertDown(hRow, w.down, D, I), a.tol, `${what} y pair=${pair}`);
  }
  assert.deepStrictEqual(await readU32(gpu, a.missed, 0, 2 * E), wantMissed, `${what} missed`);
}
