/**
 * Continuous batching (src/gpu/decode_loop.ts): sequences decoding at the same time share each
 * step's forward (one token of each per step, weights read once for all), and each gets exactly
 * the tokens it gets alone: greedy and seeded sampling with their own parameters, sequences
 * joining while others run and leaving at their own ends, one aborted without disturbing the
 * rest, every expert resident and at the smallest budget. Prompt-prefix reuse: a session that
 * starts on a slab caching a prefix of its prompt computes only the rest, with the logits of a
 * cold prefill.
 */
import assert from "node:assert/strict";
import { SMALL, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { GREEDY, type SamplingParams } from "../src/sampling.ts";
import type { DecodeRequest, DecodeResult } from "../src/types.ts";

const gpu = await openGpu();
const OPTS = { ...SMALL, dtype: "BF16" as const };

function gpuTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeResources: false, sanitizeOps: false });
}

function prompt(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 13) % SMALL.vocab);
}

const SAMPLED: SamplingParams = {
  ...GREEDY,
  temperature: 0.8,
  topK: 50,
  topP: 0.9,
  repetitionPenalty: 1.2,
  seed: 99,
};

/** Five requests of different prompts, lengths and sampling. */
const REQUESTS: DecodeRequest[] = [
  { feed: prompt(3, 1), maxTokens: 20, sampling: GREEDY, eosIds: [] },
  { feed: prompt(9, 2), maxTokens: 31, sampling: SAMPLED, eosIds: [] },
  { feed: prompt(1, 3), maxTokens: 12, sampling: { ...SAMPLED, seed: 5, minP: 0.05 }, eosIds: [] },
  { feed: prompt(17, 4), maxTokens: 25, sampling: GREEDY, eosIds: [] },
  {
    feed: prompt(5, 5),
    maxTokens: 18,
    sampling: { ...SAMPLED, seed: 6, presencePenalty: 0.5 },
    eosIds: [],
  },
];

async function withSmall(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "batching_" });
  try {
    await writeFixture(dir, OPTS);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function alone(model: GpuModel, req: DecodeRequest): Promise<number[]> {
  const s = model.newSession();
  try {
    return (await s.decode(req, () => undefined)).tokens;
  } finally {
    s.free();
  }
}

for (const slots of [undefined, SMALL.topK, 3 * SMALL.topK]) {
  gpuTest(
    `batching: concurrent sequences joining and leaving get the tokens they get alone (${
      slots ? `${slots} expert slots` : "all experts resident"
    })`,
    async () => {
      await withSmall(async (dir) => {
        const opened = openModelDir(dir);
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 64,
          expertSlots: slots,
          maxSequences: 5,
        });
        try {
          const want: number[][] = [];
          for (const r of REQUESTS) want.push(await alone(model, r));
          for (const spr of [undefined, 3]) {
            const before = { ...model.stats };
            const sessions = REQUESTS.map(() => model.newSession());
            const got: Promise<DecodeResult>[] = [];
            const start = (i: number) =>
              got[i] = sessions[i].decode({ ...REQUESTS[i], stepsPerReadback: spr }, (tokens) => {
                // requests 3 and 4 join once request 1 has 5 tokens
                if (i === 1 && got.length === 3) {
                  seen1 += tokens.length;
                  if (seen1 >= 5) {
                    start(3);
                    start(4);
                  }
                }
                return undefined;
              });
            let seen1 = 0;
            for (const i of [0, 1, 2]) start(i);
            while (got.length < 5) await new Promise((r) => setTimeout(r, 5));
            const results = await Promise.all(got);
            for (const s of sessions) s.free();
            results.forEach((r, i) =>
              assert.deepEqual(r.tokens, want[i], `request ${i}, spr ${spr}`)
            );
            const laneSteps = model.stats.laneSteps - before.laneSteps;
            const steps = model.stats.decodeSteps - before.decodeSteps;
            console.error(`  spr ${spr}: ${steps} decode steps for ${laneSteps} sequence-steps`);
            // (under a budget a step holds as many sequences as the slots hold a layer's experts for)
            assert.ok(
              laneSteps / steps >= Math.min(2, model.maxLanes),
              `mean batch ${laneSteps / steps} (at most ${model.maxLanes})`,
            );
          }
        } finally {
          model.destroy();
          opened.close();
        }
      });
    },
  );
}

