import assert from "node:assert/strict";
import { mulberry32 } from "../weights/fixture.ts";
import {
  type Access,
  type EvictionPolicy,
  LrfuPolicy,
  LruPolicy,
  ModelAwarePolicy,
  policyByName,
  policyFactory,
  PolicyNeedsModelError,
  sequentialTrace,
  simulate,
  simulateOptimal,
  UnknownKeyError,
  UnknownPolicyError,
} from "../src/experts/policy.ts";

const ABACBA = sequentialTrace(["A", "B", "A", "C", "B", "A"]);

Deno.test("LruPolicy.victim() picks the least recently touched candidate", () => {
  const p = new LruPolicy<string>();
  p.insert("A", 0);
  p.insert("B", 1);
  p.insert("C", 2);
  p.touch("A", 3);
  assert.equal(p.victim(["A", "B", "C"], 4), "B");
  assert.equal(p.victim(["A", "C"], 4), "C"); // B pinned by the caller: next oldest
  p.remove("B");
  assert.throws(() => p.victim(["B"], 4), UnknownKeyError);
  assert.equal(p.victim([], 4), undefined);
});

Deno.test("simulate() with LRU on A B A C B A, capacity 2: 1 hit, 5 misses, 3 evictions", () => {
  assert.deepEqual(simulate(ABACBA, 2, new LruPolicy()), { hits: 1, misses: 5, evictions: 3 });
});

Deno.test("simulate() with LRFU lambda 0 (LFU) on A B A C B A keeps A: 2 hits, 2 evictions", () => {
  assert.deepEqual(simulate(ABACBA, 2, new LrfuPolicy(0)), { hits: 2, misses: 4, evictions: 2 });
});

Deno.test("simulateOptimal() on A B A C B A, capacity 2: 2 hits (Belady bound)", () => {
  assert.deepEqual(simulateOptimal(ABACBA, 2), { hits: 2, misses: 4, evictions: 2 });
});

Deno.test("simulateOptimal() counting from access 3 of A B A C B A: C misses, B hits, A misses", () => {
  // the cache ran through A B A (holding A, B); C evicts A (used last), so A misses again
  assert.deepEqual(simulateOptimal(ABACBA, 2, 3), { hits: 1, misses: 2, evictions: 2 });
});

Deno.test("LrfuPolicy.score() is log2 of the decayed access sum", () => {
  const p = new LrfuPolicy<string>(0.5);
  p.insert("A", 0);
  p.touch("A", 1);
  p.touch("A", 2);
  p.insert("B", 3);
  // A: 2^-2 + 2^-1.5 + 2^-1 at now = 4; B: 2^-0.5.
  assert.ok(Math.abs(p.score("A", 4) - Math.log2(0.25 + 2 ** -1.5 + 0.5)) < 1e-12);
  assert.ok(Math.abs(p.score("B", 4) - -0.5) < 1e-12);
  assert.equal(p.victim(["A", "B"], 4), "B"); // frequent A outweighs recent B (LRU would drop A)
});

Deno.test("LrfuPolicy.victim() with a large lambda drops the stale frequent key like LRU", () => {
  const p = new LrfuPolicy<string>(2);
  p.insert("A", 0);
  p.touch("A", 1);
  p.touch("A", 2);
  p.insert("B", 3);
  // A: 2^-8 + 2^-6 + 2^-4 = 0.082 < B: 2^-2 = 0.25.
  assert.equal(p.victim(["A", "B"], 4), "A");
});

Deno.test("LrfuPolicy.score() stays finite after a long idle gap", () => {
  const p = new LrfuPolicy<number>(0.1);
  p.insert(1, 0);
  p.touch(1, 100_000);
  assert.ok(Math.abs(p.score(1, 100_000)) < 1e-12); // 1 + 2^-10000 = 1 in doubles
  p.insert(2, 0);
  assert.equal(p.score(2, 100_000), -10_000);
  assert.equal(p.victim([1, 2], 100_000), 2);
});

