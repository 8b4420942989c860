import assert from "node:assert";
import { matmulTokens, OpConfigError, Ops } from "../src/gpu/ops.ts";
import { readF32 } from "../src/gpu/readback.ts";
import { WEIGHT_TEXTURE_WIDTH, type WeightDType, type WeightRef } from "../src/gpu/ops_api.ts";
import * as ref from "../src/reference/ops.ts";
import { repackRows8, uploadWeightTexture } from "../src/gpu/resident.ts";
import {
  assertClose,
  buffer,
  gpu,
  gpuTest,
  ops,
  pack,
  randomF32,
  run,
  SHARED_SIZES,
} from "./kernel_harness.ts";

/** f32 accumulation (K <= 4096 measured <= 6.4e-7), relative to the largest output. */
const TOL = 2e-6;
const DTYPES: WeightDType[] = ["f32", "bf16", "f16"];
/** [K, offsetElems, T]: K % 8 = 0 or 4 (tail columns); offset 8 takes the vector weight loader
 * (16-byte rows) where K allows, offset 6 the scalar one; T = 1 decode, 2-31 tiles of 8 tokens,
 * 32+ tiles of 16 (40, 33: a partial last tile) in matmul.wgsl. */
const CASES: [number, number, number][] = [
  [136, 8, 1],
  [136, 8, 3],
  [136, 8, 7],
  [136, 8, 64],
  [140, 8, 40],
  [140, 8, 1],
  [140, 8, 9],
  [136, 6, 1],
  [140, 6, 7],
  [136, 6, 33],
  // K a multiple of 32 (matmul_tiled.wgsl past 8 tokens): one tile of tokens, two (the second
  // partial), the scalar loader
  [128, 8, 9],
  [160, 8, 70],
  [96, 6, 33],
];
/** Neither a multiple of the workgroup size (64) nor of the rows per invocation (4). */
const ROWS = 75;
/** The kernels steps can take: matmul.wgsl (8 rows a lane, its tiles of tokens in a lane:
 * llvmpipe's default), and matvec.wgsl (T <= 8: a workgroup per 8 rows) with matmul_tiled.wgsl
 * (longer steps, K a multiple of 32: 64 x 64 tiles staged in workgroup memory; other adapters'
 * default). */
const KERNELS: [string, Ops][] = [
  ["matmul.wgsl", new Ops(gpu, { coalescedMatvec: false, workgroupTiles: false })],
  [
    "matvec.wgsl, matmul_tiled.wgsl",
    new Ops(gpu, {
      coalescedMatvec: true,
      workgroupTiles: true,
      sharedSizes: SHARED_SIZES,
    }),
  ],
];

/** The same matmul (x [T, K] against ROWS rows, no split) over each of `weights`, recorded in one
 * pass: their outputs. */
async function matmulEach(
  o: Ops,
  x: GPUBuffer,
  weights: WeightRef[],
  K: number,
  T: number,
): Promise<Float32Array[]> {
  const outs = weights.map(() => buffer(T * ROWS * 4));
  const common = { x, K, N: ROWS, outStride: ROWS, outOffset: 0, accumulate: false };
  run(weights.map((w, i) => o.matmul({ ...common, w, out: outs[i] })), T, 0, o.step);
  return await Promise.all(outs.map((out) => readF32(gpu, out, 0, T * ROWS)));
}

for (const [kernel, o] of KERNELS) {
  for (const dtype of DTYPES) {
    gpuTest(
      `matmul() (${kernel}) matches the float64 reference for ${dtype} weights, any K/offset/T`,
      async () => {
        for (const [K, offsetElems, T] of CASES) {
          const w = pack(randomF32(offsetElems + ROWS * K, 11), dtype);
          const x = randomF32(T * K, 100 + T);
          const out = buffer(T * ROWS * 4);
          const op = o.matmul({
            x: buffer(x),
            w: { buffer: buffer(w.words), dtype, offsetElems },
            out,
            K,
            N: ROWS,
            outStride: ROWS,
            outOffset: 0,
            accumulate: false,
          });
          run([op], T, 0, o.step);
          const got = await readF32(gpu, out, 0, T * ROWS);
          const want = ref.matmul(x, w.values.subarray(offsetElems), T, K, ROWS);
          assertClose(got, want, TOL, `${kernel} K=${K} offset=${offsetElems} T=${T}`);
        }
      },
    );
  }
}

