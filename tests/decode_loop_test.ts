/**
 * The GPU decode loop (src/gpu/decode_loop.ts): tokens sampled on the GPU, several steps per
 * readback, pipelined. Greedy ids equal the float64 reference's (and torch's for the default
 * model) for 1, 2, 7 and adaptive steps per readback, all experts resident and at the smallest
 * budget; seeded sampling gives the same tokens whatever the steps per readback and the budget;
 * EOS, max_tokens, stops and aborts inside a batch keep exactly the right tokens and roll the KV
 * cache back so that a follow-up turn's logits equal a fresh prefill's.
 */
import assert from "node:assert/strict";
import { type FixtureOptions, SMALL, TINY, writeFixture } from "../weights/fixture.ts";
import { DEFAULT_MODEL_DIR, openModel, openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { GREEDY, type SamplingParams } from "../src/sampling.ts";
import type { DecodeRequest, DecodeResult, Session } from "../src/types.ts";

const gpu = await openGpu();

/** Steps per readback under test: fixed 1 (the unpipelined baseline), 2, 7, and adaptive. */
const SPR: (number | undefined)[] = [1, 2, 7, undefined];
const GREEDY_TOKENS = 24;

function prompt(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 13) % vocab);
}

function gpuTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeResources: false, sanitizeOps: false });
}

/** Runs session.decode to the end, keeping every token; returns the result and the readbacks'
 * batch sizes. */
async function decodeAll(
  session: Session,
  req: DecodeRequest,
  settle: (tokens: number[], batch: number) => number | undefined = () => undefined,
): Promise<{ result: DecodeResult; batches: number[] }> {
  const batches: number[] = [];
  const result = await session.decode!(req, (tokens) => {
    batches.push(tokens.length);
    return settle(tokens, batches.length - 1);
  });
  return { result, batches };
}

async function withFixture(opts: FixtureOptions, fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "decode_loop_" });
  try {
    await writeFixture(dir, opts);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const FIXTURES: [string, FixtureOptions][] = [
  ["TINY F32", { ...TINY, dtype: "F32" }],
  ["TINY BF16", { ...TINY, dtype: "BF16" }],
  ["TINY F16 tied, fused, 2 shards", {
    ...TINY,
    dtype: "F16",
    tieEmbeddings: true,
    fusedExperts: true,
    shards: 2,
  }],
  ["SMALL BF16", { ...SMALL, dtype: "BF16" }],
  ["SMALL BF16 Qwen3-Omni layout", { ...SMALL, dtype: "BF16", omni: true, seed: 3 }],
];

for (const [name, opts] of FIXTURES) {
  gpuTest(
    `decode: greedy ids equal the reference's for 1/2/7/adaptive steps per readback, all resident and at the smallest budget (${name})`,
    async () => {
      await withFixture(opts, async (dir) => {
        const opened = openModelDir(dir);
        const ref = await openReferenceModel(dir);
        try {
          const ids = prompt(7, opts.vocab, 5);
          const want = await greedy(ref, ids, GREEDY_TOKENS);
          for (const slots of [undefined, opts.topK]) {
            const model = await GpuModel.open(opened.weights, {
              gpu,
              maxContext: 64,
              expertSlots: slots,
            });
            try {
              for (const spr of SPR) {
                const s = model.newSession();
                // no EOS: the reference does not stop either
                const { result } = await decodeAll(s, {
                  feed: ids,
                  maxTokens: GREEDY_TOKENS,
                  sampling: GREEDY,
                  eosIds: [],
                  stepsPerReadback: spr,
                });
                s.free();
                assert.deepEqual(result.tokens, want, `slots ${slots ?? "all"}, spr ${spr}`);
                assert.equal(result.finish, "length");
                assert.equal(result.stats.tokens, GREEDY_TOKENS - 1);
              }
              if (slots !== undefined) assert.ok(model.stats.expertLoads > 0);
            } finally {
              model.destroy();
            }
          }
        } finally {
          ref.close();
          opened.close();
        }
      });
    },
  );
}

/** A greedy decode of a torch case's prompt, as long as torch's continuation (no EOS). */
async function decodeCase(
  model: GpuModel,
  c: { prompt_ids: number[]; greedy_ids: number[] },
  stepsPerReadback?: number,
): Promise<DecodeResult> {
  const s = model.newSession();
  const { result } = await decodeAll(s, {
    feed: c.prompt_ids,
    maxTokens: c.greedy_ids.length,
    sampling: GREEDY,
    eosIds: [],
    stepsPerReadback,
  });
  s.free();
  return result;
}

/** The default model's greedy continuations as torch computed them (tools/train/). */
async function torchGreedyCases(): Promise<{ prompt_ids: number[]; greedy_ids: number[] }[]> {
  const reference = JSON.parse(
    await Deno.readTextFile(new URL("../tools/train/reference_outputs.json", import.meta.url)),
  ) as { greedy: { cases: { prompt_ids: number[]; greedy_ids: number[] }[] } };
  return reference.greedy.cases;
}

gpuTest(
  "decode: the default model's greedy ids equal torch's for 1/2/7/adaptive steps per readback, all resident and at the smallest budget",
  async () => {
    const reference = await torchGreedyCases();
    const opened = await openModel(DEFAULT_MODEL_DIR);
    try {
      for (const slots of [undefined, opened.weights.config.topK]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 128,
          expertSource: opened.experts,
          expertSlots: slots,
        });
        try {
          for (const c of reference.slice(0, 2)) {
            for (const spr of SPR) {
              const result = await decodeCase(model, c, spr);
              assert.deepEqual(result.tokens, c.greedy_ids, `slots ${slots ?? "all"}, spr ${spr}`);
            }
          }
        } finally {
          model.destroy();
        }
      }
    } finally {
      opened.close();
    }
  },
);

