/**
 * The expert cache under a budget: outputs identical bit for bit whatever the number of slots,
 * a clear error below one layer's top-k, one readback per decoded token when every routed expert
 * is resident, and each routed expert loaded once per layer during prefill.
 */
import assert from "node:assert/strict";
import { SMALL, TINY, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { ExpertBudgetError, ExpertCache, ExpertUploadError } from "../src/gpu/expert_cache.ts";
import { ABSENT, ExpertPool, uniformLayouts } from "../src/gpu/expert_pool.ts";
import { LrfuPolicy, LruPolicy } from "../src/experts/policy.ts";
import { ExpertChecksumError } from "../src/experts/store.ts";
import { openPacked, type PackedModel } from "../src/packed_weights.ts";
import { pack } from "../src/pack/pack.ts";
import { EXPERTS_FILE } from "../src/pack/format.ts";
import { openGpu } from "../src/gpu/device.ts";
import { promptThenDecode } from "./_experts.ts";

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
const run = (model: GpuModel) => promptThenDecode(model, PROMPT, DECODE);

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
      for (let l = 0; l < SMALL.layers; l++) {
        const quota = model.layerQuota(l);
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

Deno.test("GpuModel.onPass reports every pass of a decoded token: reruns start at the previous pass's miss, the last has none", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const model = await GpuModel.open(opened.weights, { gpu, maxContext: 64, expertSlots: 6 });
      const { numLayers: L, topK: K } = opened.weights.config;
      const routed: Uint32Array[] = [];
      model.onRouting = (l, experts) => (routed[l] = experts);
      const s = model.newSession();
      await s.forward(PROMPT);
      let reruns = 0;
      for (const id of DECODE) {
        const passes: {
          from: number;
          firstMissed: number;
          routing: Uint32Array;
          stride: number;
        }[] = [];
        model.onPass = (p) => {
          passes.push({ ...p, routing: p.routing.slice() });
        };
        const before = model.stats.readbacks;
        await s.forward([id]);
        assert.equal(passes.length, model.stats.readbacks - before, "a pass per readback");
        assert.equal(passes[0].from, 0);
        assert.equal(passes.at(-1)!.firstMissed, -1);
        for (let i = 1; i < passes.length; i++) {
          assert.ok(passes[i - 1].firstMissed >= passes[i - 1].from);
          assert.equal(passes[i].from, passes[i - 1].firstMissed, `pass ${i} reruns from the miss`);
        }
        reruns += passes.length - 1;
        // each layer's final routing (onRouting) is in the pass whose exact part holds it
        for (let l = 0; l < L; l++) {
          const p = passes.find((q) => l >= q.from && (q.firstMissed < 0 || l <= q.firstMissed))!;
          const at = l * p.stride * K;
          assert.deepEqual(p.routing.subarray(at, at + K), routed[l]);
        }
      }
      assert.ok(reruns > 0, "6 slots of 48 make some tokens miss");
      s.free();
      model.destroy();
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

/** A packed TINY model whose record of layer 1 expert 3 has one flipped byte. */
async function withDamagedRecord(
  fn: (m: PackedModel, bad: number, hf: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "expert_cache_damaged_" });
  try {
    await writeFixture(`${dir}/hf`, TINY);
    const out = `${dir}/packed`;
    const r = (await pack(`${dir}/hf`, out)).manifest.experts.records[1 * TINY.experts + 3];
    const bytes = Deno.readFileSync(`${out}/${EXPERTS_FILE}`);
    bytes[r.offset + 100] ^= 0x10;
    Deno.writeFileSync(`${out}/${EXPERTS_FILE}`, bytes);
    const m = await openPacked(out);
    try {
      await fn(m, 1 * TINY.experts + 3, `${dir}/hf`);
    } finally {
      m.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ExpertCache.load() of a damaged record changes nothing: no slot lost, no victim evicted, later loads work", async () => {
  await withDamagedRecord(async (m, bad) => {
    const gpu = await openGpu();
    const pool = new ExpertPool(gpu.device, m.config, uniformLayouts(m.config, "F32", "F32"), 4);
    const policy = new LruPolicy<number>();
    const cache = new ExpertCache(pool, m.experts, policy);
    const none = new Set<number>();
    try {
      // more failed loads than slots: each one must give its slot back
      for (let i = 0; i < 6; i++) {
        assert.throws(() => cache.load(bad, i, none), ExpertChecksumError);
      }
      assert.equal(cache.freeCount, 4);
      assert.equal(cache.residentCount, 0);
      assert.ok(pool.table.every((s) => s === ABSENT));
      // every slot still usable
      for (const [i, key] of [0, 1, 2, 4].entries()) assert.ok(cache.load(key, 10 + i, none));
      assert.equal(cache.freeCount, 0);
      // full: the failed load must not evict the policy's victim (key 0, least recently used)
      const table = pool.table.slice();
      assert.throws(() => cache.load(bad, 20, none), ExpertChecksumError);
      assert.deepEqual(pool.table, table, "slot table unchanged");
      assert.ok(cache.isResident(0), "the victim stays resident");
      assert.equal(cache.metrics.evictions, 0);
      assert.equal(policy.victim([0, 1, 2, 4], 21), 0, "policy state unchanged");
      // a good record then evicts exactly that victim and takes its slot
      const slot0 = pool.table[0];
      assert.ok(cache.load(5, 21, none));
      assert.ok(!cache.isResident(0));
      assert.equal(pool.table[5], slot0);
      assert.equal(cache.metrics.evictions, 1);
      assert.equal(cache.loads, 5);
      await cache.settle(); // every upload was accepted by WebGPU
    } finally {
      pool.destroy();
      gpu.device.destroy();
    }
  });
});

Deno.test("ExpertCache: an upload WebGPU refuses raises ExpertUploadError and frees its slot", async () => {
  await withDamagedRecord(async (m) => {
    const gpu = await openGpu();
    const pool = new ExpertPool(gpu.device, m.config, uniformLayouts(m.config, "F32", "F32"), 4);
    const cache = new ExpertCache(pool, m.experts, new LruPolicy<number>());
    const none = new Set<number>();
    try {
      assert.ok(cache.load(0, 0, none));
      await cache.settle();
      pool.pools[0].buffer!.destroy(); // every write into the pool now fails validation
      assert.ok(cache.load(6, 1, none)); // WebGPU answers asynchronously
      const err = await cache.settle().catch((e) => e);
      assert.ok(err instanceof ExpertUploadError, `got ${err}`);
      assert.equal(err.layer, 0);
      assert.equal(err.expert, 6);
      assert.match(err.message, /expert 6 of layer 0/);
      assert.ok(!cache.isResident(6), "the failed expert is dropped");
      assert.equal(pool.table[6], ABSENT);
      assert.equal(cache.freeCount, 3, "its slot is free again");
      assert.ok(cache.isResident(0));
      await cache.settle(); // raised once
      // the next load raises a failure found since the last settle()
      assert.ok(cache.load(7, 2, none));
      await new Promise((r) => setTimeout(r, 50));
      await gpu.device.queue.onSubmittedWorkDone();
      assert.throws(() => cache.load(8, 3, none), ExpertUploadError);
      assert.equal(cache.freeCount + cache.residentCount, cache.capacity);
    } finally {
      pool.destroy();
      gpu.device.destroy();
    }
  });
});

Deno.test("GpuModel with 4 expert slots and one damaged record: steps routed to it throw ExpertChecksumError, every other step still runs exactly", async () => {
  await withDamagedRecord(async (m, _bad, hf) => {
    const gpu = await openGpu();
    const intact = openModelDir(hf);
    const full = await GpuModel.open(intact.weights, { gpu, maxContext: 64 });
    const model = await GpuModel.open(m.weights, {
      gpu,
      maxContext: 64,
      expertSlots: 4,
      expertSource: m.experts,
    });
    try {
      let failed = 0, ranAfterFailure = 0;
      for (let i = 0; i < 40; i++) {
        const ids = [(i * 37 + 5) % TINY.vocab, (i * 11 + 1) % TINY.vocab];
        const s = model.newSession();
        try {
          const got = await s.forward(ids);
          const want = full.newSession();
          assert.deepEqual(got, await want.forward(ids), `prompt ${ids}`);
          want.free();
          if (failed > 0) ranAfterFailure++;
        } catch (e) {
          assert.ok(e instanceof ExpertChecksumError, `prompt ${ids}: got ${e}`);
          assert.equal(e.layer, 1);
          assert.equal(e.expert, 3);
          failed++;
        }
        s.free();
        assert.equal(model.cache.freeCount + model.cache.residentCount, 4, "no slot lost");
      }
      assert.ok(failed >= 4, `only ${failed} prompts routed to the damaged expert`);
      assert.ok(ranAfterFailure > 0, "no step ran after a failed load");
    } finally {
      model.destroy();
      full.destroy();
      intact.close();
      gpu.device.destroy();
    }
  });
});