for (const [kernel, o] of KERNELS) {
  for (const dtype of DTYPES) {
    gpuTest(
      `matmul() (${kernel}) over rows8 weights (${dtype}) gives exactly what it gives over the same rows`,
      async () => {
        const bytes = dtype === "f32" ? 4 : 2;
        // N = 75: the last block of 8 rows is padded; T: decode, 8-token and 16-token tiles
        for (const [K, T] of [[136, 1], [64, 9], [136, 40], [8, 3], [128, 70]]) {
          const w = pack(randomF32(ROWS * K, 21 + K), dtype);
          const rows8 = repackRows8(new Uint8Array(w.words.buffer), ROWS, K, bytes);
          assert.strictEqual(rows8.byteLength, Math.ceil(ROWS / 8) * 8 * K * bytes);
          const xs = randomF32(T * K, 200 + T);
          const [rows, blocked] = await matmulEach(
            o,
            buffer(xs),
            [
              { buffer: buffer(w.words), dtype, offsetElems: 0 },
              { buffer: buffer(rows8), dtype, offsetElems: 0, layout: "rows8" },
            ],
            K,
            T,
          );
          assert.deepStrictEqual(blocked, rows, `${kernel} K=${K} T=${T}`);
          assertClose(blocked, ref.matmul(xs, w.values, T, K, ROWS), TOL, `K=${K} T=${T}`);
        }
      },
    );
  }
}

for (const [kernel, o] of KERNELS) {
  for (const dtype of ["bf16", "f16"] as const) {
    gpuTest(
      `matmul() (${kernel}) over rows8 ${dtype} in a texture gives exactly what it gives over a buffer`,
      async () => {
        // K = 2048: 20,480 words, three texture rows (the last partial); T: decode, both tiles
        for (const [K, T] of [[136, 1], [2048, 1], [2048, 9], [136, 40], [2048, 70]]) {
          const w = pack(randomF32(ROWS * K, 41 + K), dtype);
          const rows8 = repackRows8(new Uint8Array(w.words.buffer), ROWS, K, 2);
          const texture = uploadWeightTexture(gpu.device, rows8, "w")!;
          assert.strictEqual(texture.width, WEIGHT_TEXTURE_WIDTH);
          assert.strictEqual(
            texture.height,
            Math.ceil(rows8.byteLength / 16 / WEIGHT_TEXTURE_WIDTH),
          );
          const xs = randomF32(T * K, 400 + T);
          const [fromBuffer, fromTexture] = await matmulEach(
            o,
            buffer(xs),
            [
              { buffer: buffer(rows8), dtype, offsetElems: 0, layout: "rows8" },
              { texture, dtype, offsetElems: 0, layout: "rows8" },
            ],
            K,
            T,
          );
          assert.deepStrictEqual(fromTexture, fromBuffer, `${kernel} K=${K} T=${T}`);
          assertClose(fromTexture, ref.matmul(xs, w.values, T, K, ROWS), TOL, `K=${K} T=${T}`);
          texture.destroy();
        }
      },
    );
  }
}

gpuTest("matmul() refuses a texture that ends before the matrix", () => {
  const K = 2048;
  const texture = uploadWeightTexture(gpu.device, new Uint8Array(16 * WEIGHT_TEXTURE_WIDTH), "w")!;
  assert.throws(
    () =>
      ops.matmul({
        x: buffer(randomF32(K, 1)),
        w: { texture, dtype: "bf16", offsetElems: 0, layout: "rows8" },
        out: buffer(ROWS * 4),
        K,
        N: ROWS,
        outStride: ROWS,
        outOffset: 0,
        accumulate: false,
      }),
    (e) => e instanceof OpConfigError && /past the texture/.test(e.message),
  );
  texture.destroy();
  return Promise.resolve();
});