Deno.test("simulate() on a hot pair plus a scan: LRFU keeps the hot experts, LRU does not", () => {
  // Warm-up 0 1 0 1 0 1, then 10 rounds of 0 1 s s with two fresh scan keys per round.
  const keys = [0, 1, 0, 1, 0, 1];
  for (let r = 0; r < 10; r++) keys.push(0, 1, 100 + 2 * r, 101 + 2 * r);
  const trace = sequentialTrace(keys);
  // LRU, capacity 3: the scan pushes the hot pair out from round 2 on: 4 + 2 hits.
  assert.deepEqual(simulate(trace, 3, new LruPolicy<number>()), {
    hits: 6,
    misses: 40,
    evictions: 37,
  });
  // LRFU: each scan key evicts the previous one; the hot pair always hits: 4 + 2 * 10 hits.
  const best = { hits: 24, misses: 22, evictions: 19 };
  assert.deepEqual(simulate(trace, 3, new LrfuPolicy<number>(0.1)), best);
  assert.deepEqual(simulateOptimal(trace, 3), best);
});

Deno.test("simulate() refuses a capacity below 1", () => {
  assert.throws(() => simulate(ABACBA, 0, new LruPolicy()), RangeError);
});

Deno.test("policyByName() builds lru, lrfu and lrfu:LAMBDA and refuses other names", () => {
  assert.equal(policyByName("lru").name, "lru");
  assert.equal(policyByName("lrfu").name, "lrfu(0.1)");
  assert.equal(policyByName("lrfu:0.05").name, "lrfu(0.05)");
  assert.throws(() => policyByName("fifo"), UnknownPolicyError);
  assert.throws(() => policyByName("lrfu:-1"), UnknownPolicyError);
});

Deno.test("simulate() never evicts a key used at the current now while another can go", () => {
  // LFU alone would evict B (1 access) for C, though B is needed in the same step as C.
  const trace = [
    { key: "A", now: 0 },
    { key: "A", now: 0 },
    { key: "B", now: 1 },
    { key: "C", now: 1 },
    { key: "B", now: 2 },
  ];
  assert.deepEqual(simulate(trace, 2, new LrfuPolicy(0)), { hits: 2, misses: 3, evictions: 1 });
  const lfu = new LrfuPolicy<string>(0);
  lfu.insert("A", 0);
  lfu.touch("A", 0);
  lfu.insert("B", 1);
  assert.equal(lfu.victim(["A", "B"], 1), "B"); // what an unpinned choice would have been
});

Deno.test("simulate() protects every key of the step, also those accessed after the miss", () => {
  // A@0 B@1, then the step at 2 routes C and A: C's load must not evict A (used later in the
  // same step), so B goes. Pinning only the keys accessed so far would evict A, then miss it.
  const trace = [
    { key: "A", now: 0 },
    { key: "B", now: 1 },
    { key: "C", now: 2 },
    { key: "A", now: 2 },
  ];
  assert.deepEqual(simulate(trace, 2, new LruPolicy()), { hits: 1, misses: 3, evictions: 1 });
});

Deno.test("simulate() calls onStep once after each step with its index and now", () => {
  const seen: [number, number][] = [];
  const trace = [{ key: 1, now: 0 }, { key: 2, now: 0 }, { key: 1, now: 3 }];
  simulate(trace, 2, new LruPolicy<number>(), (step, now) => seen.push([step, now]));
  assert.deepEqual(seen, [[0, 0], [1, 3]]);
});

// ModelAwarePolicy. Unless said otherwise: no aging (halfLife Infinity) and no quota, so the
// numbers below are plain counts. `now` counts tokens: with L layers, layer l of token t is
// visited at t + (l + 1) / L (ExpertScheduler's clock); half a layer step is 0.5 / L.
const ONE_LAYER = { numLayers: 1, numExperts: 4 };
const PLAIN = { halfLife: Infinity, quotaWeight: 0 };

function close(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) < 1e-12, `${what}: ${actual} != ${expected}`);
}

