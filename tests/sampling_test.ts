/** src/sampling.ts against hand-computed distributions, one test per sampler and per order rule. */
import assert from "node:assert/strict";
import { uniform24 } from "../src/philox.ts";
import {
  EXP2_TABLE,
  EXP_WEIGHT_MIN_D,
  expWeight,
  GREEDY,
  type History,
  minWeight,
  mulFrac24,
  penalise,
  randomSeed,
  sampleNext,
  samplingDistribution,
  type SamplingParams,
  topP24,
} from "../src/sampling.ts";

const LN2 = Math.log(2);
/** Logits whose softmax is [1, 2, 4] / 7. */
const ONE_TWO_FOUR = [0, LN2, 2 * LN2];
/** No history: the first generated token of an empty sequence. */
const EMPTY: History = { ids: [], genStart: 0 };

function params(p: Partial<SamplingParams>): SamplingParams {
  return { ...GREEDY, temperature: 1, ...p };
}

/** The distribution as id -> probability. */
function dist(logits: number[], p: Partial<SamplingParams>, history = EMPTY) {
  const { ids, probs } = samplingDistribution(logits, params(p), history);
  for (let j = 1; j < ids.length; j++) assert.ok(ids[j - 1] < ids[j], "ids in index order");
  return Object.fromEntries(ids.map((id, i) => [id, probs[i]]));
}

/** Same ids, probabilities within 1e-6 (the f32 logits and exponents). */
function assertDist(actual: Record<string, number>, expected: Record<string, number>) {
  assert.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort());
  for (const [id, p] of Object.entries(expected)) {
    assert.ok(Math.abs(actual[id] - p) < 1e-6, `p(${id}) = ${actual[id]}, expected ${p}`);
  }
}

Deno.test("samplingDistribution() at temperature 0 is argmax with the lowest id on ties", () => {
  assertDist(dist([1, 3, 3, 2], { temperature: 0 }), { 1: 1 });
  assertDist(dist([-0, 0, -1], { temperature: 0 }), { 0: 1 }); // -0 == +0: a tie
});

Deno.test("samplingDistribution() at temperature 1, 0.5 and 2 is softmax(logits / T)", () => {
  assertDist(dist(ONE_TWO_FOUR, {}), { 0: 1 / 7, 1: 2 / 7, 2: 4 / 7 });
  assertDist(dist(ONE_TWO_FOUR, { temperature: 0.5 }), { 0: 1 / 21, 1: 4 / 21, 2: 16 / 21 });
  const s = 1 + Math.SQRT2 + 2;
  assertDist(dist(ONE_TWO_FOUR, { temperature: 2 }), { 0: 1 / s, 1: Math.SQRT2 / s, 2: 2 / s });
});

Deno.test("samplingDistribution() top_k keeps the k first of (logit desc, id asc)", () => {
  assertDist(dist(ONE_TWO_FOUR, { topK: 2 }), { 1: 2 / 6, 2: 4 / 6 });
  assertDist(dist([5, 1, 5, 0], { topK: 1 }), { 0: 1 }); // tie: lowest id
  assertDist(dist([5, 1, 5, 5], { topK: 2 }), { 0: 0.5, 2: 0.5 }); // of 3 tied, the 2 lowest ids
  assertDist(dist(ONE_TWO_FOUR, { topK: 3 }), { 0: 1 / 7, 1: 2 / 7, 2: 4 / 7 }); // k = V: off
});

Deno.test("samplingDistribution() top_p keeps the shortest prefix reaching top_p", () => {
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.6 }), { 1: 1 / 3, 2: 2 / 3 }); // 4/7 < 0.6 <= 6/7
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.5 }), { 2: 1 });
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.9 }), { 0: 1 / 7, 1: 2 / 7, 2: 4 / 7 });
  // Equal logits: the prefix takes ids in index order, and stops as soon as the sum reaches
  // top_p * Z (2 of 4 reach exactly 0.5).
  assertDist(dist([0, 0, 0, 0], { topP: 0.5 }), { 0: 0.5, 1: 0.5 });
  assertDist(dist([0, 0, 0, 0], { topP: 0.51 }), { 0: 1 / 3, 1: 1 / 3, 2: 1 / 3 });
  assertDist(dist([0, 0, 0, 0], { topP: 1e-9 }), { 0: 1 }); // at least one token
});

Deno.test("samplingDistribution() top_p sums over what top_k kept", () => {
  // top_k 2 keeps {1, 2}, e = [1/2, 1]: 0.6 * 1.5 = 0.9 <= 1, so top_p keeps {2} alone; over all
  // three tokens (Z = 1.75) it would keep {1, 2}.
  assertDist(dist(ONE_TWO_FOUR, { topK: 2, topP: 0.6 }), { 2: 1 });
  assertDist(dist(ONE_TWO_FOUR, { topK: 3, topP: 0.6 }), { 1: 1 / 3, 2: 2 / 3 });
});

