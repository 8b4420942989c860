/**
 * bench/routing_stats.ts on hand-made routing traces, each with its expected numbers worked out
 * by hand in the comments.
 */
import assert from "node:assert/strict";
import {
  budgetSlots,
  cacheTrace,
  decodeRouting,
  encodeRouting,
  entropyBits,
  expertLoad,
  hitRate,
  independentReuse,
  loadSummary,
  oraclePredictor,
  reuse,
  RoutingShapeError,
  splitRows,
  tokenClock,
  traceSteps,
  uniformReuse,
} from "../bench/routing_stats.ts";

const u32 = (...ids: number[]) => new Uint32Array(ids);

function close(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= 1e-12, `${what}: ${actual} != ${expected}`);
}

Deno.test("expertLoad() counts routed slots per expert over every sequence of a layer", () => {
  // E 4, K 2: expert 0 takes 3 of 6 slots, experts 1..3 one each
  const load = expertLoad([u32(0, 1, 0, 2), u32(0, 3)], 4, 2);
  assert.deepEqual([...load], [0.5, 1 / 6, 1 / 6, 1 / 6]);
  assert.deepEqual([...expertLoad([], 3, 2)], [0, 0, 0]);
});

Deno.test("entropyBits() is the Shannon entropy in bits, zero terms left out", () => {
  assert.equal(entropyBits([0.25, 0.25, 0.25, 0.25]), 2);
  assert.equal(entropyBits([1, 0]), 0);
  // 0.5 * 1 + 3 * (1/6) * log2(6)
  close(entropyBits([0.5, 1 / 6, 1 / 6, 1 / 6]), 0.5 + 0.5 * Math.log2(6), "entropy");
});

Deno.test("loadSummary() gives entropy against log2(E) and the extreme loads", () => {
  const s = loadSummary([u32(0, 1, 0, 1)], 4, 2);
  assert.equal(s.entropyBits, 1);
  assert.equal(s.uniformBits, 2);
  assert.equal(s.maxLoad, 0.5);
  assert.equal(s.minLoad, 0);
});

Deno.test("reuse() counts next-token and within-horizon reuse over uses with full look-ahead", () => {
  // tokens {0,1} {0,2} {3,1} {0,1}, horizon 2: only tokens 0 and 1 have two tokens after them.
  // t0: 0 again at t1 (distance 1), 1 again at t2 (distance 2); t1: 0 again at t3 (distance 2),
  // 2 never. 4 uses: 1 at distance 1, 3 within 2. The second sequence (2 tokens) adds no use.
  const r = reuse([u32(0, 1, 0, 2, 3, 1, 0, 1), u32(0, 1, 0, 1)], 4, 2, 2);
  assert.deepEqual(r, { uses: 4, next: 0.25, withinHorizon: 0.75 });
  assert.throws(() => reuse([], 4, 2, 0), RangeError);
});

Deno.test("independentReuse() and uniformReuse() give the independent-token expectations", () => {
  // uniform top-2 of 4: next = 2/4, within 2 = 1 - (1/2)^2
  assert.deepEqual(uniformReuse(4, 2, 2), { uses: 0, next: 0.5, withinHorizon: 0.75 });
  // two experts always picked together: always reused
  assert.deepEqual(independentReuse([0.5, 0.5, 0, 0], 2, 2), {
    uses: 0,
    next: 1,
    withinHorizon: 1,
  });
  // K 1, q = (1/2, 1/4, 1/4, 0): next = 1/4 + 2/16 = 0.375;
  // within 2 = 1/2 (1 - 1/4) + 2 * 1/4 (1 - 9/16) = 0.375 + 0.21875
  const r = independentReuse([0.5, 0.25, 0.25, 0], 1, 2);
  close(r.next, 0.375, "next");
  close(r.withinHorizon, 0.59375, "within");
});

Deno.test("cacheTrace() runs sequences token by token, layer by layer, one now per visit", () => {
  // E 4, K 2, two layers; key = layer * 4 + expert; a repeated id in one visit counts once
  const a = [u32(0, 1, 1, 2), u32(3, 0, 3, 0)];
  const b = [u32(2, 3), u32(1, 1)];
  const trace = cacheTrace([a, b], 4, 2);
  assert.deepEqual(trace.map((x) => [x.key, x.now]), [
    [0, 0],
    [1, 0],
    [7, 1],
    [4, 1],
    [1, 2],
    [2, 2],
    [7, 3],
    [4, 3],
    [2, 4],
    [3, 4],
    [5, 5],
  ]);
  assert.throws(() => cacheTrace([[u32(0, 1), u32(0, 1, 2, 3)]], 4, 2), RoutingShapeError);
});

