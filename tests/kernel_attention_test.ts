import { readF32 } from "../src/gpu/readback.ts";
import * as ref from "../src/reference/ops.ts";
import { Ops } from "../src/gpu/ops.ts";
import { assertClose, buffer, gpu, gpuTest, ops, randomF32, run } from "./kernel_harness.ts";

/** The three-pass attention (scores buffer) and the one-pass kernel used past its budget. */
const VARIANTS: [string, Ops][] = [["3-pass", ops], [
  "1-pass",
  new Ops(gpu, { attentionScratchBytes: 0 }),
]];

/** f32 softmax and sums over up to ~1500 positions, relative to the largest output. */
const TOL = 2e-6;

interface Case {
  T: number;
  pos0: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

async function check(c: Case): Promise<void> {
  for (const [variant, o] of VARIANTS) await checkWith(o, variant, c);
}

async function checkWith(o: Ops, variant: string, c: Case): Promise<void> {
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
  assertClose(got, want, TOL, `${variant} ${JSON.stringify(c)}`);
}

gpuTest(
  "attention() matches the float64 reference for GQA group 1, Dh 24, kv_len 1..7",
  async () => {
    await check({ T: 1, pos0: 0, heads: 2, kvHeads: 2, headDim: 24 }); // kv_len 1
    await check({ T: 7, pos0: 0, heads: 2, kvHeads: 2, headDim: 24 });
    await check({ T: 3, pos0: 4, heads: 3, kvHeads: 3, headDim: 24 });
  },
);

gpuTest(
  "attention() matches the float64 reference for GQA group 8, Dh 128, kv_len > 256",
  async () => {
    await check({ T: 1, pos0: 300, heads: 8, kvHeads: 1, headDim: 128 });
    await check({ T: 3, pos0: 270, heads: 16, kvHeads: 2, headDim: 128 });
  },
);

gpuTest(
  "attention() covers every position past llvmpipe's loop limit (kv_len 1502, Dh 128)",
  async () => {
    // A per-head loop over positions and head dims stopped after ~1000 positions at Dh 128.
    await check({ T: 2, pos0: 1500, heads: 4, kvHeads: 1, headDim: 128 });
  },
);
