/**
 * The WebGPU forward pass against the float64 CPU reference (src/reference/model.ts), on fixture
 * checkpoints in F32, BF16 and F16: logits of prompts of 1, 7, 64 and 128 tokens, prefill vs
 * token-by-token decode, and greedy continuations.
 */
import assert from "node:assert/strict";
import { type FixtureOptions, SMALL, TINY, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel, type GpuModelOptions } from "../src/gpu/model.ts";
import { ADAPTER_CHOICES } from "../src/gpu/ops.ts";
import { SHARED_SIZES } from "./_sizes.ts";
import { stackRows } from "../src/gpu/resident.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";
import { greedyToken } from "../src/greedy.ts";
import { GREEDY } from "../src/sampling.ts";

/**
 * The acceptance bar, max |logit - float64 reference|, per fixture: just above the worst figure
 * the README reports for it (llvmpipe: 2.8e-6, 2.4e-6, 1.61e-5, 3.5e-6).
 */
const LOGIT_TOLERANCE = { f32: 4e-6, bf16: 4e-6, f16: 2e-5, small: 5e-6 };
/** Argmax must agree wherever the reference's top-2 gap exceeds this. */
const ARGMAX_GAP = 1e-3;

function prompt(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 13) % vocab);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function top2Gap(row: ArrayLike<number>): number {
  let a = -Infinity, b = -Infinity;
  for (let i = 0; i < row.length; i++) {
    if (row[i] > a) [a, b] = [row[i], a];
    else if (row[i] > b) b = row[i];
  }
  return a - b;
}