/** matmul.wgsl's rows8 chunks through the dtype's own chunk loader (weights_w16_block8.wgsl,
 * weights_f32_block8.wgsl: the default) and through the generic one (chunkLoaders: false, the
 * baseline). */
const CHUNK_LOADERS: [string, Ops][] = [true, false].map((chunkLoaders) => [
  chunkLoaders ? "own chunk loader" : "generic chunk loader",
  new Ops(gpu, { coalescedMatvec: false, workgroupTiles: false, chunkLoaders }),
]);
for (const dtype of DTYPES) {
  gpuTest(
    `matmul() over rows8 ${dtype}: the dtype's chunk loader equals the generic one`,
    async () => {
      const bytes = dtype === "f32" ? 4 : 2;
      for (const [K, T] of [[136, 1], [64, 9], [128, 40]]) {
        const w = pack(randomF32(ROWS * K, 31 + K), dtype);
        const rows8 = repackRows8(new Uint8Array(w.words.buffer), ROWS, K, bytes);
        const xs = randomF32(T * K, 300 + T);
        const x = buffer(xs);
        const wr = { buffer: buffer(rows8), dtype, offsetElems: 0, layout: "rows8" as const };
        const got: Float32Array[] = [];
        for (const [name, o] of CHUNK_LOADERS) {
          const out = buffer(T * ROWS * 4);
          const mm = o.matmul({
            x,
            w: wr,
            out,
            K,
            N: ROWS,
            outStride: ROWS,
            outOffset: 0,
            accumulate: false,
          });
          run([mm], T, 0, o.step);
          got.push(await readF32(gpu, out, 0, T * ROWS));
          assertClose(
            got[got.length - 1],
            ref.matmul(xs, w.values, T, K, ROWS),
            TOL,
            `${name} K=${K}`,
          );
        }
        assert.deepStrictEqual(got[0], got[1], `${dtype} K=${K} T=${T}`);
      }
    },
  );
}

gpuTest(
  "matmul() with each pipeline's arrays sized to its tokens equals the declared maxima, bit for bit",
  async () => {
    const declared = new Ops(gpu, { exactArrays: false });
    const K = 136;
    for (const layout of ["rows", "rows8"] as const) {
      const w = pack(randomF32(ROWS * K, 31), "bf16");
      const words = layout === "rows8"
        ? repackRows8(new Uint8Array(w.words.buffer), ROWS, K, 2)
        : w.words;
      const wBuf = buffer(words);
      // decode, 8-token and 16-token pipelines
      for (const T of [1, 9, 40]) {
        const x = buffer(randomF32(T * K, 300 + T));
        const outs = [ops, declared].map((o) => {
          const out = buffer(T * ROWS * 4);
          run(
            [o.matmul({
              x,
              w: { buffer: wBuf, dtype: "bf16", offsetElems: 0, layout },
              out,
              K,
              N: ROWS,
              outStride: ROWS,
              outOffset: 0,
              accumulate: false,
            })],
            T,
            0,
            o.step,
          );
          return out;
        });
        const [a, b] = await Promise.all(outs.map((o) => readF32(gpu, o, 0, T * ROWS)));
        assert.deepStrictEqual(a, b, `${layout} T=${T}`);
      }
    }
  },
);