Deno.test("samplingDistribution() min_p drops tokens below min_p times the top probability", () => {
  // floor 0.3 * 4/7 = 0.171: keeps 2/7, drops 1/7
  assertDist(dist(ONE_TWO_FOUR, { minP: 0.3 }), { 1: 1 / 3, 2: 2 / 3 });
  assertDist(dist(ONE_TWO_FOUR, { minP: 0.49 }), { 1: 1 / 3, 2: 2 / 3 }); // 2/7 = 0.5 * 4/7
  assertDist(dist(ONE_TWO_FOUR, { minP: 0.51 }), { 2: 1 });
  assertDist(dist(ONE_TWO_FOUR, { minP: 1 }), { 2: 1 }); // the top token always stays
  // after top_p: top_p 0.9 keeps all three, min_p 0.3 then drops id 0
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.9, minP: 0.3 }), { 1: 1 / 3, 2: 2 / 3 });
});

Deno.test("samplingDistribution() filters before temperature (llama.cpp order)", () => {
  // top_p on the untempered [1,2,4]/7 keeps {1,2}; then T=2: softmax([ln2, 2ln2]/2) = [1, √2]/(1+√2)
  const s = 1 + Math.SQRT2;
  assertDist(dist(ONE_TWO_FOUR, { topP: 0.6, temperature: 2 }), { 1: 1 / s, 2: Math.SQRT2 / s });
  // min_p at T = 0.5 uses the untempered ratio 1/4 for id 0 (tempered: 1/16)
  assertDist(dist(ONE_TWO_FOUR, { minP: 0.2, temperature: 0.5 }), {
    0: 1 / 21,
    1: 4 / 21,
    2: 16 / 21,
  });
});

Deno.test("penalise() repetition_penalty scales every seen logit, prompt included, by products", () => {
  const h: History = { ids: [0, 2], genStart: 2 }; // prompt ids count as seen
  assert.deepEqual([...penalise([-1, 1, 4, 3], params({ repetitionPenalty: 2 }), h)], [
    -2,
    1,
    2,
    3,
  ]);
  // x * fround(1 / 1.3), not x / 1.3: the two differ in f32 at 4.125
  const x = penalise([4.125], params({ repetitionPenalty: 1.3 }), { ids: [0], genStart: 1 });
  assert.equal(x[0], Math.fround(4.125 * Math.fround(1 / Math.fround(1.3))));
  assert.notEqual(x[0], Math.fround(4.125 / Math.fround(1.3)));
});

Deno.test("penalise() presence and frequency penalties count generated tokens only", () => {
  const h: History = { ids: [3, 1, 1, 2], genStart: 1 }; // id 3 in the prompt: not penalised
  const p = params({ presencePenalty: 0.5, frequencyPenalty: 0.25 });
  assert.deepEqual([...penalise([0, 0, 0, 0], p, h)], [0, -1, -0.75, 0]); // 2*0.25+0.5, 0.25+0.5
  // repetition first (id 3 too: it is in the prompt), then presence/frequency: id 2 is
  // 4 / 2 - (0.25 + 0.5)
  const both = params({ repetitionPenalty: 2, presencePenalty: 0.5, frequencyPenalty: 0.25 });
  assert.deepEqual([...penalise([0, 0, 4, 1], both, h)], [0, -1, 1.25, 0.5]);
  // f32 steps: fround(fround(c * frequency) + presence), then the subtraction
  const odd = params({ presencePenalty: 0.1, frequencyPenalty: 0.3 });
  const y = penalise([1, 0], odd, { ids: [0, 0, 0], genStart: 0 });
  const f = Math.fround;
  assert.equal(y[0], f(1 - f(f(3 * f(0.3)) + f(0.1))));
});

Deno.test("penalise() rejects history ids outside the vocabulary", () => {
  const p = params({ repetitionPenalty: 1.1 });
  assert.throws(() => penalise([0, 0], p, { ids: [2], genStart: 0 }), RangeError);
});

Deno.test("sampleNext() draws by walking the kept tokens in index order", () => {
  // cumulative [1, 3, 7] / 7: the token is the first whose cumulative sum exceeds u
  const seed = 99;
  for (let n = 0; n < 500; n++) {
    const u = uniform24(seed, n);
    const expected = u < 1 / 7 ? 0 : u < 3 / 7 ? 1 : 2;
    const history = { ids: new Array(7 + n).fill(0), genStart: 7 };
    assert.equal(sampleNext(ONE_TWO_FOUR, params({ seed }), history), expected, `n = ${n}`);
  }
});

Deno.test("sampleNext() depends on seed and n = len - genStart only, and repeats itself", () => {
  const logits = Array.from({ length: 50 }, (_, i) => Math.sin(i));
  const p = params({ seed: 5 });
  const draws = (prompt: number, seed = 5) =>
    Array.from(
      { length: 64 },
      (_, n) =>
        sampleNext(logits, { ...p, seed }, {
          ids: new Array(prompt + n).fill(1),
          genStart: prompt,
        }),
    );
  const a = draws(3);
  assert.deepEqual(draws(3), a, "same seed and counters, same tokens");
  assert.deepEqual(draws(10), a, "the prompt's length does not matter, n does");
  assert.ok(new Set(a).size > 10, "different counters draw different tokens");
  assert.notDeepEqual(draws(3, 6), a, "another seed, other tokens");
  assert.notDeepEqual(draws(3, -5), a, "negative seeds are seeds of their own");
});