async function withFixture(
  opts: FixtureOptions,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "gpu_model_" });
  try {
    await writeFixture(dir, opts);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const CASES: [string, FixtureOptions, number][] = [
  ["TINY F32", { ...TINY, dtype: "F32" }, LOGIT_TOLERANCE.f32],
  ["TINY BF16", { ...TINY, dtype: "BF16" }, LOGIT_TOLERANCE.bf16],
  ["TINY F16 tied, fused, 2 shards", {
    ...TINY,
    dtype: "F16",
    tieEmbeddings: true,
    fusedExperts: true,
    shards: 2,
  }, LOGIT_TOLERANCE.f16],
  ["SMALL BF16 omni", { ...SMALL, dtype: "BF16", omni: true }, LOGIT_TOLERANCE.small],
];

/** The kernel choices of llvmpipe (lanes that own whole rows, three-pass attention) and of other
 * adapters (workgroups that share rows: matvec.wgsl, matmul_tiled.wgsl, the experts' gate/up
 * matvec; one-pass attention; a workgroup per norm row), each forced, so both sets are held to
 * the reference on any adapter (the second on the two 16-bit fixtures, for time), the latter
 * also with the prefill attention in tiles (attention_tiled.wgsl: the 64- and 128-token
 * prompts). */
const KERNEL_SETS: [string, GpuModelOptions][] = [
  ["llvmpipe's kernels", ADAPTER_CHOICES.llvmpipe],
  ["GPU kernels", { ...ADAPTER_CHOICES.gpu, sharedSizes: SHARED_SIZES }],
  ["GPU kernels, tiled attention", {
    ...ADAPTER_CHOICES.gpu,
    sharedSizes: SHARED_SIZES,
    attentionTiles: true,
  }],
];

for (const [name, opts, tolerance] of CASES) {
  for (const [kernels, kernelOpts] of KERNEL_SETS) {
    if (kernels !== "llvmpipe's kernels" && opts.dtype !== "BF16") continue;
    Deno.test(`GpuModel logits match the float64 reference within ${tolerance} (${name}, ${kernels})`, async () => {
      await withFixture(opts, async (dir) => {
        const opened = openModelDir(dir);
        const ref = await openReferenceModel(dir);
        const model = await GpuModel.open(opened.weights, { maxContext: 128, ...kernelOpts });
        try {
          assert.equal(model.maxBatch, 128); // so the 128-token prompt is one step
          for (const n of [1, 7, 64, 128]) {
            const ids = prompt(n, opts.vocab, n);
            const gpu = await model.newSession().forward(ids);
            const want = ref.newSession().forward64(ids);
            assert.equal(gpu.length, n);
            let worst = 0;
            for (let t = 0; t < n; t++) {
              worst = Math.max(worst, maxAbsDiff(gpu[t], want[t]));
              if (top2Gap(want[t]) > ARGMAX_GAP) {
                assert.equal(greedyToken(gpu[t]), greedyToken(want[t]), `argmax at position ${t}`);
              }
            }
            console.error(`  ${name}, ${n} tokens: max |gpu - ref| = ${worst.toExponential(2)}`);
            assert.ok(worst <= tolerance, `max abs diff ${worst} for ${n} tokens`);
          }
        } finally {
          model.destroy();
          ref.close();
          opened.close();
        }
      });
    });
  }
}

Deno.test("GpuModel prefill in one pass equals token-by-token decode", async () => {
  await withFixture({ ...TINY, dtype: "BF16" }, async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, { maxContext: 64 });
    try {
      const ids = prompt(20, TINY.vocab, 3);
      const prefill = await model.newSession().forward(ids);
      const s = model.newSession();
      let worst = 0;
      for (let t = 0; t < ids.length; t++) {
        const [row] = await s.forward([ids[t]]);
        worst = Math.max(worst, maxAbsDiff(row, prefill[t]));
      }
      console.error(`  prefill vs decode: max diff ${worst.toExponential(2)}`);
      assert.equal(worst, 0, `prefill vs decode differ by ${worst}`); // README: identical
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

Deno.test(
  "GpuModel prefill longer than one batch is chunked and still matches; a lastOnly prompt runs " +
    "the lm_head on its last row only (the baseline: every row of the chunks before the last)",
  async () => {
    await withFixture({ ...TINY, dtype: "F32" }, async (dir) => {
      const opened = openModelDir(dir);
      const ref = await openReferenceModel(dir);
      const model = await GpuModel.open(opened.weights, { maxContext: 64, maxBatch: 8 });
      const baseline = await GpuModel.open(opened.weights, {
        maxContext: 64,
        maxBatch: 8,
        headlessChunks: false,
      });
      try {
        const ids = prompt(21, TINY.vocab, 5);
        const gpu = await model.newSession().forward(ids);
        const want = ref.newSession().forward64(ids);
        const worst = Math.max(...gpu.map((r, t) => maxAbsDiff(r, want[t])));
        assert.ok(worst <= LOGIT_TOLERANCE.f32, `max abs diff ${worst}`);
        const rows = [model, baseline].map((m) => m.stats.headRows);
        const routed: string[][] = [[], []];
        [model, baseline].forEach((m, i) => {
          m.onRouting = (l, experts) => routed[i].push(`${l}:${experts.join(",")}`);
        });
        const [last] = await model.newSession().forward(ids, { lastOnly: true });
        const [baseLast] = await baseline.newSession().forward(ids, { lastOnly: true });
        assert.ok(maxAbsDiff(last, want[20]) <= LOGIT_TOLERANCE.f32);
        assert.deepEqual(last, baseLast); // same logits, bit for bit
        // every chunk's routing reported, in order (the early chunks' come back without a wait)
        assert.equal(routed[0].length, 3 * TINY.layers);
        assert.deepEqual(routed[0], routed[1]);
        assert.equal(model.stats.headRows - rows[0], 1); // 21 tokens in chunks of 8, 8, 5
        assert.equal(baseline.stats.headRows - rows[1], 8 + 8 + 1);
      } finally {
        model.destroy();
        baseline.destroy();
        ref.close();
        opened.close();
      }
    });
  },
);

Deno.test("GpuModel greedy 32 tokens equal the reference's (SMALL BF16)", async () => {
  await withFixture({ ...SMALL, dtype: "BF16" }, async (dir) => {
    const opened = openModelDir(dir);
    const ref = await openReferenceModel(dir);
    const model = await GpuModel.open(opened.weights, { maxContext: 64 });
    try {
      const ids = prompt(7, SMALL.vocab, 11);
      const want = await greedy(ref, ids, 32);
      // the fixture's EOS ids are outside the generated range or would stop both the same way
      const eos = new Set(model.config.eosTokenIds);
      const stop = want.findIndex((t) => eos.has(t));
      const expected = stop < 0 ? want : want.slice(0, stop + 1);
      const session = model.newSession();
      const got: number[] = [];
      await session.decode(
        { feed: ids, maxTokens: 32, sampling: GREEDY, eosIds: [...eos] },
        (t) => {
          got.push(...t);
          return undefined;
        },
      );
      session.free();
      assert.deepEqual(got, expected);
    } finally {
      model.destroy();
      ref.close();
      opened.close();
    }
  });
});

Deno.test("GpuModel reuses a freed session's KV cache without carrying its state", async () => {
  await withFixture({ ...TINY, dtype: "BF16" }, async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, { maxContext: 64 });
    try {
      const a = model.newSession();
      const first = await a.forward(prompt(9, TINY.vocab, 1));
      a.free();
      const b = model.newSession();
      const again = await b.forward(prompt(9, TINY.vocab, 1));
      b.free();
      assert.equal(model.kvCachesMade, 1);
      assert.deepEqual(again, first);
      await assert.rejects(a.forward([1]), RangeError);
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

Deno.test("GpuModel with q/k/v stacked into one matmul gives the logits of three, bit for bit", async () => {
  for (const dtype of ["BF16", "F32"] as const) {
    await withFixture({ ...TINY, dtype }, async (dir) => {
      const opened = openModelDir(dir);
      const stacked = await GpuModel.open(opened.weights, { maxContext: 64 });
      const three = await GpuModel.open(opened.weights, { maxContext: 64, fusedQkv: false });
      try {
        const ids = prompt(9, TINY.vocab, 4);
        const a = stacked.newSession(), b = three.newSession();
        const rows = [await a.forward(ids), await b.forward(ids)];
        rows.push(await a.forward([ids[0]]), await b.forward([ids[0]])); // a decode step each
        assert.deepEqual(rows[0], rows[1], `${dtype} prefill`);
        assert.deepEqual(rows[2], rows[3], `${dtype} decode`);
      } finally {
        stacked.destroy();
        three.destroy();
        opened.close();
      }
    });
  }
});

Deno.test("GpuModel with its rows8 matrices and expert pools in textures gives the logits of buffers, bit for bit", async () => {
  // TINY's lm_head is untied (rows8, so a texture too); BF16 and F16 take rows8 and texture
  // pools, F32 keeps buffers for its matrices (row-major) and takes texture pools; all experts
  // resident, and 4 slots (loads into the textures while decoding)
  const cases: [FixtureOptions["dtype"], number | undefined][] = [
    ["BF16", undefined],
    ["F16", undefined],
    ["BF16", 4],
    ["F32", 4],
  ];
  for (const [dtype, expertSlots] of cases) {
    await withFixture({ ...TINY, dtype }, async (dir) => {
      const opened = openModelDir(dir);
      const models = await Promise.all(
        [true, false].map((textures) =>
          GpuModel.open(opened.weights, {
            maxContext: 128,
            expertSlots,
            textureWeights: textures,
            textureExperts: textures,
          })
        ),
      );
      assert.equal(models[0].pool.textures, true, "pools in textures");
      assert.equal(models[1].pool.textures, false);
      try {
        // 70 tokens: 140 pairs, the tiled expert kernels (prefill); then a decode step
        const ids = prompt(70, TINY.vocab, 5);
        const [a, b] = models.map((m) => m.newSession());
        const rows = [await a.forward(ids), await b.forward(ids)];
        rows.push(await a.forward([ids[0]]), await b.forward([ids[0]])); // a decode step each
        const what = `${dtype}, ${expertSlots ?? "all"} slots`;
        assert.deepEqual(rows[0], rows[1], `${what}: prefill`);
        assert.deepEqual(rows[2], rows[3], `${what}: decode`);
        assert.ok(rows[2].at(-1)!.some((v) => v !== 0), "logits computed");
      } finally {
        for (const m of models) m.destroy();
        opened.close();
      }
    });
  }
});

Deno.test("stackRows() stacks matrices of one dtype and row length, and refuses others", () => {
  const view = (dtype: "BF16" | "F32", rows: number, K: number, fill: number) => ({
    name: "t",
    dtype,
    shape: [rows, K],
    bytes: new Uint8Array(rows * K * (dtype === "F32" ? 4 : 2)).fill(fill),
    file: "",
    offset: 0,
  });
  const s = stackRows(
    [view("BF16", 3, 8, 1), view("BF16", 1, 8, 2), view("BF16", 2, 8, 3)],
    "qkv",
  )!;
  assert.deepEqual(s.shape, [6, 8]);
  assert.deepEqual(Array.from(s.bytes.subarray(0, 48)), Array(48).fill(1));
  assert.deepEqual(Array.from(s.bytes.subarray(48, 64)), Array(16).fill(2));
  assert.deepEqual(Array.from(s.bytes.subarray(64)), Array(32).fill(3));
  assert.equal(stackRows([view("BF16", 3, 8, 1), view("F32", 1, 8, 2)], "x"), null);
  assert.equal(stackRows([view("BF16", 3, 8, 1), view("BF16", 1, 16, 2)], "x"), null);
});
