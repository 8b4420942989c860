/**
 * Expert pools split into many small buffers (a forced binding limit of one or two slots): with
 * grouped dispatch (one expert op per stage binds a group of pool buffers, each layer's experts in
 * its own group) and with the per-pool baseline, at every budget, logits are bit-identical to the
 * model with every expert in one buffer, prefill (tiled expert kernels) and decode alike; and the
 * dispatches a decode step records drop by exactly the expert ops grouping saves.
 */
import assert from "node:assert/strict";
import { SMALL, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel, type GpuModelOptions } from "../src/gpu/model.ts";
import { uniformLayouts } from "../src/gpu/expert_pool.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import type { ModelConfig } from "../src/types.ts";
import { diffCounts, installGpuCounters } from "../bench/gpu_counters.ts";
import { promptThenDecode } from "./_experts.ts";

const OPTS = { ...SMALL, dtype: "BF16" as const };
/** 40 tokens x top-4 = 160 (token, expert) pairs: the tiled expert kernels run in prefill. */
const PROMPT = Array.from({ length: 40 }, (_, i) => (i * 37 + 5) % SMALL.vocab);
const DECODE = [11, 200, 37, 400, 5, 99];

/** Prefill logits (all rows) then decode logits, one token at a time. */
const run = (model: GpuModel) => promptThenDecode(model, PROMPT, DECODE);

function slotBytes(config: ModelConfig): number {
  return uniformLayouts(config, "BF16", "BF16")[0].slotBytes;
}

/** SMALL BF16 written to a temporary directory and opened, with a fresh device. */
async function withSmall(
  fn: (opened: ReturnType<typeof openModelDir>, gpu: Gpu) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "expert_groups_" });
  const gpu = await openGpu();
  try {
    await writeFixture(dir, OPTS);
    const opened = openModelDir(dir);
    try {
      await fn(opened, gpu);
    } finally {
      opened.close();
    }
  } finally {
    gpu.device.destroy();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("many small expert pools: grouped and per-pool dispatch give bit-identical logits at every budget", async () => {
  await withSmall(async (opened, gpu) => {
    const c = opened.weights.config;
    const full = await GpuModel.open(opened.weights, { gpu, maxContext: 64 });
    assert.equal(full.pool.pools.length, 1, "the reference keeps every expert in one buffer");
    const want = await run(full);
    full.destroy();
    const slot = slotBytes(c);
    const total = c.numLayers * c.numExperts;
    const variants: [string, GpuModelOptions][] = [
      ["2 slots per pool, grouped", { expertBindingLimit: 2 * slot }],
      ["2 slots per pool, per-pool", {
        expertBindingLimit: 2 * slot,
        expertDispatch: "per-pool",
      }],
      // 1 slot per pool, 3 per group: a layer's 16 experts span 6 groups
      ["1 slot per pool, 3 per group", { expertBindingLimit: slot, expertPoolBindings: 3 }],
    ];
    for (const [name, variant] of variants) {
      for (const slots of [total, 20, c.topK]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 64,
          expertSlots: slots,
          ...variant,
        });
        assert.ok(model.pool.pools.length > 1, `${name}: several pool buffers`);
        if (variant.expertPoolBindings === 3 && slots === total) {
          for (let l = 0; l < c.numLayers; l++) {
            assert.equal(model.pool.layerGroups(l).length, 6, `layer ${l} spans 6 groups`);
          }
        }
        const got = await run(model);
        assert.equal(got.length, want.length);
        for (let i = 0; i < want.length; i++) {
          assert.deepEqual(got[i], want[i], `row ${i} differs: ${name}, ${slots} slots`);
        }
        model.destroy();
      }
    }
  });
});

Deno.test("grouped dispatch records 2 expert ops per layer group, per-pool 2 per pool buffer", async () => {
  await withSmall(async (opened, gpu) => {
    const c = opened.weights.config;
    const limit = 2 * slotBytes(c);
    /** Dispatches of one decode forward, every expert resident. */
    const dispatches = async (opts: GpuModelOptions) => {
      const model = await GpuModel.open(opened.weights, { gpu, maxContext: 64, ...opts });
      const s = model.newSession();
      await s.forward(PROMPT.slice(0, 4));
      const counters = installGpuCounters();
      try {
        const before = counters.snapshot();
        await s.forward([7]);
        return { model, n: diffCounts(counters.snapshot(), before).dispatches };
      } finally {
        counters.uninstall();
        s.free();
      }
    };
    const grouped = await dispatches({ expertBindingLimit: limit });
    const perPool = await dispatches({ expertBindingLimit: limit, expertDispatch: "per-pool" });
    const P = perPool.model.pool.pools.length;
    assert.equal(P, Math.ceil((c.numLayers * c.numExperts) / 2), "24 pool buffers");
    let saved = 0;
    for (let l = 0; l < c.numLayers; l++) {
      const groups = grouped.model.pool.layerGroups(l).length;
      assert.equal(groups, 1, `layer ${l}: its 16 experts in one group of 8 pool buffers`);
      assert.equal(perPool.model.pool.layerGroups(l).length, P);
      saved += 2 * (P - groups);
    }
    assert.equal(perPool.n - grouped.n, saved, "dispatches saved = expert ops not recorded");
    grouped.model.destroy();
    perPool.model.destroy();
  });
});