Deno.test(
  "matmulTokens() takes the tile that pads fewer tokens (16 when it pads under 8), keeping 8 " +
    "workgroups below 32 tokens",
  () => {
    const steps = [1, 2, 8, 9, 16, 17, 24, 25, 32, 33, 40, 41, 128];
    const tiles = (rowSets: number, padded: boolean) =>
      steps.map((t) => matmulTokens(t, rowSets, true, padded));
    assert.deepStrictEqual(tiles(512, true), [1, 8, 8, 16, 16, 8, 8, 16, 16, 8, 8, 16, 16]);
    // 32 row sets: one 16-token tile is 2 workgroups, too few below 32 tokens
    assert.deepStrictEqual(tiles(32, true), [1, 8, 8, 8, 8, 8, 8, 8, 16, 8, 8, 16, 16]);
    // the baseline: 16-token tiles from 32 tokens a step; without wide tiles, 8 from 2 tokens
    assert.deepStrictEqual(tiles(512, false), [1, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16]);
    assert.deepStrictEqual([1, 9, 128].map((t) => matmulTokens(t, 512, false, true)), [1, 8, 8]);
  },
);

gpuTest(
  "repackRows8() puts row n, column k at ((n / 8) * K + k - k % 8) * 8 + (n % 8) * 8 + k % 8",
  () => {
    const N = 11, K = 16;
    const src = new Uint8Array(N * K).map((_, i) => i % 251);
    const out = repackRows8(src, N, K, 1);
    assert.strictEqual(out.length, 16 * K);
    for (let n = 0; n < 16; n++) {
      for (let k = 0; k < K; k++) {
        const at = (Math.floor(n / 8) * K + k - (k % 8)) * 8 + (n % 8) * 8 + (k % 8);
        assert.strictEqual(out[at], n < N ? src[n * K + k] : 0, `n=${n} k=${k}`);
      }
    }
    // a source that does not start on a 4-byte boundary (a checkpoint view) gives the same
    const shifted = new Uint8Array(src.length + 2);
    shifted.set(src, 2);
    assert.deepStrictEqual(repackRows8(shifted.subarray(2), N, K, 1), out);
    return Promise.resolve();
  },
);

for (const [kernel, o] of KERNELS) {
  gpuTest(
    `matmul() (${kernel}) honours outOffset, outStride and accumulate (bf16, T=5 and 40)`,
    async () => {
      for (const T of [5, 40]) {
        const K = 64, N = 10, stride = 32, offset = 7;
        const w = pack(randomF32(N * K, 3), "bf16");
        const x = randomF32(T * K, 4);
        const initial = randomF32(T * stride, 5);
        const out = buffer(initial);
        const op = o.matmul({
          x: buffer(x),
          w: { buffer: buffer(w.words), dtype: "bf16", offsetElems: 0 },
          out,
          K,
          N,
          outStride: stride,
          outOffset: offset,
          accumulate: true,
        });
        run([op], T, 0, o.step);
        const got = await readF32(gpu, out, 0, T * stride);
        const prod = ref.matmul(x, w.values, T, K, N);
        const want = Float64Array.from(initial);
        for (let t = 0; t < T; t++) {
          for (let n = 0; n < N; n++) want[t * stride + offset + n] += prod[t * N + n];
        }
        assertClose(got, want, TOL, `accumulate T=${T}`);
        // Elements outside [offset, offset + N) of each row are untouched, bit for bit.
        for (let t = 0; t < T; t++) {
          for (const i of [0, offset - 1, offset + N, stride - 1]) {
            assert.strictEqual(got[t * stride + i], initial[t * stride + i], `t=${t} i=${i}`);
          }
        }
      }
    },
  );
}

gpuTest("matmul() reads a matrix deep inside a larger buffer (bound by range)", async () => {
  const K = 64, N = 9, T = 2;
  for (const dtype of ["bf16", "f32"] as WeightDType[]) {
    for (const offsetElems of [1006, 520]) {
      const all = pack(randomF32(offsetElems + N * K + 300, offsetElems), dtype);
      const x = randomF32(T * K, 8);
      const out = buffer(T * N * 4);
      run([
        ops.matmul({
          x: buffer(x),
          w: { buffer: buffer(all.words), dtype, offsetElems },
          out,
          K,
          N,
          outStride: N,
          outOffset: 0,
          accumulate: false,
        }),
      ], T);
      const want = ref.matmul(x, all.values.subarray(offsetElems), T, K, N);
      assertClose(await readF32(gpu, out, 0, T * N), want, TOL, `${dtype} offset=${offsetElems}`);
    }
  }
});