Deno.test("routing rows that do not fit E or K are refused", () => {
  assert.throws(() => expertLoad([u32(0, 4)], 4, 2), RoutingShapeError);
  assert.throws(() => expertLoad([u32(0, 1, 2)], 4, 2), RoutingShapeError);
});

Deno.test("hitRate() is hits over lookups, 0 for an empty replay", () => {
  assert.equal(hitRate({ hits: 3, misses: 1, evictions: 0 }), 0.75);
  assert.equal(hitRate({ hits: 0, misses: 0, evictions: 0 }), 0);
});

Deno.test("budgetSlots() rounds the fraction of all experts, never below K or above all", () => {
  assert.equal(budgetSlots(1, 96, 4), 96);
  assert.equal(budgetSlots(0.5, 96, 4), 48);
  assert.equal(budgetSlots(0.25, 96, 4), 24);
  assert.equal(budgetSlots(0.1, 96, 4), 10); // 9.6 rounds to 10
  assert.equal(budgetSlots(0.01, 96, 4), 4);
  assert.throws(() => budgetSlots(0, 96, 4), RangeError);
  assert.throws(() => budgetSlots(1.5, 96, 4), RangeError);
});

Deno.test("splitRows() cuts a layer's concatenated routing into sequences", () => {
  assert.deepEqual(splitRows(u32(0, 1, 2, 3, 0, 1), [1, 2], 2), [u32(0, 1), u32(2, 3, 0, 1)]);
  assert.throws(() => splitRows(u32(0, 1, 2), [1], 2), RoutingShapeError);
});

Deno.test("tokenClock() puts visit i at (i + 1) / L, as ExpertScheduler.tick() does", () => {
  const trace = [{ key: 5, now: 0 }, { key: 6, now: 0 }, { key: 1, now: 1 }, { key: 2, now: 3 }];
  assert.deepEqual(tokenClock(trace, 2).map((a) => [a.key, a.now]), [
    [5, 0.5],
    [6, 0.5],
    [1, 1],
    [2, 2],
  ]);
  assert.throws(() => tokenClock(trace, 0), RangeError);
});

Deno.test("traceSteps() groups consecutive accesses sharing a now", () => {
  const trace = [{ key: 5, now: 0 }, { key: 6, now: 0 }, { key: 1, now: 1 }, { key: 5, now: 4 }];
  assert.deepEqual(traceSteps(trace), [[5, 6], [1], [5]]);
  assert.deepEqual(traceSteps([]), []);
});

Deno.test("oraclePredictor() hands the policy the keys of the step `ahead` steps later", () => {
  const steps = [[0, 1], [4], [2, 3], [5]];
  const told: [number[], number][] = [];
  const policy = { predict: (keys: Iterable<number>, now: number) => told.push([[...keys], now]) };
  const onStep = oraclePredictor(steps, 2, policy);
  for (let s = 0; s < steps.length; s++) onStep(s, 10 + s);
  // steps 0 and 1 learn steps 2 and 3; steps 2 and 3 have nothing 2 steps later
  assert.deepEqual(told, [[[2, 3], 10], [[5], 11]]);
  assert.throws(() => oraclePredictor(steps, 0, policy), RangeError);
});

Deno.test("encodeRouting() / decodeRouting() round-trip a routing and refuse bad ones", () => {
  const shape = { numLayers: 2, numExperts: 4, topK: 2 };
  const seqs = [[u32(0, 1, 1, 2), u32(3, 0, 3, 0)], [u32(2, 3), u32(1, 1)]];
  const saved = encodeRouting(seqs, shape, { model: "m" });
  const back = decodeRouting(JSON.parse(JSON.stringify(saved)));
  assert.deepEqual(back.sequences, seqs);
  assert.deepEqual(back.saved.shape, shape);
  assert.deepEqual(back.saved.source, { model: "m" });
  assert.throws(() => decodeRouting({ format: "other", sequences: [] }), RoutingShapeError);
  const badShape = { ...saved, shape: { ...shape, topK: 0 } };
  assert.throws(() => decodeRouting(badShape), RoutingShapeError);
  const outside = { ...saved, sequences: [[[0, 4], [0, 1]]] }; // expert 4 of 4
  assert.throws(() => decodeRouting(outside), RoutingShapeError);
  const oneLayer = { ...saved, sequences: [[[0, 1]]] };
  assert.throws(() => decodeRouting(oneLayer), RoutingShapeError);
  assert.throws(() => encodeRouting([[u32(0, 1), u32(0, 1, 2, 3)]], shape), RoutingShapeError);
});