gpuTest(
  "batching: prompts prefilled together run the lm_head on their last rows only (compactHead; " +
    "the baseline on every row of the chunk), with the same tokens",
  async () => {
    await withSmall(async (dir) => {
      const opened = openModelDir(dir);
      const open = (compactHead: boolean) =>
        GpuModel.open(opened.weights, { gpu, maxContext: 64, maxSequences: 3, compactHead });
      const models = [await open(true), await open(false)];
      try {
        const reqs = REQUESTS.slice(0, 3).map((r) => ({ ...r, maxTokens: 4 }));
        const want = await Promise.all(reqs.map((r) => alone(models[0], r)));
        const prefillRows: number[] = [];
        for (const model of models) {
          const before = { ...model.stats };
          const sessions = reqs.map(() => model.newSession());
          const results = await Promise.all(
            sessions.map((s, i) => s.decode(reqs[i], () => undefined)),
          );
          for (const s of sessions) s.free();
          results.forEach((r, i) => assert.deepEqual(r.tokens, want[i], `request ${i}`));
          // decode steps run the head on every lane: what is left is the prompts' head rows
          const head = model.stats.headRows - before.headRows;
          prefillRows.push(head - (model.stats.laneSteps - before.laneSteps));
        }
        console.error(`  prefill head rows: compact ${prefillRows[0]}, baseline ${prefillRows[1]}`);
        assert.equal(prefillRows[0], reqs.length); // one row per prompt, however they were grouped
        assert.ok(prefillRows[1] > reqs.length, `baseline ${prefillRows[1]}`);
      } finally {
        for (const m of models) m.destroy();
        opened.close();
      }
    });
  },
);

gpuTest("batching: aborting one sequence leaves the others exact", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, { gpu, maxContext: 64, maxSequences: 3 });
    try {
      const want = await Promise.all([REQUESTS[0], REQUESTS[1]].map((r) => alone(model, r)));
      const abort = new AbortController();
      const sessions = [0, 1, 2].map(() => model.newSession());
      let seen = 0;
      const results = await Promise.all([
        sessions[0].decode(REQUESTS[0], () => undefined),
        sessions[1].decode(REQUESTS[1], () => undefined),
        sessions[2].decode({ ...REQUESTS[3], signal: abort.signal }, (t) => {
          seen += t.length;
          if (seen >= 3) abort.abort();
          return undefined;
        }),
      ]);
      for (const s of sessions) s.free();
      assert.deepEqual(results[0].tokens, want[0]);
      assert.deepEqual(results[1].tokens, want[1]);
      assert.equal(results[2].finish, "abort");
      assert.ok(results[2].tokens.length >= 3 && results[2].tokens.length < REQUESTS[3].maxTokens);
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

gpuTest(
  "prefix reuse: a session on a slab caching a prefix computes the rest with a cold prefill's logits and tokens",
  async () => {
    await withSmall(async (dir) => {
      const opened = openModelDir(dir);
      const model = await GpuModel.open(opened.weights, { gpu, maxContext: 64, maxSequences: 2 });
      try {
        // turn 1
        const first = model.newSession();
        const turn1 = prompt(12, 7);
        const r1 = await first.decode(
          { feed: turn1, maxTokens: 10, sampling: GREEDY, eosIds: [] },
          () => undefined,
        );
        first.free();
        // turn 2: the whole conversation so far plus new tokens
        const turn2 = [...turn1, ...r1.tokens, ...prompt(6, 8)];
        const reused = model.newSession({ prefix: turn2 });
        // the slab holds turn 1 and every kept token but the last
        assert.equal(reused.length, turn1.length + r1.tokens.length - 1);
        const cold = model.newSession();
        assert.equal(cold.length, 0);
        const rest = turn2.slice(reused.length);
        const got = await reused.forward(rest);
        const all = await cold.forward(turn2);
        const want = all.slice(all.length - rest.length);
        for (let i = 0; i < want.length; i++) assert.deepEqual(got[i], want[i], `row ${i}`);
        reused.free();
        cold.free();
        // decode after reuse equals decode from scratch
        const req = { feed: turn2, maxTokens: 12, sampling: SAMPLED, eosIds: [] };
        const scratch = await alone(model, req);
        const again = model.newSession({ prefix: turn2 });
        assert.ok(again.length > 0);
        const r = await again.decode({ ...req, feed: turn2.slice(again.length) }, () => undefined);
        again.free();
        assert.deepEqual(r.tokens, scratch);
      } finally {
        model.destroy();
        opened.close();
      }
    });
  },
);
