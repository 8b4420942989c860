/**
 * Each kernel against two independent oracles in the same test: onnxruntime-web (wasm, f32,
 * graphs built by tests/onnx_oracle.ts) and the float64 reference of src/reference/ops.ts.
 */
import assert from "node:assert";
import { readF32, readU32 } from "../src/gpu/readback.ts";
import type { WeightDType } from "../src/gpu/ops_api.ts";
import * as ref from "../src/reference/ops.ts";
import { assertClose, buffer, gpu, gpuTest, ops, pack, randomF32, run } from "./kernel_harness.ts";
import { f32, i64, runGraph, runNode } from "./onnx_oracle.ts";

/** Both oracles compute in f32 (ORT) or f64 (reference): relative to the largest output. */
const TOL = 2e-6;

/** [rows, cols] row-major to [cols, rows]. */
function transpose(a: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

for (const dtype of ["f32", "bf16"] as WeightDType[]) {
  gpuTest(`matmul() agrees with ORT MatMul and the reference (${dtype} weights)`, async () => {
    const T = 3, K = 136, N = 75;
    const w = pack(randomF32(N * K, 21), dtype); // bf16: ORT gets the bf16-rounded values as f32
    const x = randomF32(T * K, 22);
    const out = buffer(T * N * 4);
    run([
      ops.matmul({
        x: buffer(x),
        w: { buffer: buffer(w.words), dtype, offsetElems: 0 },
        out,
        K,
        N,
        outStride: N,
        outOffset: 0,
        accumulate: false,
      }),
    ], T);
    const got = await readF32(gpu, out, 0, T * N);
    const ort = await runNode(
      "MatMul",
      { x: f32(x, [T, K]), w: f32(transpose(w.values, N, K), [K, N]) },
      { y: "float32" },
    );
    assertClose(got, ort.y as Float32Array, TOL, "vs ORT");
    assertClose(got, ref.matmul(x, w.values, T, K, N), TOL, "vs reference");
  });
}

gpuTest("rmsnorm() agrees with ORT RMSNormalization and the reference", async () => {
  const T = 3, dim = 128, groups = 4, eps = 1e-6;
  const x = randomF32(T * groups * dim, 31, 2);
  const weight = randomF32(dim, 32);
  const out = buffer(x.byteLength);
  run([ops.rmsnorm({ x: buffer(x), weight: buffer(weight), out, dim, groups, eps })], T);
  const got = await readF32(gpu, out, 0, x.length);
  const ort = await runNode(
    "RMSNormalization",
    { x: f32(x, [T * groups, dim]), scale: f32(weight, [dim]) },
    { y: "float32" },
    { epsilon: { f: eps }, axis: { i: -1 } },
  );
  assertClose(got, ort.y as Float32Array, TOL, "vs ORT");
  assertClose(got, ref.rmsnorm(x, weight, T, dim, groups, eps), TOL, "vs reference");
});

gpuTest("rope() agrees with ORT RotaryEmbedding and the reference", async () => {
  const T = 5, heads = 3, headDim = 24, maxPos = 32, pos0 = 11, half = headDim / 2;
  const table = Float32Array.from(ref.ropeTable(maxPos, headDim, 1e6));
  const x = randomF32(T * heads * headDim, 41);
  const xBuf = buffer(x);
  run([ops.rope({ x: xBuf, table: buffer(table), heads, headDim })], T, pos0);
  const got = await readF32(gpu, xBuf, 0, x.length);
  const cos = new Float32Array(maxPos * half), sin = new Float32Array(maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    cos.set(table.subarray(p * headDim, p * headDim + half), p * half);
    sin.set(table.subarray(p * headDim + half, (p + 1) * headDim), p * half);
  }
  const ort = await runNode(
    "RotaryEmbedding",
    {
      x: f32(x, [1, T, heads * headDim]),
      cos: f32(cos, [maxPos, half]),
      sin: f32(sin, [maxPos, half]),
      pos: i64(Array.from({ length: T }, (_, t) => pos0 + t), [1, T]),
    },
    { y: "float32" },
    { num_heads: { i: heads }, interleaved: { i: 0 } },
  );
  assertClose(got, ort.y as Float32Array, TOL, "vs ORT");
  assertClose(got, ref.rope(x, table, T, heads, headDim, pos0), TOL, "vs reference");
});

gpuTest("topk() agrees with ORT Softmax+TopK(+renormalise) and the reference", async () => {
  const T = 7, E = 128, k = 8;
  const logits = randomF32(T * E, 51, 4);
  for (const normTopk of [false, true]) {
    const idx = buffer(T * k * 4), weights = buffer(T * k * 4);
    run([ops.topk({ logits: buffer(logits), idx, weights, numExperts: E, k, normTopk })], T);
    const gotIdx = await readU32(gpu, idx, 0, T * k);
    const gotW = await readF32(gpu, weights, 0, T * k);
    const ort = await runGraph(
      [
        { op: "Softmax", inputs: ["logits"], outputs: ["p"], attrs: { axis: { i: -1 } } },
        { op: "TopK", inputs: ["p", "k"], outputs: ["v", "i"], attrs: { axis: { i: -1 } } },
        { op: "ReduceSum", inputs: ["v", "axes"], outputs: ["sum"], attrs: { keepdims: { i: 1 } } },
        { op: "Div", inputs: ["v", "sum"], outputs: ["vn"] },
      ],
      { logits: f32(logits, [T, E]), k: i64([k], [1]), axes: i64([-1], [1]) },
      { v: "float32", vn: "float32", i: "int64" },
    );
    assert.deepStrictEqual(Array.from(gotIdx), Array.from(ort.i as BigInt64Array, Number));
    assertClose(gotW, (normTopk ? ort.vn : ort.v) as Float32Array, TOL, `vs ORT norm=${normTopk}`);
    const want = ref.topk(logits, T, E, k, normTopk);
    assert.deepStrictEqual(gotIdx, want.idx);
    assertClose(gotW, want.weights, TOL, `vs reference norm=${normTopk}`);
  }
});

gpuTest(
  "attention() agrees with ORT MatMul+Softmax attention and the reference (GQA 4)",
  async () => {
    const T = 3, pos0 = 6, heads = 8, kvHeads = 2, headDim = 24, maxCtx = 12;
    const L = pos0 + T, group = heads / kvHeads, kvWidth = kvHeads * headDim;
    const scale = 1 / Math.sqrt(headDim);
    const q = randomF32(T * heads * headDim, 61);
    const k = randomF32(maxCtx * kvWidth, 62, 3);
    const v = randomF32(maxCtx * kvWidth, 63);
    const out = buffer(q.byteLength);
    run(
      [
        ops.attention({
          q: buffer(q),
          kCache: buffer(k),
          vCache: buffer(v),
          out,
          numHeads: heads,
          numKvHeads: kvHeads,
          headDim,
          scale,
        }),
      ],
      T,
      pos0,
    );
    const got = await readF32(gpu, out, 0, q.length);
    // ORT inputs per query head: q [H, T, Dh]; k, v [H, L, Dh] (kv head h / group); causal mask.
    const qh = new Float32Array(heads * T * headDim);
    const kh = new Float32Array(heads * L * headDim), vh = new Float32Array(heads * L * headDim);
    for (let h = 0; h < heads; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        for (let d = 0; d < headDim; d++) {
          qh[(h * T + t) * headDim + d] = q[(t * heads + h) * headDim + d];
        }
      }
      for (let j = 0; j < L; j++) {
        for (let d = 0; d < headDim; d++) {
          kh[(h * L + j) * headDim + d] = k[j * kvWidth + g * headDim + d];
          vh[(h * L + j) * headDim + d] = v[j * kvWidth + g * headDim + d];
        }
      }
    }
    const mask = Float32Array.from(
      { length: T * L },
      (_, i) => (i % L) <= pos0 + Math.floor(i / L) ? 0 : -1e30,
    );
    const ort = await runGraph(
      [
        { op: "Transpose", inputs: ["k"], outputs: ["kt"], attrs: { perm: { ints: [0, 2, 1] } } },
        { op: "MatMul", inputs: ["q", "kt"], outputs: ["s"] },
        { op: "Mul", inputs: ["s", "scale"], outputs: ["ss"] },
        { op: "Add", inputs: ["ss", "mask"], outputs: ["sm"] },
        { op: "Softmax", inputs: ["sm"], outputs: ["p"], attrs: { axis: { i: -1 } } },
        { op: "MatMul", inputs: ["p", "v"], outputs: ["o"] },
        { op: "Transpose", inputs: ["o"], outputs: ["y"], attrs: { perm: { ints: [1, 0, 2] } } },
      ],
      {
        q: f32(qh, [heads, T, headDim]),
        k: f32(kh, [heads, L, headDim]),
        v: f32(vh, [heads, L, headDim]),
        scale: f32([scale], [1]),
        mask: f32(mask, [T, L]),
      },
      { y: "float32" },
    );
    assertClose(got, ort.y as Float32Array, TOL, "vs ORT");
    assertClose(
      got,
      ref.attention(q, k, v, T, pos0, heads, kvHeads, headDim, scale),
      TOL,
      "vs ref",
    );
  },
);