gpuTest(
  "decode: under a 10% budget no step loads more experts than it routes (loadCap), with the same tokens and reported routing as all resident; the uncapped baseline loads more",
  async () => {
    const reference = await torchGreedyCases();
    const c = reference[0];
    const opened = await openModel(DEFAULT_MODEL_DIR);
    const { numLayers: L, numExperts: E } = opened.weights.config;
    try {
      const over: number[] = [];
      const routings: string[][] = [];
      for (const loadCap of [true, false, undefined]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 128,
          expertSource: opened.experts,
          expertSlots: loadCap === undefined ? undefined : Math.round(L * E * 0.1),
          loadCap,
        });
        const routing: string[] = [];
        model.onRouting = (l, experts) => routing.push(`${l}:${experts.join()}`);
        routings.push(routing);
        try {
          const result = await decodeCase(model, c);
          assert.deepEqual(result.tokens, c.greedy_ids, `loadCap ${loadCap}`);
          if (loadCap === undefined) break; // all resident: the routing reference
          // every decode step was accounted: L layers' distinct experts each
          assert.ok(model.stats.stepRouted >= (c.greedy_ids.length - 1) * L, "steps counted");
          over.push(model.stats.stepsOverRouted);
        } finally {
          model.destroy();
        }
      }
      assert.equal(over[0], 0, "capped");
      assert.ok(over[1] > 0, `the uncapped baseline loads more than some steps route: ${over[1]}`);
      // each layer's final routing of each step is reported once, as with every expert resident
      assert.deepEqual(routings[0], routings[2]);
      assert.deepEqual(routings[1], routings[2]);
    } finally {
      opened.close();
    }
  },
);

const SAMPLED: SamplingParams = {
  ...GREEDY,
  temperature: 0.9,
  topK: 40,
  topP: 0.95,
  minP: 0.02,
  repetitionPenalty: 1.1,
  presencePenalty: 0.2,
  frequencyPenalty: 0.1,
  seed: 1234567,
};

gpuTest(
  "decode: a seed gives the same sampled tokens for every steps per readback and budget, and the reference model's CPU decode agrees",
  async () => {
    await withFixture({ ...SMALL, dtype: "BF16" }, async (dir) => {
      const opened = openModelDir(dir);
      const ref = await openReferenceModel(dir, { maxContext: 64 });
      try {
        const ids = prompt(5, SMALL.vocab, 9);
        const req = { feed: ids, maxTokens: 30, sampling: SAMPLED, eosIds: [] };
        // the CPU path (forward + the CPU sampler) on the float64 reference
        const { decodeWithForward } = await import("../src/decode_cpu.ts");
        const want = (await decodeWithForward(ref.newSession(), req, () => undefined)).tokens;
        assert.equal(want.length, 30);
        assert.ok(new Set(want).size > 5, "sampling must not collapse to one token");
        for (const slots of [undefined, SMALL.topK]) {
          const model = await GpuModel.open(opened.weights, {
            gpu,
            maxContext: 64,
            expertSlots: slots,
          });
          try {
            for (const spr of SPR) {
              const s = model.newSession();
              const { result } = await decodeAll(s, { ...req, stepsPerReadback: spr });
              s.free();
              assert.deepEqual(result.tokens, want, `slots ${slots ?? "all"}, spr ${spr}`);
            }
            // another seed draws other tokens
            const s = model.newSession();
            const other = await decodeAll(s, { ...req, sampling: { ...SAMPLED, seed: 7 } });
            s.free();
            assert.notDeepEqual(other.result.tokens, want);
          } finally {
            model.destroy();
          }
        }
      } finally {
        ref.close();
        opened.close();
      }
    });
  },
);

