/**
 * The expert scheduler's decode-step decisions on hand-worked passes (src/gpu/expert_scheduler.ts),
 * against a cache that only keeps keys: what a miss loads, which guesses it loads along, and that
 * with loadCap (the default) a step never loads more experts than it routes, while the baseline
 * (every flagged expert loaded) does on the same passes.
 */
import assert from "node:assert/strict";
import { ExpertScheduler } from "../src/gpu/expert_scheduler.ts";
import type { ExpertCache } from "../src/gpu/expert_cache.ts";
import { emptyStepStats } from "../src/gpu/host.ts";
import type { ModelConfig } from "../src/types.ts";

/** 3 layers of 4 experts, top-2: key = layer * 4 + expert. */
const L = 3, E = 4, K = 2;
const CONFIG = { numLayers: L, numExperts: E, topK: K } as ModelConfig;

/** The parts of ExpertCache the scheduler uses: `capacity` slots (default every expert), loads
 * in order; a full cache evicts its newest unprotected key. */
class KeyCache {
  readonly resident = new Set<number>();
  readonly loaded: number[] = [];
  readonly evicted: number[] = [];
  metrics = { hits: 0, misses: 0 };
  get loads(): number {
    return this.loaded.length;
  }
  get isFull(): boolean {
    return false;
  }
  constructor(resident: number[], readonly capacity = L * E) {
    for (const k of resident) this.resident.add(k);
  }
  isResident(key: number): boolean {
    return this.resident.has(key);
  }
  load(key: number, _now: number, protect: Set<number>): boolean {
    if (this.resident.has(key)) return true;
    if (this.resident.size >= this.capacity) {
      const victim = [...this.resident].reverse().find((k) => !protect.has(k));
      if (victim === undefined) return false;
      this.resident.delete(victim);
      this.evicted.push(victim);
    }
    this.resident.add(key);
    this.loaded.push(key);
    return true;
  }
  touch(): void {}
  readAhead(): void {}
  capacityOf(): number {
    return L * E;
  }
  minCapacity(): number {
    return L * E;
  }
  domainLayers(): number[] {
    return [0, 1, 2];
  }
  residentIn(l: number): Set<number> {
    return new Set([...this.resident].filter((k) => Math.floor(k / E) === l));
  }
}

function scheduler(resident: number[], loadCap: boolean, capacity?: number) {
  const cache = new KeyCache(resident, capacity);
  const stats = emptyStepStats();
  const sched = new ExpertScheduler(
    CONFIG,
    cache as unknown as ExpertCache,
    stats,
    { prefetch: true, allResident: false, perLayerRouting: false, loadCap },
    () => undefined,
  );
  return { cache, stats, sched };
}

/** A pass's read-back: routing [L][K] (one token) as expert ids, and its miss flags [L*E]: each
 * routed expert that is absent. */
function pass(cache: KeyCache, routing: number[][]) {
  const r = new Uint32Array(routing.flat());
  const missed = new Uint32Array(L * E);
  routing.forEach((experts, l) => {
    for (const e of experts) if (!cache.isResident(l * E + e)) missed[l * E + e] = 1;
  });
  return { r, missed };
}

/**
 * Runs one decode step through passes whose routing is `final` at layers that ran on their exact
 * input and `approx` at the later layers of a pass (what they routed to on an approximate input),
 * as the model's decode loop does: rerun from the first missed layer until no layer misses.
 * `approxOf` may give each pass (0, 1, ...) its own approximate routing. Returns the passes' start
 * layers.
 */
function step(
  s: ReturnType<typeof scheduler>,
  final: number[][],
  approxOf: number[][] | ((pass: number) => number[][]),
): number[] {
  const starts: number[] = [];
  s.sched.startStep();
  let from = 0, counted = 0;
  for (;;) {
    const approx = typeof approxOf === "function" ? approxOf(starts.length) : approxOf;
    starts.push(from);
    // layers before the first miss of this pass (from `from` on) saw their exact input
    let exactTo = from;
    while (exactTo < L && final[exactTo].every((e) => s.cache.isResident(exactTo * E + e))) {
      exactTo++;
    }
    const routing = final.map((f, l) => (l <= exactTo ? f : approx[l]));
    const { r, missed } = pass(s.cache, routing);
    const l0 = s.sched.passResult(r, missed, 1, counted, from, 1);
    if (l0 < 0) return starts;
    s.sched.loadForMiss(r, missed, 1, counted, l0, from, 1);
    counted = l0 + 1;
    from = l0;
  }
}

