import assert from "node:assert";
import { readF32 } from "../src/gpu/readback.ts";
import type { WeightDType } from "../src/gpu/ops_api.ts";
import * as ref from "../src/reference/ops.ts";
import { assertClose, buffer, gpu, gpuTest, ops, pack, randomF32, run } from "./kernel_harness.ts";

/** f32 accumulation over K <= 2048 stays well inside this, relative to the largest output. */
const TOL = 1e-5;
const DTYPES: WeightDType[] = ["f32", "bf16", "f16"];

for (const dtype of DTYPES) {
  gpuTest(
    `matmul() matches the float64 reference for ${dtype} weights, T in 1,3,7,64`,
    async () => {
      const K = 136, N = 75; // N not a multiple of the workgroup size (64)
      const offsetElems = 8; // W starts inside its buffer
      const w = pack(randomF32(offsetElems + N * K, 11), dtype);
      const wBuf = buffer(w.words);
      for (const T of [1, 3, 7, 64]) {
        const x = randomF32(T * K, 100 + T);
        const out = buffer(T * N * 4);
        const op = ops.matmul({
          x: buffer(x),
          w: { buffer: wBuf, dtype, offsetElems },
          out,
          K,
          N,
          outStride: N,
          outOffset: 0,
          accumulate: false,
        });
        run([op], T);
        const got = await readF32(gpu, out, 0, T * N);
        const want = ref.matmul(x, w.values.subarray(offsetElems), T, K, N);
        assertClose(got, want, TOL, `T=${T}`);
      }
    },
  );
}

gpuTest("matmul() honours outOffset, outStride and accumulate (bf16, T=5)", async () => {
  const K = 64, N = 10, T = 5, stride = 32, offset = 7;
  const w = pack(randomF32(N * K, 3), "bf16");
  const x = randomF32(T * K, 4);
  const initial = randomF32(T * stride, 5);
  const out = buffer(initial);
  const op = ops.matmul({
    x: buffer(x),
    w: { buffer: buffer(w.words), dtype: "bf16", offsetElems: 0 },
    out,
    K,
    N,
    outStride: stride,
    outOffset: offset,
    accumulate: true,
  });
  run([op], T);
  const got = await readF32(gpu, out, 0, T * stride);
  const prod = ref.matmul(x, w.values, T, K, N);
  const want = Float64Array.from(initial);
  for (let t = 0; t < T; t++) {
    for (let n = 0; n < N; n++) want[t * stride + offset + n] += prod[t * N + n];
  }
  assertClose(got, want, TOL, "accumulate");
  // Elements outside [offset, offset + N) of each row are untouched, bit for bit.
  for (let t = 0; t < T; t++) {
    for (const i of [0, offset - 1, offset + N, stride - 1]) {
      assert.strictEqual(got[t * stride + i], initial[t * stride + i], `t=${t} i=${i}`);
    }
  }
});
