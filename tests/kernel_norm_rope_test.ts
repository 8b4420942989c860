import assert from "node:assert";
import { readF32 } from "../src/gpu/readback.ts";
import { Ops } from "../src/gpu/ops.ts";
import * as ref from "../src/reference/ops.ts";
import { assertClose, buffer, gpu, gpuTest, ops, randomF32, run } from "./kernel_harness.ts";

/** f32 math against float64: a few ulps relative to the largest output. */
const TOL = 1e-6;
const EPS = 1e-6;

/** The baseline's norm kernels (a workgroup per row), for the bit-identity checks. */
const rowOps = new Ops(gpu, { laneNorms: false });

gpuTest(
  "rmsnorm() a lane per row (steps of 8 rows or more) equals a workgroup per row, bit for bit",
  async () => {
    for (const [dim, groups] of [[24, 5], [128, 4], [200, 1], [2048, 1]]) {
      for (const T of [1, 3, 7, 9]) {
        const x = randomF32(T * groups * dim, dim + T + 1, 3);
        const wBuf = buffer(randomF32(dim, 9 + dim));
        const [a, b] = await Promise.all([ops, rowOps].map(async (o) => {
          const out = buffer(x.byteLength);
          run(
            [o.rmsnorm({ x: buffer(x), weight: wBuf, out, dim, groups, eps: EPS })],
            T,
            0,
            o.step,
          );
          return await readF32(gpu, out, 0, x.length);
        }));
        assert.deepStrictEqual(a, b, `dim=${dim} groups=${groups} T=${T}`);
      }
    }
  },
);

gpuTest("rmsnorm() matches the float64 reference out of place and in place", async () => {
  for (const [dim, groups] of [[24, 5], [128, 4], [200, 1]]) {
    for (const T of [1, 3, 7]) {
      const x = randomF32(T * groups * dim, dim + T, 3);
      const weight = randomF32(dim, 7 + dim);
      const want = ref.rmsnorm(x, weight, T, dim, groups, EPS);
      const wBuf = buffer(weight);
      const out = buffer(x.byteLength);
      const inPlace = buffer(x);
      run([
        ops.rmsnorm({ x: buffer(x), weight: wBuf, out, dim, groups, eps: EPS }),
        ops.rmsnorm({ x: inPlace, weight: wBuf, out: inPlace, dim, groups, eps: EPS }),
      ], T);
      const n = x.length;
      assertClose(await readF32(gpu, out, 0, n), want, TOL, `dim=${dim} T=${T}`);
      assertClose(await readF32(gpu, inPlace, 0, n), want, TOL, `in place dim=${dim} T=${T}`);
    }
  }
});

gpuTest("rope() rotates halves like the float64 reference at pos0 > 0", async () => {
  for (const [heads, headDim] of [[3, 24], [4, 128]]) {
    const maxPos = 40, pos0 = 9;
    const table = ref.ropeTable(maxPos, headDim, 1e6);
    const tBuf = buffer(Float32Array.from(table));
    for (const T of [1, 3, 7]) {
      const x = randomF32(T * heads * headDim, T * 31 + headDim);
      const xBuf = buffer(x);
      run([ops.rope({ x: xBuf, table: tBuf, heads, headDim })], T, pos0);
      const got = await readF32(gpu, xBuf, 0, x.length);
      const want = ref.rope(x, Float32Array.from(table), T, heads, headDim, pos0);
      assertClose(got, want, TOL, `heads=${heads} Dh=${headDim} T=${T}`);
    }
  }
});