/** One layer, 4 experts; visits at tokens 1..4 use {0,2} {0,2} {0,2} {1,2}. */
function frequentThenNew(): ModelAwarePolicy {
  const p = new ModelAwarePolicy(ONE_LAYER, PLAIN);
  p.insert(0, 1);
  p.insert(2, 1);
  for (const now of [2, 3]) {
    p.touch(0, now);
    p.touch(2, now);
  }
  p.insert(1, 4);
  p.touch(2, 4);
  return p;
}

Deno.test("ModelAwarePolicy: a frequent key skipped once outlives a key used once just now", () => {
  const p = frequentThenNew();
  p.touch(2, 5); // visit 5 starts (closing visit 4); 2 belongs to it, 0 and 1 do not
  // 4 visits closed, 8 uses: mean rate 8 / (4 * 4) = 0.5 per key and visit (the prior).
  // Key 0: used in 3 of 4 visits: base (3 + 0.5) / (4 + 1) = 0.7; never seen after a visit
  // without it: q = (0 + 0.7) / (0 + 1) = 0.7; not in visit 5: p1 = q. Next use expected in
  // 1 (its layer's next visit is a token away) + 0.3 / 0.7 tokens.
  const a = p.useChances(0);
  close(a.q, 0.7, "q(0)");
  close(a.p1, 0.7, "p1(0)");
  close(p.expectedNextUse(0, 5), 1 + 0.3 / 0.7, "next use of 0");
  // Key 1: used once in 4 visits: base (1 + 0.5) / 5 = 0.3; after 3 visits without it, one
  // used it: q = (1 + 0.3) / (3 + 1) = 0.325; next use in 1 + 0.675 / 0.325 tokens.
  const b = p.useChances(1);
  close(b.q, 0.325, "q(1)");
  close(b.p1, 0.325, "p1(1)");
  close(p.expectedNextUse(1, 5), 1 + 0.675 / 0.325, "next use of 1");
  assert.equal(p.victim([0, 1], 5), 1); // LRU would drop 0 (last used at 3, key 1 at 4)
});

Deno.test("ModelAwarePolicy replays the frequent-vs-new trace with one miss fewer than LRU", () => {
  // tokens 1..6 use {0,2} {0,2} {0,2} {1,2} {2,3} {0,2}; capacity 3.
  // LRU: at 5, 3 evicts 0 (older than 1); at 6, 0 evicts 1: 7 hits, 5 misses, 2 evictions.
  // Model-aware: at 5, 3 evicts 1 (the test above); at 6 both hit: 8 hits, as Belady.
  const keys = [[0, 2], [0, 2], [0, 2], [1, 2], [2, 3], [0, 2]];
  const trace: Access<number>[] = keys.flatMap((ks, t) => ks.map((key) => ({ key, now: t + 1 })));
  assert.deepEqual(simulate(trace, 3, new LruPolicy<number>()), {
    hits: 7,
    misses: 5,
    evictions: 2,
  });
  const best = { hits: 8, misses: 4, evictions: 1 };
  assert.deepEqual(simulate(trace, 3, new ModelAwarePolicy(ONE_LAYER, PLAIN)), best);
  assert.deepEqual(simulateOptimal(trace, 3), best);
});

Deno.test("ModelAwarePolicy: aging lets recent use outweigh old popularity", () => {
  // Key 0 used in visits 1..3, key 1 in visit 4 only, victim at visit 5 (as above). With a
  // half-life of 0.5 tokens (a quarter per visit) old visits hardly count: decayed over the 4
  // closed visits, key 0's base rate falls below key 1's and 0 goes.
  const p = new ModelAwarePolicy(ONE_LAYER, { halfLife: 0.5, quotaWeight: 0 });
  p.insert(0, 1);
  p.insert(2, 1);
  for (const now of [2, 3]) {
    p.touch(0, now);
    p.touch(2, now);
  }
  p.insert(1, 4);
  p.touch(2, 4);
  p.touch(2, 5);
  assert.ok(p.useChances(0).q < p.useChances(1).q);
  assert.equal(p.victim([0, 1], 5), 0);
});

