/**
 * Expert pool groups and layer affinity: the slots are split into groups of at most poolBindings
 * pool buffers (one expert dispatch binds a group), each layer's experts stay in its own group(s),
 * and the expert cache loads and evicts a layer's experts only within that layer's slot domain.
 * A small binding limit forces many pool buffers on a device that would hold them all in one.
 */
import assert from "node:assert/strict";
import type { ModelConfig } from "../src/types.ts";
import {
  EXPERT_FIXED_BINDINGS,
  ExpertPool,
  ExpertPoolError,
  type ExpertPoolOptions,
  fittingExpertSlots,
  uniformLayouts,
} from "../src/gpu/expert_pool.ts";
import { writeTextureBytes } from "../src/gpu/resident.ts";
import { WEIGHT_TEXTURE_WIDTH } from "../src/gpu/ops_api.ts";
import { ExpertCache, type ExpertSource } from "../src/gpu/expert_cache.ts";
import { LruPolicy } from "../src/experts/policy.ts";
import { ExpertScheduler } from "../src/gpu/expert_scheduler.ts";
import { emptyStepStats } from "../src/gpu/host.ts";
import { openGpu } from "../src/gpu/device.ts";
import { expertConfig, readStorage } from "./_experts.ts";

const configOf = expertConfig;

/** A pool of `total` slots with `perPool` slots per pool buffer (the binding limit set half a
 * slot above, so the division must round down) and `bindings` pool buffers per group. */
function poolOf(
  device: GPUDevice,
  config: ModelConfig,
  total: number,
  perPool: number,
  bindings: number,
  opts: ExpertPoolOptions = {},
): ExpertPool {
  const layouts = uniformLayouts(config, "BF16", "BF16");
  const slot = layouts[0].slotBytes;
  return new ExpertPool(device, config, layouts, total, {
    bindingLimit: perPool * slot + slot / 2,
    poolBindings: bindings,
    ...opts,
  });
}

/** Group sizes and, per group, its pool buffers' sizes. */
function shape(pool: ExpertPool): number[][] {
  return pool.groups.map((g) => g.pools.map((p) => p.slots));
}

/** Layer l's group range [start, end) as group indices. */
function range(pool: ExpertPool, l: number): [number, number] {
  const gs = pool.layerGroups(l);
  const start = pool.groups.indexOf(gs[0]);
  gs.forEach((g, i) => assert.equal(g, pool.groups[start + i], `layer ${l}: groups in a run`));
  return [start, start + gs.length];
}

/** Layer l's fair share of `total` slots over L layers (the first layers take the extra). */
function share(total: number, L: number, l: number): number {
  return Math.ceil(total * (l + 1) / L) - Math.ceil(total * l / L);
}