gpuTest("kvStore() writes rows pos0..pos0+T-1 of both caches and nothing else", async () => {
  const width = 40, maxCtx = 12, pos0 = 5, T = 3;
  const initialK = randomF32(maxCtx * width, 1), initialV = randomF32(maxCtx * width, 3);
  const k = randomF32(T * width, 2), v = randomF32(T * width, 4);
  const kCache = buffer(initialK), vCache = buffer(initialV);
  run([ops.kvStore({ k: buffer(k), v: buffer(v), kCache, vCache, width })], T, pos0);
  const wantK = Float32Array.from(initialK), wantV = Float32Array.from(initialV);
  wantK.set(k, pos0 * width);
  wantV.set(v, pos0 * width);
  assert.deepStrictEqual(await readF32(gpu, kCache, 0, initialK.length), wantK);
  assert.deepStrictEqual(await readF32(gpu, vCache, 0, initialV.length), wantV);
});

gpuTest("kvStore() covers a dispatch of more than 65535 workgroups (2-D dispatch)", async () => {
  const width = 65536 * 64 + 100; // 65537 workgroups of 64 for one token
  const k = Float32Array.from({ length: width }, (_, i) => i % 1000);
  const v = Float32Array.from({ length: width }, (_, i) => i % 777);
  const kCache = buffer(2 * width * 4), vCache = buffer(2 * width * 4);
  run([ops.kvStore({ k: buffer(k), v: buffer(v), kCache, vCache, width })], 1, 1);
  assert.deepStrictEqual(await readF32(gpu, kCache, width * 4, width), k);
  assert.deepStrictEqual(await readF32(gpu, vCache, width * 4, width), v);
});

gpuTest(
  "headNormRope() equals rmsnorm then rope on q and k, bit for bit, in both kernels (a lane or " +
    "a workgroup per row), and the reference",
  async () => {
    for (
      const [Hq, Hkv, Dh, T] of [[4, 2, 16, 3], [8, 2, 128, 3], [2, 1, 256, 3], [32, 4, 128, 5]]
    ) {
      const pos0 = 2, maxPos = 8, eps = 1e-6;
      const q = randomF32(T * Hq * Dh, 11 + Dh), k = randomF32(T * Hkv * Dh, 12 + Dh);
      const qNorm = randomF32(Dh, 13), kNorm = randomF32(Dh, 14);
      const table = ref.ropeTable(maxPos, Dh, 1e6);
      const tBuf = buffer(Float32Array.from(table)), qnBuf = buffer(qNorm), knBuf = buffer(kNorm);
      const q1 = buffer(q), k1 = buffer(k);
      run(
        [
          ops.rmsnorm({ x: q1, weight: qnBuf, out: q1, dim: Dh, groups: Hq, eps }),
          ops.rmsnorm({ x: k1, weight: knBuf, out: k1, dim: Dh, groups: Hkv, eps }),
          ops.rope({ x: q1, table: tBuf, heads: Hq, headDim: Dh }),
          ops.rope({ x: k1, table: tBuf, heads: Hkv, headDim: Dh }),
        ],
        T,
        pos0,
      );
      const wantQ = await readF32(gpu, q1, 0, q.length),
        wantK = await readF32(gpu, k1, 0, k.length);
      for (const [name, o] of [["lanes", ops], ["workgroups", rowOps]] as const) {
        const q2 = buffer(q), k2 = buffer(k);
        const args = { q: q2, k: k2, qNorm: qnBuf, kNorm: knBuf, table: tBuf };
        const sizes = { numHeads: Hq, numKvHeads: Hkv, headDim: Dh, eps };
        run([o.headNormRope({ ...args, ...sizes })], T, pos0, o.step);
        const gotQ = await readF32(gpu, q2, 0, q.length);
        const gotK = await readF32(gpu, k2, 0, k.length);
        assert.deepStrictEqual(gotQ, wantQ, `${name}: q, ${Hq}x${Dh}`);
        assert.deepStrictEqual(gotK, wantK, `${name}: k, ${Hkv}x${Dh}`);
        const refQ = ref.rope(ref.rmsnorm(q, qNorm, T, Dh, Hq, eps), table, T, Hq, Dh, pos0);
        assertClose(gotQ, refQ, TOL, `${name}: q vs reference, ${Hq}x${Dh}`);
      }
    }
  },
);
