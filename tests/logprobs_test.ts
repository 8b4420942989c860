/**
 * Logprobs: the log-softmax and top-n of src/logprobs.ts against direct float64 arithmetic;
 * decodeWithForward's hooks; generate() with logprobs (and echo) on the TINY fixture's GpuModel
 * within 1e-4 of the float64 reference's log-softmax for every generated and prompt token, with
 * the same tokens as the GPU decode without logprobs.
 */
import assert from "node:assert/strict";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { openReferenceModel, type ReferenceModel } from "../src/reference/model.ts";
import { logSoftmax, logSumExp, tokenLogprob, topLogprobs } from "../src/logprobs.ts";
import { decodeWithForward } from "../src/decode_cpu.ts";
import { generate, type GenerationResult, type Piece } from "../src/generate.ts";
import { GREEDY, type SamplingParams } from "../src/sampling.ts";
import { StreamDecoder } from "../src/tokenizer.ts";
import type { Session } from "../src/types.ts";
import { BigramTestModel } from "./_test_model.ts";

/** The brief's bound on |logprob - the float64 reference's|. */
const TOLERANCE = 1e-4;

Deno.test("logSoftmax() equals log(exp(x_i) / sum_j exp(x_j)) in float64, and stays finite for large logits", () => {
  const x = [0.5, -1.25, 3, 3, 0];
  const z = x.reduce((s, v) => s + Math.exp(v), 0);
  const got = logSoftmax(x);
  x.forEach((v, i) => assert.ok(Math.abs(got[i] - Math.log(Math.exp(v) / z)) < 1e-15));
  const big = logSoftmax([1000, 1001, 999]); // exp(1000) overflows a float64
  assert.ok(big.every(Number.isFinite));
  assert.ok(Math.abs(big.reduce((s, v) => s + Math.exp(v), 0) - 1) < 1e-12); // logZ ~ 1001: ulp 1e-13
  assert.ok(Math.abs(big[1] - (1 - logSumExp([0, 1, -1]))) < 1e-12);
  const f32 = Float32Array.of(-3e38, 0, 2); // float32 rows are read as float64
  assert.equal(logSoftmax(f32)[0], f32[0] - logSumExp(f32));
});

Deno.test("topLogprobs() orders by logprob descending, ties by lower id, for n from 0 past V", () => {
  const x = Float32Array.of(1, 5, 3, 5, -2, 3, 5);
  const logZ = logSumExp(x);
  const ids = (n: number) => topLogprobs(x, n, logZ).map((t) => t.token);
  assert.deepEqual(ids(0), []);
  assert.deepEqual(ids(1), [1]);
  assert.deepEqual(ids(3), [1, 3, 6]);
  assert.deepEqual(ids(5), [1, 3, 6, 2, 5]);
  assert.deepEqual(ids(20), [1, 3, 6, 2, 5, 0, 4]);
  const top = topLogprobs(x, 2, logZ);
  assert.equal(top[0].logprob, 5 - logZ);
  assert.throws(() => topLogprobs(x, -1, logZ), RangeError);
  // a long row: the same as sorting the whole row
  const row = Float32Array.from({ length: 5000 }, (_, i) => Math.round(Math.sin(i * 12.9898) * 40));
  const sorted = [...row.keys()].sort((a, b) => row[b] - row[a] || a - b).slice(0, 20);
  assert.deepEqual(topLogprobs(row, 20, logSumExp(row)).map((t) => t.token), sorted);
});

Deno.test("tokenLogprob() gives the token's logprob and the row's top n; ids outside the row throw", () => {
  const x = Float32Array.of(0, 2, 1);
  const r = tokenLogprob(x, 2, 2);
  const lp = logSoftmax(x);
  assert.equal(r.token, 2);
  assert.equal(r.logprob, lp[2]);
  assert.deepEqual(r.top, [{ token: 1, logprob: lp[1] }, { token: 2, logprob: lp[2] }]);
  assert.deepEqual(tokenLogprob(x, 0, 0).top, []);
  assert.throws(() => tokenLogprob(x, 3, 1), RangeError);
});