/** The invariants every pool keeps, whatever its sizes. */
function checkStructure(
  pool: ExpertPool,
  total: number,
  perPool: number,
  bindings: number,
  affinity: boolean,
) {
  const what = `${total} slots, ${perPool} per pool, ${bindings} per group, affinity ${affinity}`;
  const L = pool.config.numLayers;
  assert.equal(pool.slotsPerPool, perPool, what);
  assert.equal(pool.poolBindings, bindings, what);
  let next = 0;
  for (const [gi, g] of pool.groups.entries()) {
    assert.equal(g.firstSlot, next, `${what}: group ${gi} follows the previous one`);
    assert.ok(g.pools.length >= 1 && g.pools.length <= bindings, `${what}: group ${gi}'s pools`);
    for (const [i, p] of g.pools.entries()) {
      // the kernels find slot s in pool (s - group.firstSlot) / slotsPerPool
      assert.equal(p.firstSlot, g.firstSlot + i * perPool, `${what}: group ${gi} pool ${i}`);
      const last = i === g.pools.length - 1;
      assert.ok(last ? p.slots <= perPool && p.slots >= 1 : p.slots === perPool, what);
      assert.equal(p.buffer!.size, p.slots * pool.slotBytes, what);
    }
    assert.equal(g.pools.reduce((n, p) => n + p.slots, 0), g.slots, what);
    next += g.slots;
  }
  assert.equal(next, total, `${what}: every slot in a group`);
  assert.deepEqual(pool.pools, pool.groups.flatMap((g) => g.pools), `${what}: pools in order`);
  // domains: consecutive layers, consecutive slots, each its own run of groups split evenly
  assert.deepEqual(pool.domains.flatMap((d) => d.layers), [...Array(L).keys()], what);
  next = 0;
  for (const [di, d] of pool.domains.entries()) {
    assert.equal(d.firstSlot, next, `${what}: domain ${di}`);
    const groups = pool.layerGroups(d.layers[0]);
    for (const l of d.layers) {
      assert.equal(pool.domainOf(l), di, what);
      assert.deepEqual(pool.layerGroups(l), groups, `${what}: layer ${l} dispatches its domain's`);
    }
    assert.equal(groups[0].firstSlot, d.firstSlot, what);
    assert.equal(groups.reduce((n, g) => n + g.slots, 0), d.slots, what);
    const sizes = groups.map((g) => g.slots);
    assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `${what}: even split ${sizes}`);
    assert.deepEqual(sizes, [...sizes].sort((a, b) => b - a), `${what}: first groups get extra`);
    next += d.slots;
  }
  if (pool.affinity) {
    assert.ok(affinity, what);
    for (const d of pool.domains) {
      // every layer gets its fair share: all of its experts when every expert fits
      assert.equal(d.slots, d.layers.reduce((n, l) => n + share(total, L, l), 0), what);
      assert.ok(d.slots >= pool.config.topK, what);
      const groups = pool.layerGroups(d.layers[0]).length;
      assert.equal(groups, Math.max(1, Math.ceil(d.slots / (bindings * perPool))), what);
      assert.ok(groups === 1 || d.layers.length === 1, `${what}: a spread layer owns its groups`);
    }
  } else {
    assert.equal(pool.domains.length, 1, what);
    assert.equal(pool.groups.length, Math.ceil(Math.ceil(total / perPool) / bindings), what);
  }
}