Deno.test("ModelAwarePolicy: a layer above its share gives up a key before one below it", () => {
  // 2 layers of 4 experts: layer 0 visited at 0.5, layer 1 at 1.0. Layer 0 holds 0, 1, 2 and
  // layer 1 holds 4: share 4 / 2 = 2 each.
  const setup = (quotaWeight: number) => {
    const p = new ModelAwarePolicy({ numLayers: 2, numExperts: 4 }, {
      halfLife: Infinity,
      quotaWeight,
    });
    for (const k of [0, 1, 2]) p.insert(k, 0.5);
    p.insert(4, 1);
    return p;
  };
  // Nothing learnt yet: every rate is the prior 1/4, so a next use is expected 0.75 / 0.25 = 3
  // tokens after its layer's next visit: key 1 (layer 0, next visit at 1.5) at 0.5 + 3, key 4
  // (layer 1, visited now, next at 2.0) at 1 + 3.
  const plain = setup(0);
  close(plain.score(1, 1), 3.5, "key 1 without quota");
  close(plain.score(4, 1), 4, "key 4 without quota");
  assert.equal(plain.victim([1, 4], 1), 4);
  // Quota weight 0.5: layer 0 holds 3 of a share of 2: x (1 + 0.5 * 1/2) = 4.375; layer 1
  // holds 1: x (1 - 0.5 * 1/2) = 3. Layer 0 gives up key 1.
  const quota = setup(0.5);
  assert.equal(quota.heldBy(0), 3);
  assert.equal(quota.heldBy(1), 1);
  close(quota.score(1, 1), 4.375, "key 1 with quota");
  close(quota.score(4, 1), 3, "key 4 with quota");
  assert.equal(quota.victim([1, 4], 1), 1);
  // removing a key updates the counts the share comes from
  quota.remove(0);
  assert.equal(quota.heldBy(0), 2);
});

Deno.test("ModelAwarePolicy: ties go to the first candidate", () => {
  const p = new ModelAwarePolicy(ONE_LAYER, PLAIN);
  for (const k of [0, 1, 2]) p.insert(k, 1);
  assert.equal(p.victim([1, 0, 2], 1), 1);
  assert.equal(p.victim([2, 1, 0], 1), 2);
});

Deno.test("ModelAwarePolicy: predicted keys stay until their layer's next visit", () => {
  const p = new ModelAwarePolicy(ONE_LAYER, PLAIN);
  for (const k of [0, 1, 2]) p.insert(k, 1);
  p.predict([1, 3], 1); // 3 is not resident: that is fine
  assert.ok(p.isPredicted(1));
  assert.equal(p.victim([1, 0, 2], 1), 0); // 1 would win the tie
  assert.equal(p.victim([1], 1), 1); // only predicted candidates: the best of them
  p.touch(0, 2); // the layer's next visit starts: the prediction is spent, used or not
  assert.ok(!p.isPredicted(1));
  assert.equal(p.victim([1, 2], 2), 1);
});

Deno.test("ModelAwarePolicy: a prefetch before its layer's visit is not counted as a use", () => {
  // 2 layers of 4: token 1 visits layer 0 at 0.5 and layer 1 at 1.0 (uses key 4). At 1.5,
  // layer 0's miss prefetches key 5 of layer 1, half a token before layer 1 is due (2.0).
  const p = new ModelAwarePolicy({ numLayers: 2, numExperts: 4 }, PLAIN);
  p.insert(0, 0.5);
  p.insert(4, 1);
  p.touch(0, 1.5);
  p.insert(5, 1.5);
  p.touch(4, 2); // layer 1's visit: closes visit 1.0, which used only key 4
  // 1 visit, 1 use: mean 1/4. Key 5 never used: base (0 + 1/4) / (1 + 1) = 1/8; not in the
  // visit at 2.0: p1 = q = 1/8. Key 4: base (1 + 1/4) / 2 = 5/8, used at 2.0: p1 = 5/8.
  assert.deepEqual(p.useChances(5), { q: 0.125, p1: 0.125 });
  assert.deepEqual(p.useChances(4), { q: 0.625, p1: 0.625 });
  assert.equal(p.heldBy(1), 2); // resident all the same
  // a touch at the visit counts it like any use: once visit 2.0 ({4, 5}) closes at 3.0, key 5
  // has 1 use in 2 visits (layer: 3 uses, mean 3/8), seen once after a visit without it:
  // base (1 + 3/8) / (2 + 1), q = (1 + base) / (1 + 1)
  p.touch(5, 2);
  p.touch(4, 3);
  close(p.useChances(5).q, (1 + 1.375 / 3) / 2, "q(5)");
});

