import assert from "node:assert";
import { readF32 } from "../src/gpu/readback.ts";
import * as ref from "../src/reference/ops.ts";
import { assertClose, buffer, gpu, gpuTest, ops, randomF32, run } from "./kernel_harness.ts";

/** f32 math against float64: a few ulps relative to the largest output. */
const TOL = 1e-6;
const EPS = 1e-6;

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

gpuTest("kvStore() writes rows pos0..pos0+T-1 of the cache and nothing else", async () => {
  const width = 40, maxCtx = 12, pos0 = 5, T = 3;
  const initial = randomF32(maxCtx * width, 1);
  const x = randomF32(T * width, 2);
  const cache = buffer(initial);
  run([ops.kvStore({ x: buffer(x), cache, width })], T, pos0);
  const got = await readF32(gpu, cache, 0, initial.length);
  const want = Float32Array.from(initial);
  want.set(x, pos0 * width);
  assert.deepStrictEqual(got, want);
});

gpuTest("kvStore() covers a dispatch of more than 65535 workgroups (2-D dispatch)", async () => {
  const width = 65536 * 64 + 100; // 65537 workgroups of 64 for one token
  const x = Float32Array.from({ length: width }, (_, i) => i % 1000);
  const cache = buffer(2 * width * 4);
  run([ops.kvStore({ x: buffer(x), cache, width })], 1, 1);
  const got = await readF32(gpu, cache, width * 4, width);
  assert.deepStrictEqual(got, x);
});
