/** sampling.ts against hand-computed distributions, one test per sampler and one for the order. */
import assert from "node:assert/strict";
import {
  applyPenalties,
  GREEDY,
  Prng,
  sampleToken,
  samplingDistribution,
  type SamplingParams,
  TokenHistory,
} from "../src/sampling.ts";

const LN2 = Math.log(2);
/** Logits whose softmax is [1, 2, 4] / 7. */
const ONE_TWO_FOUR = [0, LN2, 2 * LN2];

function params(p: Partial<SamplingParams>): SamplingParams {
  return { ...GREEDY, temperature: 1, ...p };
}

/** The distribution as id -> probability. */
function dist(logits: number[], p: Partial<SamplingParams>, history = new TokenHistory()) {
  const { ids, probs } = samplingDistribution(logits, params(p), history);
  return Object.fromEntries(ids.map((id, i) => [id, probs[i]]));
}

function assertDist(actual: Record<string, number>, expected: Record<string, number>) {
  assert.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort());
  for (const [id, p] of Object.entries(expected)) {
    assert.ok(Math.abs(actual[id] - p) < 1e-9, `p(${id}) = ${actual[id]}, expected ${p}`);
  }
}

Deno.test("samplingDistribution() at temperature 0 is argmax with the lowest id on ties", () => {
  assertDist(dist([1, 3, 3, 2], { temperature: 0 }), { 1: 1 });
});

Deno.test("samplingDistribution() at temperature 1 and 0.5 is softmax(logits / T)", () => {
  assertDist(dist(ONE_TWO_FOUR, {}), { 0: 1 / 7, 1: 2 / 7, 2: 4 / 7 });
  assertDist(dist(ONE_TWO_FOUR, { temperature: 0.5 }), { 0: 1 / 21, 1: 4 / 21, 2: 16 / 21 });
});

Deno.test("samplingDistribution() top_k keeps the k largest logits", () => {
  assertDist(dist(ONE_TWO_FOUR, { topK: 2 }), { 1: 2 / 6, 2: 4 / 6 });
  assertDist(dist([5, 1, 5, 0], { topK: 1 }), { 0: 1 }); // tie: lowest id
});

Deno.test("samplingDistribution() top_p keeps the smallest prefix reaching p", () => {
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.6 }), { 1: 1 / 3, 2: 2 / 3 }); // 4/7 < 0.6 <= 6/7
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.5 }), { 2: 1 });
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.9 }), { 0: 1 / 7, 1: 2 / 7, 2: 4 / 7 });
});

Deno.test("samplingDistribution() min_p drops tokens below min_p times the top probability", () => {
  // floor 0.3 * 4/7 = 0.171: keeps 2/7, drops 1/7
  assertDist(dist(ONE_TWO_FOUR, { minP: 0.3 }), { 1: 1 / 3, 2: 2 / 3 });
});

Deno.test("samplingDistribution() filters before temperature (llama.cpp order)", () => {
  // top_p on the untempered [1,2,4]/7 keeps {1,2}; then T=2: softmax([ln2, 2ln2]/2) = [1, √2]/(1+√2)
  const s = 1 + Math.SQRT2;
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.6, temperature: 2 }), { 1: 1 / s, 2: Math.SQRT2 / s });
});

Deno.test("applyPenalties() repetition_penalty divides positive and multiplies negative seen logits", () => {
  const h = new TokenHistory([0, 2]); // prompt ids count as seen
  const out = applyPenalties([-1, 1, 4, 3], params({ repetitionPenalty: 2 }), h);
  assert.deepEqual([...out], [-2, 1, 2, 3]);
});

Deno.test("applyPenalties() presence and frequency penalties count generated tokens only", () => {
  const h = new TokenHistory([3]); // a prompt id: never penalised by these two
  h.addGenerated(1);
  h.addGenerated(1);
  h.addGenerated(2);
  const out = applyPenalties(
    [0, 0, 0, 0],
    params({ presencePenalty: 0.5, frequencyPenalty: 0.25 }),
    h,
  );
  assert.deepEqual([...out], [0, -1, -0.75, 0]); // 1: 2*0.25+0.5, 2: 1*0.25+0.5
});

Deno.test("sampleToken() with one seed repeats its draws and matches the distribution", () => {
  const draw = (seed: number, n: number) => {
    const rng = new Prng(seed);
    return Array.from(
      { length: n },
      () => sampleToken(ONE_TWO_FOUR, params({}), new TokenHistory(), rng),
    );
  };
  assert.deepEqual(draw(42, 50), draw(42, 50));
  assert.notDeepEqual(draw(42, 50), draw(43, 50));
  const N = 20_000;
  const counts = [0, 0, 0];
  for (const id of draw(1, N)) counts[id]++;
  // 4 standard deviations of a binomial with N = 20000: below 0.014 for any p
  const expected = [1 / 7, 2 / 7, 4 / 7];
  counts.forEach((c, i) => assert.ok(Math.abs(c / N - expected[i]) < 0.014, `p(${i}) = ${c / N}`));
});
