import assert from "node:assert/strict";
import {
  LrfuPolicy,
  LruPolicy,
  policyByName,
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