gpuTest(
  "expertsGateUp()/expertsDown() agree with an ORT SwiGLU graph and the reference",
  async () => {
    const T = 3, k = 2, D = 48, I = 32, E = 4;
    const slotElems = 3 * I * D;
    // Pool of E slots, expert e in slot e: gate [I, D] | up [I, D] | down [D, I].
    const pool = pack(randomF32(E * slotElems, 71), "bf16");
    const x = randomF32(T * D, 72);
    const idxArr = new Uint32Array([2, 0, 1, 3, 3, 2]); // [T, k]
    const h = buffer(T * k * I * 4), y = buffer(T * k * D * 4);
    const common = {
      idx: buffer(idxArr),
      slots: buffer(new Uint32Array([0, 1, 2, 3])),
      slotBase: 0,
      group: { pools: [buffer(pool.words)], firstSlot: 0, slots: E, slotsPerPool: E },
      poolDtype: "bf16" as const,
      slotElems,
      k,
      hidden: D,
      inter: I,
    };
    run([
      ops.expertsGateUp({ ...common, partOffset: 0, x: buffer(x), missed: buffer(E * 4), h }),
      ops.expertsDown({ ...common, partOffset: 2 * I * D, h, y }),
    ], T);
    const gotH = await readF32(gpu, h, 0, T * k * I);
    const gotY = await readF32(gpu, y, 0, T * k * D);
    for (let pair = 0; pair < T * k; pair++) {
      const t = Math.floor(pair / k), at = idxArr[pair] * slotElems;
      const gate = pool.values.subarray(at, at + I * D);
      const up = pool.values.subarray(at + I * D, at + 2 * I * D);
      const down = pool.values.subarray(at + 2 * I * D, at + 3 * I * D);
      const xt = x.subarray(t * D, (t + 1) * D);
      const ort = await runGraph(
        [
          { op: "MatMul", inputs: ["x", "gate"], outputs: ["g"] },
          { op: "MatMul", inputs: ["x", "up"], outputs: ["u"] },
          { op: "Sigmoid", inputs: ["g"], outputs: ["sg"] },
          { op: "Mul", inputs: ["g", "sg"], outputs: ["silu"] },
          { op: "Mul", inputs: ["silu", "u"], outputs: ["h"] },
          { op: "MatMul", inputs: ["h", "down"], outputs: ["y"] },
        ],
        {
          x: f32(xt, [1, D]),
          gate: f32(transpose(gate, I, D), [D, I]),
          up: f32(transpose(up, I, D), [D, I]),
          down: f32(transpose(down, D, I), [I, D]),
        },
        { h: "float32", y: "float32" },
      );
      const hRow = gotH.subarray(pair * I, (pair + 1) * I);
      const yRow = gotY.subarray(pair * D, (pair + 1) * D);
      assertClose(hRow, ort.h as Float32Array, TOL, `h vs ORT pair=${pair}`);
      assertClose(yRow, ort.y as Float32Array, TOL, `y vs ORT pair=${pair}`);
      const wantH = ref.expertGateUp(xt, gate, up, D, I);
      assertClose(hRow, wantH, TOL, `h vs reference pair=${pair}`);
      assertClose(yRow, ref.expertDown(wantH, down, D, I), TOL, `y vs reference pair=${pair}`);
    }
  },
);
