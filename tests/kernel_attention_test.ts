import assert from "node:assert";
import { readF32 } from "../src/gpu/readback.ts";
import * as ref from "../src/reference/ops.ts";
import { ADAPTER_CHOICES, OpConfigError, Ops } from "../src/gpu/ops.ts";
import { assertClose, buffer, gpu, gpuTest, ops, randomF32, run } from "./kernel_harness.ts";

/** The three-pass attention (scores buffer), its baseline with one position and one head-dim
 * chunk per lane (must agree bit for bit: the same sums in the same order), the one-pass kernel
 * used past its budget, the three-pass kernels with their private arrays at the declared
 * maxima (exactArrays: false; bit for bit too), and the flash-style tiled kernel (GPUs' prefill,
 * here on every step). */
// three passes on any adapter
const SCRATCH = { attentionScratchBytes: ADAPTER_CHOICES.llvmpipe.attentionScratchBytes };
const VARIANTS: [string, Ops][] = [
  ["3-pass", new Ops(gpu, SCRATCH)],
  ["3-pass, one position / chunk a lane", new Ops(gpu, { ...SCRATCH, attentionBlocks: false })],
  ["1-pass", new Ops(gpu, { attentionScratchBytes: 0 })],
  ["3-pass, arrays at their declared maxima", new Ops(gpu, { ...SCRATCH, exactArrays: false })],
];
/** The flash-style tiled attention (GPUs' prefill candidate, here on every step), added to the
 * cases below that name it: llvmpipe compiles each of its pipelines for up to a minute. */
const TILES: [string, Ops] = [
  "tiles",
  new Ops(gpu, { attentionTiles: true, attentionTilesFrom: 1 }),
];
const WITH_TILES = [...VARIANTS, TILES];
/** llvmpipe ends a shader invocation after 65535 loop iterations: the one-pass kernel refuses
 * caches longer than it can finish there (other adapters have no such limit). */
const LLVMPIPE = /llvmpipe/i.test(gpu.adapterInfo.description ?? "");

/** f32 softmax and sums over up to ~1500 positions, relative to the largest output. */
const TOL = 2e-6;
/** The same over 25536 positions (5.5e-6 measured at 26000). */
const LONG_TOL = 2e-5;