Deno.test("decodeWithForward() hooks: prefill replaces the feed's forward, onStep sees each row and token before settle", async () => {
  const model = new BigramTestModel();
  const session = model.newSession();
  const seen: string[] = [];
  const result = await decodeWithForward(session, {
    feed: [10, 97],
    maxTokens: 3,
    sampling: GREEDY,
    eosIds: [],
  }, (tokens) => {
    seen.push(`settle ${tokens}`);
    return undefined;
  }, {
    prefill: async (feed) => {
      const rows = await session.forward(feed);
      seen.push(`prefill ${feed} -> ${rows.length} rows`);
      return rows.at(-1)!;
    },
    onStep: (logits, token) => {
      assert.deepEqual(logits, model.row(seen.length === 1 ? 97 : token - 1));
      seen.push(`step ${token}`);
    },
  });
  assert.deepEqual(result.tokens, [98, 99, 100]); // b c d
  assert.deepEqual(seen, [
    "prefill 10,97 -> 2 rows",
    "step 98",
    "settle 98",
    "step 99",
    "settle 99",
    "step 100",
    "settle 100",
  ]);
  session.free();
});

// ---------------------------------------------------------------------------------------------
// generate() on the TINY fixture's GpuModel against the float64 reference

const gpu = await openGpu();
const MAX_CONTEXT = 64;
const PROMPT = [72, 105, 33, 10, 7, 250, 13]; // any ids of the 300-token vocab
const STEPS = 10;
const TOP = 5;

function gpuTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeResources: false, sanitizeOps: false });
}

/** Runs generate() to its end: the pieces and the result. */
async function run(
  session: Session,
  sampling: SamplingParams,
  extra: { logprobs?: number; echo?: boolean; maxTokens?: number } = {},
): Promise<{ pieces: Piece[]; result: GenerationResult }> {
  const it = generate(session, {
    promptIds: PROMPT,
    maxTokens: extra.maxTokens ?? STEPS,
    sampling,
    eosIds: [],
    decoder: new StreamDecoder((ids) => String.fromCharCode(...ids)),
    logprobs: extra.logprobs,
    echo: extra.echo,
  });
  const pieces: Piece[] = [];
  while (true) {
    const step = await it.next();
    if (step.done) return { pieces, result: step.value };
    pieces.push(step.value);
  }
}

/** The reference's float64 log-softmax rows for tokens ids[0..n) (row i predicts ids[i + 1]). */
function referenceRows(ref: ReferenceModel, ids: number[]): Float64Array[] {
  const s = ref.newSession();
  try {
    return s.forward64(ids).map((row) => logSoftmax(row));
  } finally {
    s.free();
  }
}

/** Largest |logprob - reference| over an entry and its top list; the top list is the reference's
 * top n (values by rank; each listed token's own reference value). */
function entryError(
  e: { token: number; logprob: number; top: { token: number; logprob: number }[] },
  ref: Float64Array,
  n: number,
): number {
  let err = Math.abs(e.logprob - ref[e.token]);
  assert.equal(e.top.length, n);
  const refTop = [...ref].sort((a, b) => b - a).slice(0, n);
  e.top.forEach((t, k) => {
    if (k > 0) assert.ok(t.logprob <= e.top[k - 1].logprob);
    err = Math.max(err, Math.abs(t.logprob - refTop[k]), Math.abs(t.logprob - ref[t.token]));
  });
  return err;
}

const SAMPLED: SamplingParams = {
  ...GREEDY,
  temperature: 0.9,
  topK: 40,
  repetitionPenalty: 1.3,
  frequencyPenalty: 0.5,
  seed: 7,
};