gpuTest("decode: readbacks and submissions per token follow the steps per readback", async () => {
  await withFixture({ ...TINY, dtype: "BF16" }, async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, { gpu, maxContext: 128 });
    try {
      for (const spr of [1, 8]) {
        const s = model.newSession();
        const { result, batches } = await decodeAll(s, {
          feed: prompt(4, TINY.vocab, 2),
          maxTokens: 64,
          sampling: GREEDY,
          eosIds: [],
          stepsPerReadback: spr,
        });
        s.free();
        // the first token comes with the prefill's readback, then batches of spr steps
        assert.equal(result.stats.tokens, 63);
        assert.equal(result.stats.readbacks, Math.ceil(63 / spr));
        assert.equal(result.stats.submits, Math.ceil(63 / spr));
        assert.deepEqual(batches, [
          1,
          ...Array(Math.floor(63 / spr)).fill(spr),
          ...(63 % spr ? [63 % spr] : []),
        ]);
      }
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

/** Logits of `follow` after a decode equal a fresh session's prefill of the same sequence. */
async function assertRolledBack(
  model: GpuModel,
  s: Session,
  kept: number[],
  history: number[],
  what: string,
): Promise<void> {
  const follow = [7, 8, 9];
  // the KV cache holds every kept token but the last, which the next forward feeds
  assert.equal(s.length, history.length + Math.max(0, kept.length - 1), `${what}: length`);
  const feed = kept.length > 0 ? [kept[kept.length - 1], ...follow] : follow;
  const got = await s.forward(feed);
  const fresh = model.newSession();
  const all = await fresh.forward([...history, ...kept, ...follow]);
  fresh.free();
  const want = all.slice(all.length - feed.length);
  for (let i = 0; i < want.length; i++) {
    assert.deepEqual(got[i], want[i], `${what}: follow-up logits row ${i}`);
  }
}

gpuTest(
  "decode: EOS at the first step, max_tokens below the batch, stops mid batch and across batches, aborts; a follow-up turn continues exactly",
  async () => {
    await withFixture({ ...SMALL, dtype: "BF16" }, async (dir) => {
      const opened = openModelDir(dir);
      for (const slots of [undefined, SMALL.topK]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 128,
          expertSlots: slots,
        });
        try {
          const ids = prompt(6, SMALL.vocab, 4);
          const base = { feed: ids, sampling: GREEDY, eosIds: [] as number[] };
          const s0 = model.newSession();
          const all = (await decodeAll(s0, { ...base, maxTokens: 20, stepsPerReadback: 1 })).result
            .tokens;
          s0.free();
          for (const spr of [4, undefined]) {
            const tag = `slots ${slots ?? "all"}, spr ${spr}`;
            // EOS at the first step: the first token is declared an EOS id
            let s = model.newSession();
            let r = await decodeAll(s, {
              ...base,
              maxTokens: 20,
              eosIds: [all[0]],
              stepsPerReadback: spr,
            });
            assert.deepEqual(r.result.tokens, [all[0]]);
            assert.equal(r.result.finish, "eos");
            await assertRolledBack(model, s, [all[0]], ids, `${tag} eos first`);
            s.free();
            // EOS in the middle of a batch
            s = model.newSession();
            r = await decodeAll(s, {
              ...base,
              maxTokens: 20,
              eosIds: [all[6]],
              stepsPerReadback: spr,
            });
            const firstEos = all.indexOf(all[6]);
            assert.deepEqual(r.result.tokens, all.slice(0, firstEos + 1));
            await assertRolledBack(model, s, r.result.tokens, ids, `${tag} eos mid`);
            s.free();
            // max_tokens smaller than a batch
            s = model.newSession();
            r = await decodeAll(s, { ...base, maxTokens: 3, stepsPerReadback: spr });
            assert.deepEqual(r.result.tokens, all.slice(0, 3));
            assert.equal(r.result.finish, "length");
            await assertRolledBack(model, s, all.slice(0, 3), ids, `${tag} max_tokens`);
            s.free();
            // the consumer stops at the 2nd token of the readback that holds token 5 (mid batch)
            // and, separately, at the first token of a later readback (across batches)
            for (const at of [5, 9]) {
              s = model.newSession();
              let seen = 0;
              r = await decodeAll(s, { ...base, maxTokens: 20, stepsPerReadback: spr }, (t) => {
                const stopAt = at - seen;
                seen += t.length;
                return stopAt < t.length ? stopAt + 1 : undefined;
              });
              assert.deepEqual(r.result.tokens, all.slice(0, at + 1), `${tag} stop at ${at}`);
              assert.equal(r.result.finish, "stop");
              await assertRolledBack(model, s, r.result.tokens, ids, `${tag} stop at ${at}`);
              s.free();
            }
            // abort after the first readback of decode steps: what was handed out is kept
            s = model.newSession();
            const abort = new AbortController();
            r = await decodeAll(s, {
              ...base,
              maxTokens: 20,
              stepsPerReadback: spr,
              signal: abort.signal,
            }, (_t, i) => {
              if (i === 1) abort.abort();
              return undefined;
            });
            assert.equal(r.result.finish, "abort");
            assert.deepEqual(r.result.tokens, all.slice(0, r.result.tokens.length));
            assert.ok(r.result.tokens.length >= 2 && r.result.tokens.length < 20);
            await assertRolledBack(model, s, r.result.tokens, ids, `${tag} abort`);
            s.free();
          }
        } finally {
          model.destroy();
        }
      }
      opened.close();
    });
  },
);

gpuTest("decode: router masking keeps zero expert loads once the cache is warm", async () => {
  const opened = await openModel(DEFAULT_MODEL_DIR);
  const c = opened.weights.config;
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: 256,
    expertSource: opened.experts,
    expertSlots: (c.numLayers * c.numExperts) / 2,
    routerMasking: true,
  });
  try {
    const feed = [10, 20, 30, 40, 50];
    const req = { feed, maxTokens: 40, sampling: GREEDY, eosIds: [] };
    // warm: fill the cache
    let s = model.newSession();
    await decodeAll(s, req);
    s.free();
    assert.ok(model.cache.isFull);
    s = model.newSession();
    const { result } = await decodeAll(s, { ...req, feed: [60, 70, 80] });
    s.free();
    assert.equal(result.stats.expertLoads, 0);
    assert.equal(result.tokens.length, 40);
  } finally {
    model.destroy();
    opened.close();
  }
});