interface Case {
  T: number;
  pos0: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

async function check(c: Case, tol = TOL, variants = VARIANTS): Promise<void> {
  const outs: Float32Array[] = [];
  for (const [variant, o] of variants) outs.push(await checkWith(o, variant, c, tol));
  assert.deepStrictEqual(outs[0], outs[1], `3-pass blocked vs baseline ${JSON.stringify(c)}`);
  assert.deepStrictEqual(outs[0], outs[3], `exact vs declared arrays ${JSON.stringify(c)}`);
}

async function checkWith(o: Ops, variant: string, c: Case, tol: number): Promise<Float32Array> {
  const { T, pos0, heads, kvHeads, headDim } = c;
  const maxCtx = pos0 + T + 2;
  const kvWidth = kvHeads * headDim;
  const q = randomF32(T * heads * headDim, 1 + T + pos0);
  // Keys scaled up so the softmax is far from uniform (exercises the running max).
  const k = randomF32(maxCtx * kvWidth, 2 + pos0, 4);
  const v = randomF32(maxCtx * kvWidth, 3 + pos0);
  const scale = 1 / Math.sqrt(headDim);
  const out = buffer(q.byteLength);
  run(
    [
      o.attention({
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
    o.step,
  );
  const got = await readF32(gpu, out, 0, q.length);
  const want = ref.attention(q, k, v, T, pos0, heads, kvHeads, headDim, scale);
  assertClose(got, want, tol, `${variant} ${JSON.stringify(c)}`);
  return got;
}

gpuTest(
  "attention() matches the float64 reference for GQA group 1, Dh 24, kv_len 1..7",
  async () => {
    await check({ T: 1, pos0: 0, heads: 2, kvHeads: 2, headDim: 24 }, TOL, WITH_TILES); // kv_len 1
    await check({ T: 7, pos0: 0, heads: 2, kvHeads: 2, headDim: 24 }, TOL, WITH_TILES);
    await check({ T: 3, pos0: 4, heads: 3, kvHeads: 3, headDim: 24 }, TOL, WITH_TILES);
  },
);

gpuTest(
  "attention() matches the float64 reference for GQA group 8, Dh 128, kv_len > 256",
  async () => {
    await check({ T: 1, pos0: 300, heads: 8, kvHeads: 1, headDim: 128 }, TOL, WITH_TILES);
    await check({ T: 3, pos0: 270, heads: 16, kvHeads: 2, headDim: 128 }, TOL, WITH_TILES);
  },
);

gpuTest(
  "attention() matches the float64 reference for every score span and value chunking",
  async () => {
    // (group, Dh/4) -> positions per lane, chunks per lane: (16, 6) -> 2, 2; (2, 16) -> 8, 4
    // (the default model's shape); (4, 5) -> 8, 1; a step of 64 tokens (spans cut at the
    // causal limit) and a position count that no span divides.
    await check({ T: 5, pos0: 37, heads: 16, kvHeads: 1, headDim: 24 });
    await check({ T: 64, pos0: 131, heads: 4, kvHeads: 2, headDim: 64 });
    await check({ T: 2, pos0: 299, heads: 8, kvHeads: 2, headDim: 20 });
  },
);

gpuTest(
  "attention() matches the float64 reference within 2e-5 at the longest cache llvmpipe's loop limit allows (25536, Dh 128)",
  async () => {
    // The one-pass kernel loops headDim/4 + 2 * 64 times per block of 64 positions, plus an exit
    // test per loop that the limiter counts too: 399 blocks fit in 65535 iterations. Counting
    // one instead of four allowed 26048 positions, and 26002 gave a relative error of 0.13. Sums
    // of 25536 positions in f32 round further than the ~1500 of the other cases.
    await check({ T: 2, pos0: 25536 - 4, heads: 16, kvHeads: 1, headDim: 128 }, LONG_TOL);
    // One block more is refused on llvmpipe (the old count let it through, into wrong numbers).
    if (!LLVMPIPE) return;
    const positions = 25536 + 64;
    assert.throws(
      () =>
        ops.attention({
          q: buffer(2 * 16 * 128 * 4),
          kCache: buffer(positions * 128 * 4),
          vCache: buffer(positions * 128 * 4),
          out: buffer(2 * 16 * 128 * 4),
          numHeads: 16,
          numKvHeads: 1,
          headDim: 128,
          scale: 1,
        }),
      OpConfigError,
    );
  },
);

gpuTest(
  "attention() covers every position past llvmpipe's loop limit (kv_len 1502, Dh 128)",
  async () => {
    // A per-head loop over positions and head dims stopped after ~1000 positions at Dh 128.
    await check({ T: 2, pos0: 1500, heads: 4, kvHeads: 1, headDim: 128 });
  },
);

/** One step of tokens from several sequences (their KV slabs, their positions), the caches
 * holding slabs [firstSlab, firstSlab + slabs): each token's output against the float64
 * reference over its own slab; tokens of other buffers' slabs are left as they were. */
async function checkMixed(
  o: Ops,
  variant: string,
  tokens: [number, number][],
  shape: { heads: number; kvHeads: number; headDim: number; positions: number },
  firstSlab: number,
  slabs: number,
): Promise<void> {
  const { heads, kvHeads, headDim, positions } = shape;
  const kvWidth = kvHeads * headDim;
  const qWidth = heads * headDim;
  const T = tokens.length;
  const q = randomF32(T * qWidth, 11);
  const k = randomF32(slabs * positions * kvWidth, 12, 4);
  const v = randomF32(slabs * positions * kvWidth, 13);
  const scale = 1 / Math.sqrt(headDim);
  const untouched = -7;
  const out = buffer(new Float32Array(T * qWidth).fill(untouched));
  const op = o.attention({
    q: buffer(q),
    kCache: buffer(k),
    vCache: buffer(v),
    out,
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    scale,
    firstSlab,
    slabs,
  });
  run([op], T, 0, o.step, tokens);
  const got = await readF32(gpu, out, 0, T * qWidth);
  tokens.forEach(([slab, pos], t) => {
    const row = got.subarray(t * qWidth, (t + 1) * qWidth);
    const what = `${variant}: token ${t} (slab ${slab}, position ${pos})`;
    if (slab < firstSlab || slab >= firstSlab + slabs) {
      assert.ok(row.every((x) => x === untouched), `${what} belongs to another buffer`);
      return;
    }
    const s = (slab - firstSlab) * positions * kvWidth;
    const want = ref.attention(
      q.subarray(t * qWidth, (t + 1) * qWidth),
      k.subarray(s, s + (pos + 1) * kvWidth),
      v.subarray(s, s + (pos + 1) * kvWidth),
      1,
      pos,
      heads,
      kvHeads,
      headDim,
      scale,
    );
    assertClose(row, want, TOL, what);
  });
}

gpuTest(
  "attention() of one step holding several sequences matches the float64 reference per sequence",
  async () => {
    // Runs of one slab inside the tiled kernel's tiles (8 query heads per kv head: 2 tokens a
    // tile), a sequence split across tiles, one token alone in its slab, slabs of another buffer.
    const shape = { heads: 16, kvHeads: 2, headDim: 32, positions: 80 };
    const tokens: [number, number][] = [
      [2, 5],
      [2, 6],
      [3, 0],
      [4, 40],
      [4, 41],
      [4, 42],
      [1, 9],
      [3, 1],
      [2, 7],
      [4, 79],
    ];
    // and the tiled kernel's positions split into windows of 16 (a dispatch each), so that rows
    // end in the first, a middle and the last window and runs skip windows past their positions
    const windows = new Ops(gpu, {
      attentionTiles: true,
      attentionTilesFrom: 1,
      attentionWindow: 16,
    });
    for (const [variant, o] of [...WITH_TILES, ["tiles, windows of 16", windows] as const]) {
      await checkMixed(o, variant, tokens, shape, 2, 3); // slabs 2..4 here, 1 elsewhere
    }
    // one query head per kv head: 16 tokens a tile, so every run of the step in one tile
    const mha = { heads: 4, kvHeads: 4, headDim: 24, positions: 80 };
    for (const [variant, o] of WITH_TILES) await checkMixed(o, variant, tokens, mha, 0, 5);
  },
);

gpuTest(
  "the tiled attention is chosen from attentionTilesFrom tokens a step, the others below",
  async () => {
    // Same numbers as the reference either way; which kernel ran shows in the op's pipeline
    // choice only, so compare against the one-pass kernel bit for bit below the threshold.
    const c = { T: 20, pos0: 30, heads: 8, kvHeads: 2, headDim: 32 };
    const oneInput = new Ops(gpu, { attentionScratchBytes: 0, attentionTiles: false });
    const from20 = new Ops(gpu, {
      attentionScratchBytes: 0,
      attentionTiles: true,
      attentionTilesFrom: 20,
    });
    const from21 = new Ops(gpu, {
      attentionScratchBytes: 0,
      attentionTiles: true,
      attentionTilesFrom: 21,
    });
    const one = await checkWith(oneInput, "one-pass", c, TOL);
    const tiled = await checkWith(from20, "tiles from 20 tokens", c, TOL);
    const below = await checkWith(from21, "tiles from 21 tokens", c, TOL);
    assert.deepStrictEqual(below, one, "below the threshold: the one-pass kernel");
    assert.notDeepStrictEqual(tiled, one, "at the threshold: another kernel (other sums)");
  },
);