Deno.test("sampleNext() needs a seed to draw, not to be greedy", () => {
  const h: History = { ids: [1], genStart: 1 };
  assert.throws(() => sampleNext(ONE_TWO_FOUR, params({}), h), RangeError);
  assert.throws(() => sampleNext(ONE_TWO_FOUR, params({ seed: 1.5 }), h), RangeError);
  assert.equal(sampleNext(ONE_TWO_FOUR, GREEDY, h), 2);
  assert.throws(() => sampleNext(ONE_TWO_FOUR, GREEDY, { ids: [1], genStart: 2 }), RangeError);
  assert.throws(() => sampleNext(ONE_TWO_FOUR, params({ topP: 0, seed: 1 }), h), RangeError);
  const seed = randomSeed();
  assert.ok(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32);
});

Deno.test("sampleNext() draws match the distribution (20000 draws, 4 sigma)", () => {
  const N = 20_000;
  const counts = [0, 0, 0];
  const p = params({ seed: 1 });
  for (let n = 0; n < N; n++) {
    counts[sampleNext(ONE_TWO_FOUR, p, { ids: new Array(n), genStart: 0 })]++;
  }
  // 4 standard deviations of a binomial with N = 20000: below 0.014 for any p
  const expected = [1 / 7, 2 / 7, 4 / 7];
  counts.forEach((c, i) => assert.ok(Math.abs(c / N - expected[i]) < 0.014, `p(${i}) = ${c / N}`));
});

Deno.test("expWeight() is floor(exp(d) * 2^31) give or take 64, 2^31 at 0, 0 below -22", () => {
  assert.equal(expWeight(0), 2 ** 31);
  assert.equal(expWeight(-0), 2 ** 31);
  for (const d of [EXP_WEIGHT_MIN_D, -22.5, -100, -Infinity, NaN]) assert.equal(expWeight(d), 0);
  let worst = 0;
  for (let i = 0; i <= 200_000; i++) {
    const d = Math.fround(EXP_WEIGHT_MIN_D * (i / 200_000) ** 2);
    const q = expWeight(d);
    assert.ok(Number.isInteger(q) && q >= 0 && q <= 2 ** 31, `${d}: ${q}`);
    worst = Math.max(worst, Math.abs(q - Math.exp(d) * 2 ** 31));
  }
  assert.ok(worst < 64, `worst ${worst}`);
});

Deno.test("expWeight()'s constants are kernels/sample_common.wgsl's, the table included", () => {
  const wgsl = Deno.readTextFileSync(new URL("../kernels/sample_common.wgsl", import.meta.url));
  /** The value of `const NAME ... = VALUE;` in the kernel, as numbers (an array's elements). */
  const constant = (name: string): number[] => {
    const m = wgsl.match(new RegExp(`const ${name}\\b[^=]*=\\s*(?:array<[^>]*>\\()?([^;)]*)`));
    assert.ok(m, name);
    return m[1].split(",").filter((s) => s.trim()).map((s) => parseFloat(s));
  };
  assert.deepEqual(constant("EXP2_TABLE"), EXP2_TABLE);
  assert.deepEqual(constant("EXP_WEIGHT_MIN_D"), [EXP_WEIGHT_MIN_D]);
  assert.deepEqual(constant("D_SCALE"), [2 ** 26]);
  assert.deepEqual(constant("LOG2E_Q30"), [Math.round(Math.LOG2E * 2 ** 30)]);
  assert.deepEqual(constant("LN2_Q32"), [Math.round(Math.LN2 * 2 ** 32)]);
});

Deno.test("mulFrac24() rounds a * b / 2^24 down or up exactly; topP24/minWeight scale exactly", () => {
  const pairs: [number, number][] = [[0, 0], [1, 1], [2 ** 24, 2 ** 50 - 1], [2 ** 24 - 1, 12345]];
  for (let i = 0; i < 10_000; i++) {
    pairs.push([Math.floor(Math.random() * 2 ** 24), Math.floor(Math.random() * 2 ** 50)]);
  }
  for (const [a, b] of pairs) {
    const product = BigInt(a) * BigInt(b);
    const down = product >> 24n;
    assert.equal(BigInt(mulFrac24(a, b, false)), down, `${a} * ${b}`);
    assert.equal(BigInt(mulFrac24(a, b, true)), down + (down << 24n === product ? 0n : 1n));
  }
  assert.equal(topP24(params({ topP: 0.5 })), 2 ** 23);
  assert.equal(topP24(params({ topP: 0.9 })), Math.ceil(Math.fround(0.9) * 2 ** 24));
  assert.equal(minWeight(params({ minP: 0.25 })), 2 ** 29);
  assert.equal(minWeight(params({ minP: 1 })), 2 ** 31);
});
