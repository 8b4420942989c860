/**
 * The expert cache under a budget: outputs identical bit for bit whatever the number of slots,
 * a clear error below one layer's top-k, one readback per decoded token when every routed expert
 * is resident, and each routed expert loaded once per layer during prefill.
 */
import assert from "node:assert/strict";
import { SMALL, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { ExpertBudgetError } from "../src/gpu/expert_cache.ts";
import { LrfuPolicy } from "../src/experts/policy.ts";
import { openGpu } from "../src/gpu/device.ts";

const OPTS = { ...SMALL, dtype: "BF16" as const };
const PROMPT = Array.from({ length: 20 }, (_, i) => (i * 37 + 5) % SMALL.vocab);
const DECODE = [11, 200, 37, 400, 5, 99, 123, 321];

async function withSmall(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "expert_cache_" });
  try {
    await writeFixture(dir, OPTS);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Prefill logits (all rows) then decode logits, one token at a time. */
async function run(model: GpuModel): Promise<Float32Array[]> {
  const s = model.newSession();
  const rows = await s.forward(PROMPT);
  for (const id of DECODE) rows.push(...await s.forward([id]));
  s.free();
  return rows;
}

Deno.test("GpuModel logits are bit-identical for every expert budget and policy", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const full = await GpuModel.open(opened.weights, { gpu, maxContext: 64 });
      const want = await run(full);
      full.destroy();
      const total = SMALL.layers * SMALL.experts;
      for (const slots of [SMALL.topK, 7, 20, total - 1]) {
        for (const policy of ["lru", "lrfu"]) {
          const model = await GpuModel.open(opened.weights, {
            gpu,
            maxContext: 64,
            expertSlots: slots,
            policy: policy === "lrfu" ? new LrfuPolicy<number>() : undefined,
          });
          const got = await run(model);
          assert.equal(got.length, want.length);
          for (let i = 0; i < want.length; i++) {
            assert.deepEqual(got[i], want[i], `row ${i} differs with ${slots} slots (${policy})`);
          }
          const m = model.cache.metrics.snapshot();
          assert.ok(m.misses > 0, "a budget below all experts must miss sometimes");
          model.destroy();
        }
      }
    } finally {
      opened.close();
    }
  });
});

Deno.test("GpuModel refuses fewer expert slots than one layer's top-k", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    try {
      await assert.rejects(
        GpuModel.open(opened.weights, { expertSlots: SMALL.topK - 1 }),
        (e: Error) => e instanceof ExpertBudgetError && /at least 4/.test(e.message),
      );
    } finally {
      opened.close();
    }
  });
});

Deno.test("GpuModel decodes with one readback per token when every routed expert is resident", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    try {
      const total = SMALL.layers * SMALL.experts;
      for (const slots of [total, total - 1]) {
        const model = await GpuModel.open(opened.weights, { maxContext: 64, expertSlots: slots });
        const s = model.newSession();
        await s.forward([7]);
        // the same token at the next positions routes mostly to the same, now resident experts
        let allHitSteps = 0;
        for (let i = 0; i < 6; i++) {
          const before = { ...model.stats };
          const misses = model.cache.metrics.misses;
          await s.forward([7]);
          if (model.cache.metrics.misses === misses) {
            assert.equal(model.stats.readbacks - before.readbacks, 1);
            allHitSteps++;
          }
        }
        assert.ok(allHitSteps > 0, "expected decode steps with every expert resident");
        model.destroy();
      }
    } finally {
      opened.close();
    }
  });
});

Deno.test("GpuModel prefill under a budget loads each routed expert once per layer", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    try {
      const model = await GpuModel.open(opened.weights, { maxContext: 64, expertSlots: 5 });
      await model.newSession().forward(PROMPT);
      assert.ok(model.stats.prefillRouted > 5, "the prompt should route to many experts");
      assert.equal(model.stats.prefillLoads, model.stats.prefillRouted);
      model.destroy();
    } finally {
      opened.close();
    }
  });
});