Deno.test("ModelAwarePolicy refuses keys outside the grid, unknown keys and bad options", () => {
  const p = new ModelAwarePolicy(ONE_LAYER);
  assert.throws(() => p.insert(4, 1), RangeError);
  assert.throws(() => p.insert(-1, 1), RangeError);
  assert.throws(() => p.insert(1.5, 1), RangeError);
  assert.throws(() => p.touch(0, 1), UnknownKeyError);
  assert.throws(() => p.victim([0], 1), UnknownKeyError);
  assert.equal(p.victim([], 1), undefined);
  assert.throws(() => new ModelAwarePolicy({ numLayers: 0, numExperts: 4 }), RangeError);
  assert.throws(() => new ModelAwarePolicy(ONE_LAYER, { halfLife: 0 }), RangeError);
  assert.throws(() => new ModelAwarePolicy(ONE_LAYER, { quotaWeight: -1 }), RangeError);
  assert.throws(() => new ModelAwarePolicy(ONE_LAYER, { prior: 0 }), RangeError);
});

/** Deterministic pseudo-random numbers in [0, 1). */
const rng = mulberry32;

Deno.test("ModelAwarePolicy never names a victim outside the candidates", () => {
  const L = 3, E = 8, K = 2;
  for (const seed of [1, 2, 3]) {
    const r = rng(seed);
    const trace: Access<number>[] = [];
    for (let t = 0; t < 200; t++) {
      for (let l = 0; l < L; l++) {
        const ks = new Set<number>();
        while (ks.size < K) ks.add(l * E + Math.floor(r() * r() * E)); // skewed, like routing
        for (const key of ks) trace.push({ key, now: t + (l + 1) / L });
      }
    }
    for (const capacity of [2, 5, 12]) {
      const inner = new ModelAwarePolicy({ numLayers: L, numExperts: E });
      let victims = 0;
      const checked: EvictionPolicy<number> = {
        name: inner.name,
        insert: (k, now) => inner.insert(k, now),
        touch: (k, now) => inner.touch(k, now),
        remove: (k) => inner.remove(k),
        victim(candidates, now) {
          const list = [...candidates];
          const v = inner.victim(list, now);
          assert.ok(v !== undefined && list.includes(v), `victim ${v} not in ${list}`);
          victims++;
          return v;
        },
      };
      // predictions of random keys, resident or not, some of them candidates
      const res = simulate(trace, capacity, checked, (_, now) => {
        inner.predict([Math.floor(r() * L * E), Math.floor(r() * L * E)], now);
      });
      assert.equal(res.evictions, victims);
      assert.equal(res.hits + res.misses, trace.length);
    }
  }
});

Deno.test("policyFactory() and policyByName() build model-aware policies from the grid", () => {
  const grid = { numLayers: 6, numExperts: 16 };
  const p = policyFactory("model")(grid);
  assert.ok(p instanceof ModelAwarePolicy);
  assert.equal(p.name, "model(64)");
  assert.equal(new ModelAwarePolicy(grid, PLAIN).name, "model(Infinity)");
  assert.equal(policyFactory("model:32")(grid).name, "model(32)");
  assert.equal(policyFactory("lrfu:0.05")(grid).name, "lrfu(0.05)");
  assert.equal(policyByName<number>("model", grid).name, "model(64)");
  assert.throws(() => policyByName("model"), PolicyNeedsModelError);
  assert.throws(() => policyFactory("model:0"), UnknownPolicyError);
  assert.throws(() => policyFactory("model:x"), UnknownPolicyError);
  assert.throws(() => policyFactory("models"), UnknownPolicyError);
});