Deno.test("a miss loads what its layer routed and, within the step's hits, the later layers' guesses", () => {
  // layer 0 hits both its experts (keys 0, 1); layer 1 misses (4, 5); the later layer's
  // approximate routing flags 10 and 11, and its final routing is 10 and 8
  const s = scheduler([0, 1], true);
  const starts = step(s, [[0, 1], [0, 1], [2, 0]], [[0, 1], [0, 1], [2, 3]]);
  assert.deepEqual(starts, [0, 1, 2]);
  // 4, 5 demanded; 2 hits allow both guesses (10 right, 11 wrong); then 8 demanded
  assert.deepEqual(s.cache.loaded, [4, 5, 10, 11, 8]);
  assert.equal(s.stats.prefetchUseful, 1);
  assert.equal(s.stats.stepRouted, 6);
  assert.equal(s.stats.stepsOverRouted, 0);
});

Deno.test("with loadCap a step with no hits loads no guess; the baseline loads every flagged expert and more than the step routes", () => {
  // nothing resident: layer 0 misses; the approximate pass flags 4, 5 and 8, 9; the final
  // routing is 6, 7 and 10, 11 (every guess wrong)
  const final = [[0, 1], [2, 3], [2, 3]], approx = [[0, 1], [0, 1], [0, 1]];
  const capped = scheduler([], true);
  step(capped, final, approx);
  assert.deepEqual(capped.cache.loaded, [0, 1, 6, 7, 10, 11]);
  assert.equal(capped.stats.stepRouted, 6);
  assert.equal(capped.stats.stepsOverRouted, 0);

  const baseline = scheduler([], false);
  step(baseline, final, approx);
  assert.deepEqual(baseline.cache.loaded, [0, 1, 4, 5, 8, 9, 6, 7, 10, 11]);
  assert.equal(baseline.stats.stepRouted, 6);
  assert.equal(baseline.stats.stepsOverRouted, 1);
});

Deno.test("with loadCap a guess proved right frees room for the next; wrong and unscored ones do not", () => {
  // one hit at layer 0 (key 0), key 1 missing: one guess allowed at a time
  const s = scheduler([0], true);
  // first pass: layer 0 misses 1; approx flags 5 (layer 1) and 10, 11 (layer 2)
  // second pass from 0: layer 1 final routes 4, 5 (5 was the guess: right; 4 missing)
  // third pass from 1: layer 2 final routes 10, 11
  step(s, [[0, 1], [0, 1], [2, 3]], [[0, 1], [1, 3], [2, 3]]);
  // 1 demanded; one guess (5, allowance 1 hit - 0 wrong - 0 pending); rerun: layer 1 misses 4:
  // 5 scored right (pending 0), so one more guess: 10; rerun: layer 2 misses 11
  assert.deepEqual(s.cache.loaded, [1, 5, 4, 10, 11]);
  assert.equal(s.stats.prefetchUseful, 2);
  assert.equal(s.stats.stepsOverRouted, 0);
  assert.ok(s.cache.loads <= s.stats.stepRouted);
});

Deno.test("a guess evicted before its layer used it counts as wrong, and the step still loads no more than it routes", () => {
  // 5 slots holding 0 (layer 0) and 4, 5 (layer 1): layer 0 hits 0 and misses 1; the first pass's
  // layer 1 is all resident and its layer 2 flags 10, 11: one hit allows one guess, 10. The
  // rerun's layer 1 misses 6, 7, whose loads evict 10 (the newest key not protected); the final
  // layer 2 routes 10 and 8, so 10 is loaded again.
  const s = scheduler([0, 4, 5], true, 5);
  const starts = step(
    s,
    [[0, 1], [2, 3], [2, 0]],
    (pass) => pass === 0 ? [[0, 1], [0, 1], [2, 3]] : [[0, 1], [2, 3], [0, 1]],
  );
  assert.deepEqual(starts, [0, 0, 1, 2]);
  assert.deepEqual(s.cache.loaded, [1, 10, 6, 7, 10, 8]);
  assert.ok(s.cache.evicted.includes(10));
  assert.equal(s.stats.prefetchUseful, 0, "the evicted guess served no use");
  assert.equal(s.stats.stepRouted, 6);
  assert.equal(s.stats.stepsOverRouted, 0);
});

Deno.test("extra guesses load after the flagged ones, within the same allowance, only for later layers and absent experts", () => {
  // three hits (0, 1 at layer 0; 4 at layer 1); layer 1 misses 5; the approximate pass flags 10
  // and 11 at layer 2; the extra guesses name 0 (an earlier layer), 4 (resident), 10 (flagged),
  // 9, 8 and 9 again: 10 and 11 are loaded first, then 9, and 8 is not (the three hits allow
  // three guesses)
  const s = scheduler([0, 1, 4], true);
  const asked: number[] = [];
  s.sched.extraGuesses = (l0) => {
    asked.push(l0);
    return [0, 4, 10, 9, 8, 9];
  };
  step(s, [[0, 1], [0, 1], [2, 1]], [[0, 1], [0, 1], [2, 3]]);
  assert.deepEqual(asked, [1]);
  assert.deepEqual(s.cache.loaded, [5, 10, 11, 9]);
  // layer 2's final routing used 10 and 9
  assert.equal(s.stats.prefetchUseful, 2);
  assert.equal(s.stats.stepsOverRouted, 0);
});