gpuTest("matmul() rejects a matrix that runs past its buffer with OpConfigError", () => {
  const w = buffer(64 * 4);
  assert.throws(
    () =>
      ops.matmul({
        x: buffer(64 * 4),
        w: { buffer: w, dtype: "f32", offsetElems: 8 },
        out: buffer(16),
        K: 64,
        N: 1,
        outStride: 1,
        outOffset: 0,
        accumulate: false,
      }),
    OpConfigError,
  );
  return Promise.resolve();
});

for (const [kernel, o] of KERNELS) {
  gpuTest(
    `matmul() (${kernel}) with a split writes rows [0,k) to out, [k,v) to kOut and [v,N) to vOut, bit for bit as three matmuls`,
    async () => {
      // 75 stacked rows, cut at 37 and 59 (inside 8-row blocks), row-major and rows8, T = 1, 7, 40
      const K = 160, N = ROWS, cut = [37, 59];
      const widths = [cut[0], cut[1] - cut[0], N - cut[1]];
      for (const layout of ["rows", "rows8"] as const) {
        const w = pack(randomF32(N * K, 21), "bf16");
        const words = layout === "rows8"
          ? repackRows8(new Uint8Array(w.words.buffer), N, K, 2)
          : new Uint8Array(w.words.buffer);
        const weights = { buffer: buffer(new Uint32Array(words.buffer)), dtype: "bf16" as const };
        for (const T of [1, 7, 40]) {
          const x = buffer(randomF32(T * K, 200 + T));
          const outs = widths.map((n) => buffer(T * n * 4));
          run(
            [o.matmul({
              x,
              w: { ...weights, offsetElems: 0, layout },
              out: outs[0],
              K,
              N,
              outStride: cut[0],
              outOffset: 0,
              accumulate: false,
              split: { k: cut[0], v: cut[1], kOut: outs[1], vOut: outs[2] },
            })],
            T,
            0,
            o.step,
          );
          // each part alone: the same rows as their own matrix (row-major, from the same words)
          const rowMajor = new Uint32Array(w.words.buffer);
          let first = 0;
          for (const [i, n] of widths.entries()) {
            const part = buffer(rowMajor.slice((first * K) / 2, ((first + n) * K) / 2));
            const alone = buffer(T * n * 4);
            run(
              [o.matmul({
                x,
                w: { buffer: part, dtype: "bf16", offsetElems: 0 },
                out: alone,
                K,
                N: n,
                outStride: n,
                outOffset: 0,
                accumulate: false,
              })],
              T,
              0,
              o.step,
            );
            const got = await readF32(gpu, outs[i], 0, T * n);
            assert.deepStrictEqual(
              got,
              await readF32(gpu, alone, 0, T * n),
              `${layout} T=${T} part ${i}`,
            );
            first += n;
          }
        }
      }
    },
  );
}

gpuTest("matmul() refuses a split with accumulate or a wrong stride", () => {
  const w = { buffer: buffer(64 * 8 * 4), dtype: "f32" as const, offsetElems: 0 };
  const base = { x: buffer(64 * 4), w, out: buffer(64 * 4), K: 8, N: 64, outOffset: 0 };
  const split = { k: 32, v: 48, kOut: buffer(64), vOut: buffer(64) };
  assert.throws(
    () => ops.matmul({ ...base, outStride: 32, accumulate: true, split }),
    OpConfigError,
  );
  assert.throws(
    () => ops.matmul({ ...base, outStride: 64, accumulate: false, split }),
    OpConfigError,
  );
  assert.throws(
    () => ops.matmul({ ...base, outStride: 32, accumulate: false, split: { ...split, v: 80 } }),
    OpConfigError,
  );
  return Promise.resolve();
});