gpuTest(
  "generate(): stop strings completed mid batch and across batches end the text, usage and KV cache exactly, with the steps per readback 1 result as reference",
  async () => {
    const { generate } = await import("../src/generate.ts");
    const { loadTokenizer } = await import("../src/tokenizer.ts");
    const opened = await openModel(DEFAULT_MODEL_DIR);
    const tokenizer = await loadTokenizer(DEFAULT_MODEL_DIR);
    const model = await GpuModel.open(opened.weights, {
      gpu,
      maxContext: 256,
      expertSource: opened.experts,
    });
    const promptIds = tokenizer.encode("In the beginning God created");
    const run = async (stop: string[], spr: number | undefined, session: Session) => {
      const it = generate(session, {
        promptIds,
        maxTokens: 40,
        sampling: GREEDY,
        eosIds: [],
        stop,
        decoder: tokenizer.streamDecoder({ skipSpecial: true }),
        stepsPerReadback: spr,
      });
      const pieces: { token: number; text: string }[] = [];
      for (let step = await it.next();; step = await it.next()) {
        if (step.done) return { pieces, result: step.value };
        pieces.push(step.value);
      }
    };
    try {
      const s0 = model.newSession();
      const plain = await run([], 1, s0);
      s0.free();
      // end of each token's text in the full text
      const ends: number[] = [];
      let full = "";
      for (const p of plain.pieces) ends.push((full += p.text).length);
      // with 4 steps per readback the tokens come back as [0], [1..4], [5..8], [9..12], ...
      for (const [j, where] of [[6, "mid batch"], [9, "across batches"]] as const) {
        // the shortest suffix of the text through token j that starts in an earlier token and
        // occurs first there
        let stop = "";
        for (let k = ends[j] - ends[j - 1] + 1; k <= ends[j]; k++) {
          const s = full.slice(ends[j] - k, ends[j]);
          if (full.indexOf(s) === ends[j] - k) {
            stop = s;
            break;
          }
        }
        assert.ok(stop.length > 0, `a stop string ending in token ${j}`);
        for (const spr of [1, 4]) {
          const s = model.newSession();
          const { pieces, result } = await run([stop], spr, s);
          const tag = `${where}, spr ${spr}, stop ${JSON.stringify(stop)}`;
          assert.equal(result.finishReason, "stop", tag);
          assert.equal(result.completionTokens, j + 1, tag);
          assert.equal(result.text, full.slice(0, ends[j] - stop.length), tag);
          assert.equal(pieces.map((p) => p.text).join(""), result.text, tag);
          assert.deepEqual(
            pieces.map((p) => p.token),
            plain.pieces.slice(0, j + 1).map((p) => p.token),
          );
          await assertRolledBack(model, s, pieces.map((p) => p.token), promptIds, tag);
          s.free();
        }
      }
    } finally {
      model.destroy();
      opened.close();
    }
  },
);