gpuTest(
  "generate() with logprobs and echo on the TINY fixture's GpuModel: every generated and prompt token within 1e-4 of the float64 reference's log-softmax, the tokens those of the GPU decode",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "logprobs_" });
    await writeFixture(dir, TINY);
    const opened = openModelDir(dir);
    const ref = await openReferenceModel(dir, { maxContext: MAX_CONTEXT });
    const model = await GpuModel.open(opened.weights, { gpu, maxContext: MAX_CONTEXT });
    let worst = 0;
    try {
      for (const [name, sampling] of [["greedy", GREEDY], ["sampled", SAMPLED]] as const) {
        const plain = model.newSession();
        const want = (await run(plain, sampling)).pieces.map((p) => p.token);
        plain.free();
        // a session on the slab that caches the prompt (prefix reuse): generate() feeds it again
        const session = model.newSession({ prefix: PROMPT });
        assert.ok(session.length > 0, "the freed slab should cache the prompt");
        const { pieces, result } = await run(session, sampling, { logprobs: TOP, echo: true });
        session.free();
        const tokens = pieces.map((p) => p.token);
        assert.deepEqual(tokens, want, `${name}: tokens`);
        const rows = referenceRows(ref, [...PROMPT, ...tokens]);
        const prompt = result.promptLogprobs!;
        assert.equal(prompt.length, PROMPT.length);
        assert.equal(prompt[0], null);
        prompt.slice(1).forEach((e, i) => {
          assert.equal(e!.token, PROMPT[i + 1]);
          worst = Math.max(worst, entryError(e!, rows[i], TOP));
        });
        pieces.forEach((p, i) => {
          assert.equal(p.logprob!.token, p.token);
          worst = Math.max(worst, entryError(p.logprob!, rows[PROMPT.length - 1 + i], TOP));
        });
        // logprobs without echo: the same pieces, no prompt logprobs
        const again = model.newSession();
        const noEcho = await run(again, sampling, { logprobs: 0 });
        again.free();
        assert.deepEqual(noEcho.pieces.map((p) => p.token), want, `${name}: tokens without echo`);
        assert.equal(noEcho.result.promptLogprobs, undefined);
        noEcho.pieces.forEach((p, i) => {
          assert.deepEqual(p.logprob!.top, []);
          assert.ok(Math.abs(p.logprob!.logprob - pieces[i].logprob!.logprob) < 1e-12);
        });
      }
      console.log(`max |logprob - float64 reference| = ${worst.toExponential(2)}`);
      assert.ok(worst < TOLERANCE, `max error ${worst}`);
    } finally {
      model.destroy();
      ref.close();
      opened.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "generate() with maxTokens 0 and echo returns the prompt's logprobs only (GpuModel of the TINY fixture)",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "logprobs_" });
    await writeFixture(dir, TINY);
    const opened = openModelDir(dir);
    const ref = await openReferenceModel(dir, { maxContext: MAX_CONTEXT });
    const model = await GpuModel.open(opened.weights, { gpu, maxContext: MAX_CONTEXT });
    try {
      const session = model.newSession();
      const { pieces, result } = await run(session, GREEDY, {
        logprobs: 1,
        echo: true,
        maxTokens: 0,
      });
      session.free();
      assert.deepEqual(pieces, []);
      assert.equal(result.completionTokens, 0);
      assert.equal(result.promptTokens, PROMPT.length);
      assert.equal(result.text, "");
      const rows = referenceRows(ref, PROMPT);
      const prompt = result.promptLogprobs!;
      assert.equal(prompt.length, PROMPT.length);
      assert.equal(prompt[0], null);
      let worst = 0;
      prompt.slice(1).forEach((e, i) => worst = Math.max(worst, entryError(e!, rows[i], 1)));
      console.log(`max |logprob - float64 reference| = ${worst.toExponential(2)}`);
      assert.ok(worst < TOLERANCE, `max error ${worst}`);
    } finally {
      model.destroy();
      ref.close();
      opened.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