Deno.test("ExpertPool keeps groups of at most poolBindings contiguous pool buffers, each layer's share in its own", async () => {
  const gpu = await openGpu();
  try {
    const config = configOf(4, 64, 2);
    for (const total of [2, 7, 12, 40, 97, 256]) {
      for (const perPool of [1, 3, 8]) {
        for (const bindings of [1, 2, 5]) {
          for (const affinity of [true, false]) {
            const pool = poolOf(gpu.device, config, total, perPool, bindings, { affinity });
            checkStructure(pool, total, perPool, bindings, affinity);
            pool.destroy();
          }
        }
      }
    }
    // 40 slots, 3 per pool, 2 pools a group: 10 a layer, each over 2 groups of 5
    const pool = poolOf(gpu.device, config, 40, 3, 2);
    assert.equal(pool.affinity, true);
    assert.deepEqual(shape(pool), Array(8).fill([3, 2]));
    // without affinity: 14 pools' worth in as few groups (7), 40 = 5 * 6 + 2 * 5
    const flat = poolOf(gpu.device, config, 40, 3, 2, { affinity: false });
    assert.deepEqual(shape(flat), [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 2], [3, 2]]);
    pool.destroy();
    flat.destroy();
    // the device's own limits: one group, as many bindings as the kernels leave for pools
    const whole = new ExpertPool(gpu.device, config, uniformLayouts(config, "BF16", "BF16"), 40);
    assert.equal(
      whole.poolBindings,
      Math.max(1, gpu.device.limits.maxStorageBuffersPerShaderStage - EXPERT_FIXED_BINDINGS),
    );
    assert.deepEqual(shape(whole), [[40]]);
    assert.equal(whole.affinity, false, "one group: nothing to keep apart");
    whole.destroy();
    assert.throws(() => poolOf(gpu.device, config, 0, 3, 2), ExpertPoolError);
    assert.throws(() => poolOf(gpu.device, config, 8, 3, 0), ExpertPoolError);
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("layer affinity with every expert resident: each layer's domain holds all its experts", async () => {
  const gpu = await openGpu();
  try {
    // 3 layers of 16 experts, 48 slots in pools of 3, 2 pools a group: 16 per layer
    const E = 16;
    const pool = poolOf(gpu.device, configOf(3, E, 4), 48, 3, 2);
    assert.equal(pool.affinity, true);
    assert.deepEqual(pool.domains.map((d) => d.slots), [E, E, E]);
    const cache = new ExpertCache(pool, new FakeExperts(pool), new LruPolicy<number>());
    const none = new Set<number>();
    for (let key = 0; key < 3 * E; key++) assert.ok(cache.load(key, 0, none));
    assert.equal(cache.metrics.evictions, 0, "loading every expert evicts none");
    assert.equal(cache.residentCount, 3 * E);
    await cache.settle();
    pool.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("layer affinity with fewer groups than layers: consecutive layers share one group", async () => {
  const gpu = await openGpu();
  try {
    // 8 layers of 2 slots each, groups of up to 3 pools of 2: 3 layers a group
    const pool = poolOf(gpu.device, configOf(8, 16, 2), 16, 2, 3);
    assert.equal(pool.affinity, true);
    assert.deepEqual(shape(pool), [[2, 2, 2], [2, 2, 2], [2, 2]]);
    const want = [0, 0, 0, 1, 1, 1, 2, 2];
    for (let l = 0; l < 8; l++) {
      assert.deepEqual(range(pool, l), [want[l], want[l] + 1], `layer ${l}`);
      assert.equal(pool.domainOf(l), want[l]);
    }
    assert.deepEqual(pool.domains, [
      { layers: [0, 1, 2], firstSlot: 0, slots: 6 },
      { layers: [3, 4, 5], firstSlot: 6, slots: 6 },
      { layers: [6, 7], firstSlot: 12, slots: 4 },
    ]);
    pool.destroy();
    // shares 3, 2, 3, 2 in groups of 3 one-slot pools: a pair never fits one, each layer its own
    const own = poolOf(gpu.device, configOf(4, 16, 2), 10, 1, 3);
    assert.deepEqual(shape(own), [[1, 1, 1], [1, 1], [1, 1, 1], [1, 1]]);
    for (let l = 0; l < 4; l++) assert.deepEqual(range(own, l), [l, l + 1]);
    assert.deepEqual(own.domains.map((d) => [d.layers, d.firstSlot, d.slots]), [
      [[0], 0, 3],
      [[1], 3, 2],
      [[2], 5, 3],
      [[3], 8, 2],
    ]);
    own.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("layer affinity with more groups than layers: each layer owns a run of groups", async () => {
  const gpu = await openGpu();
  try {
    // shares 17, 17, 16 in groups of at most 2 pools of 4: 3, 3 and 2 groups
    const pool = poolOf(gpu.device, configOf(3, 64, 2), 50, 4, 2);
    assert.equal(pool.affinity, true);
    assert.deepEqual(shape(pool), [
      [4, 2],
      [4, 2],
      [4, 1],
      [4, 2],
      [4, 2],
      [4, 1],
      [4, 4],
      [4, 4],
    ]);
    assert.deepEqual([0, 1, 2].map((l) => range(pool, l)), [[0, 3], [3, 6], [6, 8]]);
    assert.deepEqual(pool.domains, [
      { layers: [0], firstSlot: 0, slots: 17 },
      { layers: [1], firstSlot: 17, slots: 17 },
      { layers: [2], firstSlot: 34, slots: 16 },
    ]);
    for (let l = 0; l < 3; l++) assert.equal(pool.domainOf(l), l);
    pool.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("layer affinity is off when asked, or when a domain could not hold one layer's top-k", async () => {
  const gpu = await openGpu();
  try {
    const every = (pool: ExpertPool, total: number) => {
      assert.equal(pool.affinity, false);
      assert.equal(pool.domains.length, 1);
      assert.deepEqual(pool.domains[0], { layers: [0, 1, 2, 3], firstSlot: 0, slots: total });
      for (let l = 0; l < 4; l++) {
        assert.deepEqual(pool.layerGroups(l), pool.groups, `layer ${l} dispatches every group`);
        assert.equal(pool.domainOf(l), 0);
      }
    };
    const config = configOf(4, 16, 4);
    const asked = poolOf(gpu.device, config, 40, 3, 2, { affinity: false });
    every(asked, 40);
    assert.equal(asked.groups.length, 7, "as few groups as the bindings allow");
    asked.destroy();
    // 12 one-slot pools over 4 layers: 3 slots a layer, below top-4
    const small = poolOf(gpu.device, config, 12, 1, 1);
    every(small, 12);
    assert.equal(small.groups.length, 12);
    small.destroy();
    // 16: exactly top-4 a layer
    const enough = poolOf(gpu.device, config, 16, 1, 1);
    assert.equal(enough.affinity, true);
    assert.deepEqual(enough.domains.map((d) => d.slots), [4, 4, 4, 4]);
    enough.destroy();
    // shares 1, 1, 1, 0 in one-slot groups: below top-2 even with layers 2 and 3 together
    const shared = poolOf(gpu.device, configOf(4, 16, 2), 3, 1, 1);
    every(shared, 3);
    shared.destroy();
  } finally {
    gpu.device.destroy();
  }
});

/** Records of the right length for each layer, with bytes that tell experts apart. */
class FakeExperts implements ExpertSource {
  constructor(private pool: ExpertPool) {}
  record(layer: number, expert: number): Uint8Array {
    const key = layer * this.pool.config.numExperts + expert;
    const bytes = new Uint8Array(this.pool.layouts[layer].recordBytes);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (key * 31 + i * 7 + (i >> 8)) & 255;
    return bytes;
  }
  read(layer: number, expert: number) {
    return { bytes: this.record(layer, expert), source: null, ms: 0 };
  }
}

/** Slots of layer l's resident experts, from the slot table. */
function slotsOf(cache: ExpertCache, l: number): number[] {
  return [...cache.residentIn(l)].map((k) => cache.pool.table[k]);
}

Deno.test("ExpertCache loads and evicts a layer's experts only within its domain", async () => {
  const gpu = await openGpu();
  try {
    // 4 layers, 4 groups of 3 slots: each layer its own
    const E = 8;
    const pool = poolOf(gpu.device, configOf(4, E, 2), 12, 3, 1);
    const cache = new ExpertCache(pool, new FakeExperts(pool), new LruPolicy<number>());
    const none = new Set<number>();
    assert.equal(cache.capacity, 12);
    assert.equal(cache.minCapacity(), 3);
    for (let l = 0; l < 4; l++) {
      assert.equal(cache.capacityOf(l), 3);
      assert.deepEqual(cache.domainLayers(l), [l]);
    }
    let now = 0;
    for (const e of [0, 1, 2]) assert.ok(cache.load(0 * E + e, now++, none));
    for (const e of [0, 1, 2]) assert.ok(cache.load(1 * E + e, now++, none));
    assert.deepEqual(slotsOf(cache, 0), [0, 1, 2], "lowest free slot of the domain first");
    assert.deepEqual(slotsOf(cache, 1), [3, 4, 5]);
    assert.equal(cache.freeCount, 6);
    assert.ok(!cache.isFull);
    // layer 1's domain is full: its least recently used expert goes, not layer 0's older ones,
    // even though other domains have free slots
    assert.ok(cache.load(1 * E + 3, now++, none));
    assert.equal(cache.metrics.evictions, 1);
    assert.ok(!cache.isResident(1 * E + 0));
    assert.equal(pool.table[1 * E + 3], 3, "the evicted expert's slot");
    assert.deepEqual([...cache.residentIn(0)], [0, 1, 2]);
    assert.equal(cache.freeCount, 6);
    // every slot of layer 1's domain protected: no room, whatever is free elsewhere
    const table = pool.table.slice();
    assert.equal(cache.load(1 * E + 4, now++, new Set(cache.residentIn(1))), false);
    assert.deepEqual(pool.table, table, "nothing changed");
    for (let l = 2; l < 4; l++) {
      for (let e = 0; e < 5; e++) assert.ok(cache.load(l * E + e, now++, none));
    }
    assert.ok(cache.isFull);
    for (let l = 0; l < 4; l++) {
      const d = pool.domains[pool.domainOf(l)];
      for (const s of slotsOf(cache, l)) {
        assert.ok(s >= d.firstSlot && s < d.firstSlot + d.slots, `layer ${l} slot ${s}`);
      }
      assert.equal(cache.residentIn(l).size, 3);
    }
    await cache.settle();
    pool.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("ExpertCache: layers sharing a group evict each other, never another domain's experts", async () => {
  const gpu = await openGpu();
  try {
    // 4 layers, 2 groups of 3 slots: layers 0 and 1 share slots [0, 3), 2 and 3 share [3, 6)
    const E = 8;
    const pool = poolOf(gpu.device, configOf(4, E, 2), 6, 3, 1);
    const cache = new ExpertCache(pool, new FakeExperts(pool), new LruPolicy<number>());
    const none = new Set<number>();
    assert.deepEqual(cache.domainLayers(1), [0, 1]);
    assert.equal(cache.capacityOf(1), 3);
    assert.ok(cache.load(2 * E + 0, 0, none)); // the oldest expert of all, in the other domain
    assert.ok(cache.load(0 * E + 0, 1, none));
    assert.equal(pool.table[2 * E + 0], 3, "the other domain's first slot");
    const slot = pool.table[0 * E + 0];
    assert.equal(slot, 0);
    assert.ok(cache.load(1 * E + 0, 2, none));
    assert.ok(cache.load(1 * E + 1, 3, none));
    assert.ok(cache.load(1 * E + 2, 4, none));
    assert.ok(!cache.isResident(0 * E + 0), "layer 0 shares layer 1's slots");
    assert.ok(cache.isResident(2 * E + 0), "layer 2 does not");
    assert.equal(pool.table[1 * E + 2], slot, "layer 0's expert's slot");
    assert.equal(cache.freeCount, 2);
    await cache.settle();
    pool.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("ExpertScheduler counts shares, kept experts and prefill groups in the layer's domain", async () => {
  const gpu = await openGpu();
  try {
    // 3 layers of 4 slots, groups of up to 2 pools of 4: layers 0 and 1 share [0, 8), 2 has
    // [8, 12)
    const E = 8;
    const config = configOf(3, E, 2);
    const pool = poolOf(gpu.device, config, 12, 4, 2);
    assert.deepEqual(pool.domains.map((d) => d.layers), [[0, 1], [2]]);
    const cache = new ExpertCache(pool, new FakeExperts(pool), new LruPolicy<number>());
    const stats = emptyStepStats();
    const res = new ExpertScheduler(config, cache, stats, {
      prefetch: false,
      allResident: false,
      perLayerRouting: false,
      loadCap: true,
    }, () => undefined);
    res.masking = true;
    assert.deepEqual([0, 1, 2].map((l) => res.layerQuota(l)), [4, 4, 4]);
    const none = new Set<number>();
    for (let e = 0; e < 5; e++) assert.ok(cache.load(1 * E + e, e, none));
    for (let e = 0; e < 3; e++) assert.ok(cache.load(2 * E + e, 5 + e, none));
    // layer 0 keeps layer 1's first 4 (its share), never layer 2's: those are not in its slots
    assert.deepEqual(res.lastOfOtherLayers(0, 1), [8, 9, 10, 11]);
    assert.deepEqual(res.lastOfOtherLayers(0, 5), [], "4 kept + 5 more exceed the domain's 8");
    assert.deepEqual(res.lastOfOtherLayers(2, 1), []);
    // prefill groups: the domain's slots less what the other layers of the domain keep
    const all = Uint32Array.from({ length: E }, (_, e) => e);
    assert.deepEqual(res.prefillGroups(0, all).map((g) => g.length), [4, 4]);
    const groups2 = res.prefillGroups(2, all);
    assert.deepEqual(groups2.map((g) => g.length), [4, 4]);
    assert.ok(groups2[0].slice(0, 3).every((k) => cache.isResident(k)), "resident ones first");
    // layer 1 holds its share (5 >= 4): its flags come from masked picks; layer 2 (3 < 4) loads
    const missed = new Uint32Array(3 * E);
    missed[1 * E + 5] = 1;
    missed[2 * E + 6] = 1;
    assert.equal(res.firstMissedLayer(missed, 0), 2);
    res.masking = false;
    assert.equal(res.firstMissedLayer(missed, 0), 1);
    // passResult: a miss is reported and counts nothing; a clean pass counts its layers' hits
    // from `counted` on; no flags kept (null) is a clean pass
    const routing = new Uint32Array(3 * 2); // [L][T*K], T = 1, K = 2: experts 0, 1 each layer
    for (let l = 0; l < 3; l++) routing.set([0, 1], l * 2);
    const hits = cache.metrics.hits;
    assert.equal(res.passResult(routing, missed, 1, 0, 0, 1), 1);
    assert.equal(cache.metrics.hits, hits);
    assert.equal(res.passResult(routing, new Uint32Array(3 * E), 1, 1, 1, 1), -1);
    const resident = (l: number) => [0, 1].filter((e) => cache.isResident(l * E + e)).length;
    assert.equal(cache.metrics.hits, hits + resident(1) + resident(2));
    assert.equal(res.passResult(routing, null, 1, 2, 2, 1), -1);
    assert.equal(cache.metrics.hits, hits + resident(1) + 2 * resident(2));
    // the plan: prompts layer by layer under a budget; lanes as the smallest domain allows
    assert.equal(res.layerwise(1), false);
    assert.equal(res.layerwise(2), true);
    assert.equal(res.maxLanes(64), Math.floor(cache.minCapacity() / 2));
    const resident2 = new ExpertScheduler(config, cache, stats, {
      prefetch: false,
      allResident: true,
      perLayerRouting: false,
      loadCap: true,
    }, () => undefined);
    assert.equal(resident2.layerwise(64), false);
    assert.equal(resident2.maxLanes(64), 64);
    await cache.settle();
    pool.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("ExpertCache uploads land in the pool buffer holding the slot, at its offset", async () => {
  const gpu = await openGpu();
  try {
    // 2 layers, 2 groups of 2 pools of 2 slots: layer 1's experts in pools 2 and 3
    const E = 8;
    const pool = poolOf(gpu.device, configOf(2, E, 2), 8, 2, 2);
    assert.deepEqual(shape(pool), [[2, 2], [2, 2]]);
    const source = new FakeExperts(pool);
    const cache = new ExpertCache(pool, source, new LruPolicy<number>());
    const none = new Set<number>();
    const experts = [5, 2, 7, 0];
    for (const [i, e] of experts.entries()) assert.ok(cache.load(1 * E + e, i, none));
    assert.ok(cache.load(0 * E + 3, 4, none));
    await cache.settle();
    assert.deepEqual(experts.map((e) => pool.table[1 * E + e]), [4, 5, 6, 7]);
    assert.equal(pool.table[0 * E + 3], 0);
    for (const [l, e] of [...experts.map((e) => [1, e]), [0, 3]]) {
      const slot = pool.table[l * E + e];
      const p = pool.pools.find((p) => slot >= p.firstSlot && slot < p.firstSlot + p.slots)!;
      assert.equal(pool.pools.indexOf(p), Math.floor(slot / 2));
      const got = await readStorage(
        gpu.device,
        p.buffer!,
        (slot - p.firstSlot) * pool.slotBytes,
        pool.slotBytes,
      );
      const want = source.record(l, e);
      assert.deepEqual(got.subarray(0, want.length), want, `expert ${e} of layer ${l}`);
    }
    pool.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("fittingExpertSlots() probes pools made with the model's options", async () => {
  const gpu = await openGpu();
  try {
    const config = configOf(2, 8, 2);
    const layouts = uniformLayouts(config, "BF16", "BF16");
    const opts = { bindingLimit: layouts[0].slotBytes, poolBindings: 1 };
    assert.equal(await fittingExpertSlots(gpu.device, config, layouts, opts), 16);
    // a pool the options make impossible (no slot fits the binding limit) is refused
    await assert.rejects(
      fittingExpertSlots(gpu.device, config, layouts, { bindingLimit: 1 }),
      ExpertPoolError,
    );
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("writeTextureBytes() puts byte ranges at their words of a weight texture, across rows", async () => {
  const gpu = await openGpu();
  const W = WEIGHT_TEXTURE_WIDTH, rows = 4, bytes = W * rows * 16;
  const texture = gpu.device.createTexture({
    size: [W, rows],
    format: "rgba32uint",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST | GPUTextureUsage.COPY_SRC,
  });
  const want = new Uint8Array(bytes);
  const src = new Uint8Array(3 * W * 16);
  for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 255;
  // [dstOffset, srcOffset, size] in 16-byte words: inside a row, across one boundary, a whole
  // row from its start, from mid-row across two boundaries to mid-row
  const writes = [[5, 1, 10], [W - 3, 20, 7], [2 * W, 0, W], [W + 100, 40, 2 * W + 50]];
  for (const [d, s, n] of writes) {
    writeTextureBytes(gpu.device, texture, d * 16, src.subarray(16), s * 16, n * 16);
    want.set(src.subarray(16 + s * 16, 16 + (s + n) * 16), d * 16);
  }
  const read = gpu.device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = gpu.device.createCommandEncoder();
  enc.copyTextureToBuffer({ texture }, { buffer: read, bytesPerRow: W * 16 }, [W, rows]);
  gpu.device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const got = new Uint8Array(read.getMappedRange().slice(0));
  read.unmap();
  assert.deepEqual(got, want);
  assert.throws(() => writeTextureBytes(gpu.device, texture, 8, src, 0, 16), RangeError);
  read.destroy();
  texture.destroy();
});