Deno.test("router masking: exact when every expert is resident, no loads once each layer holds its share", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const full = await GpuModel.open(opened.weights, { gpu, maxContext: 64 });
      const exact = await run(full);
      const s = full.newSession({ routerMasking: true });
      const masked = await s.forward(PROMPT);
      for (const id of DECODE) masked.push(...await s.forward([id]));
      assert.deepEqual(masked, exact, "masking changes nothing with all experts resident");
      full.destroy();

      const model = await GpuModel.open(opened.weights, { gpu, maxContext: 64, expertSlots: 20 });
      const m = model.newSession({ routerMasking: true });
      // warm-up: layers below their share of the slots route exactly and load
      await m.forward(PROMPT);
      for (const id of DECODE) await m.forward([id]);
      const quota = model.layerQuota;
      for (let l = 0; l < SMALL.layers; l++) {
        assert.ok(model.cache.residentIn(l).size >= quota, `layer ${l} holds its share`);
      }
      const loads = model.cache.metrics.misses;
      const readbacks = model.stats.readbacks;
      for (const id of DECODE) await m.forward([id]);
      assert.equal(model.cache.metrics.misses, loads, "masked decode never loads");
      assert.equal(model.cache.residentCount, 20, "masking starts once the budget is filled");
      assert.equal(model.stats.readbacks - readbacks, DECODE.length, "one readback per token");
      model.destroy();
    } finally {
      opened.close();
    }
  });
});

Deno.test("GpuModel.onRouting reports each layer's final routing once per step, whatever the budget", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const traces: string[][] = [];
      for (const slots of [undefined, 6]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 64,
          expertSlots: slots,
        });
        const trace: string[] = [];
        model.onRouting = (l, experts) => trace.push(`${l}:${experts.join(",")}`);
        await run(model);
        traces.push(trace);
        model.destroy();
      }
      // prefill (one entry per layer) + one per layer per decoded token
      assert.equal(traces[0].length, SMALL.layers * (1 + DECODE.length));
      assert.deepEqual(traces[1], traces[0]);
      assert.ok(traces[0].every((t) => t.split(":")[1].split(",").length >= SMALL.topK));
    } finally {
      opened.close();
    }
  });
});

Deno.test("perLayerRouting (the naive baseline) gives the same logits with a readback per layer", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const fast = await GpuModel.open(opened.weights, { gpu, maxContext: 64 });
      const want = await run(fast);
      const fastPerStep = fast.stats.readbacks / fast.stats.steps;
      fast.destroy();
      const naive = await GpuModel.open(opened.weights, {
        gpu,
        maxContext: 64,
        perLayerRouting: true,
      });
      assert.deepEqual(await run(naive), want);
      assert.equal(fastPerStep, 1);
      assert.equal(naive.stats.readbacks / naive.stats.steps, SMALL.layers + 1);
      naive.destroy();
    } finally {
      opened.close();
    }
  });
});

Deno.test("GpuModel prefill of a prompt longer than a batch loads each expert once per layer", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const full = await GpuModel.open(opened.weights, { gpu, maxContext: 64, maxBatch: 8 });
      const want = await full.newSession().forward(PROMPT);
      full.destroy();
      const model = await GpuModel.open(opened.weights, {
        gpu,
        maxContext: 64,
        maxBatch: 8,
        expertSlots: 5,
      });
      const routed: Set<number>[] = Array.from({ length: SMALL.layers }, () => new Set());
      model.onRouting = (l, experts) => experts.forEach((e) => routed[l].add(e));
      const got = await model.newSession().forward(PROMPT);
      assert.deepEqual(got, want, "bit-identical to all experts resident");
      const distinct = routed.reduce((n, s) => n + s.size, 0);
      assert.equal(model.stats.prefillRouted, distinct);
      assert.equal(model.stats.prefillLoads, distinct, "one load per routed expert per layer");
      const chunks = Math.ceil(PROMPT.length / 8);
      assert.equal(
        model.stats.readbacks,
        SMALL.layers + chunks,
        "per layer, then logits per chunk",
      );
      model.destroy();
    } finally {
      opened.close();
    }
  });
});
