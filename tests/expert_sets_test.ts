/**
 * Context-chosen expert sets (src/gpu/expert_sets.ts): the choice from hand-made routing; on the
 * SMALL fixture under a budget, with router masking the resident set of each layer after the
 * prefill is the chosen one and decode loads nothing and reruns nothing; in exact mode the logits
 * and tokens are bit-identical to those without a set; several sequences share one pinned set and
 * exact sequences beside them stay exact; the per-run flag and the request field reach sessions,
 * and a bad value is refused naming it.
 */
import assert from "node:assert/strict";
import { SMALL, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import {
  chooseExpertSet,
  chooseExpertSets,
  isExpertSetMode,
  rankExperts,
  routingScores,
} from "../src/gpu/expert_sets.ts";
import { GREEDY } from "../src/sampling.ts";
import type { LanguageModel, SessionOptions } from "../src/types.ts";
import { parseChatRequest, parseCompletionRequest } from "../src/server/request.ts";
import { InvalidParameterError } from "../src/server/errors.ts";
import { runtimeOptions } from "../src/cli/runtime.ts";
import { UsageError } from "../src/cli/args.ts";
import { LocalEngine } from "../src/engine/local.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { BigramTestModel, startTestServer, TEST_MODEL_ID, testModelDir } from "./_test_model.ts";

const OPTS = { ...SMALL, dtype: "BF16" as const };
const E = SMALL.experts;
const L = SMALL.layers;
/** Slots whose per-layer shares fill the pool exactly (3 layers x 6): a pinned set is then all
 * that is resident. */
const SLOTS = 18;
const PROMPT = Array.from({ length: 20 }, (_, i) => (i * 37 + 5) % SMALL.vocab);
const OTHER = Array.from({ length: 24 }, (_, i) => (i * 101 + 13) % SMALL.vocab);
const THIRD = Array.from({ length: 16 }, (_, i) => (i * 59 + 200) % SMALL.vocab);
const DECODE = [11, 200, 37, 400, 5, 99, 123, 321];

Deno.test("routingScores counts each expert's tokens, or sums their weights", () => {
  // 3 tokens, top-2 of 4 experts
  const routed = Uint32Array.of(2, 0, 2, 3, 0, 2);
  assert.deepEqual([...routingScores(routed, 4)], [2, 0, 3, 1]);
  const w = Float32Array.of(0.5, 0.5, 0.75, 0.25, 0.5, 0.5);
  assert.deepEqual([...routingScores(routed, 4, w)], [1, 0, 1.75, 0.25]);
  assert.throws(() => routingScores(Uint32Array.of(4), 4), RangeError);
  assert.throws(() => routingScores(routed, 4, Float32Array.of(1)), RangeError);
});

Deno.test("chooseExpertSet ranks by score, ties and never-routed experts by lower id, up to the quota", () => {
  const scores = [1, 3, 0, 3, 1, 0, 2, 0];
  assert.deepEqual(rankExperts(scores), [1, 3, 6, 0, 4, 2, 5, 7]);
  assert.deepEqual(chooseExpertSet(scores, 3), [1, 3, 6]);
  // a tie at the cut goes to the lower id
  assert.deepEqual(chooseExpertSet(scores, 4), [1, 3, 6, 0]);
  // experts the prompt never routed to fill the quota by id
  assert.deepEqual(chooseExpertSet(scores, 7), [1, 3, 6, 0, 4, 2, 5]);
  assert.deepEqual(chooseExpertSet(scores, 20), rankExperts(scores));
  assert.deepEqual(chooseExpertSet(scores, 0), []);
  assert.throws(() => chooseExpertSet(scores, 1.5), RangeError);
});

Deno.test("chooseExpertSets: one set per layer from its routing, each cut at its own quota", () => {
  // 4 tokens, top-2 of 6 experts, 2 layers
  const layer0 = Uint32Array.of(5, 1, 5, 2, 1, 5, 4, 5);
  const layer1 = Uint32Array.of(0, 3, 3, 0, 3, 1, 3, 2);
  assert.deepEqual(chooseExpertSets([layer0, layer1], 6, [2, 3]), [[5, 1], [3, 0, 1]]);
  assert.deepEqual(chooseExpertSets([layer0, layer1], 6, [4, 1]), [[5, 1, 2, 4], [3]]);
  assert.throws(() => chooseExpertSets([layer0], 6, [2, 2]), RangeError);
  assert.ok(isExpertSetMode("context") && isExpertSetMode("lru"));
  assert.ok(!isExpertSetMode("Context") && !isExpertSetMode(true) && !isExpertSetMode(null));
});

async function withSmall(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "expert_sets_" });
  try {
    await writeFixture(dir, OPTS);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Sorted expert ids of layer l resident in the model's cache. */
function residentIds(model: GpuModel, l: number): number[] {
  return [...model.cache.residentIn(l)].map((k) => k % E).sort((a, b) => a - b);
}

const sorted = (ids: number[]) => [...ids].sort((a, b) => a - b);

/** Runs `fn` with onRouting recording each layer's routing; returns the first L entries (the
 * prefill's, one per layer, when fn starts with a prefill). */
async function prefillRouting(model: GpuModel, fn: () => Promise<unknown>): Promise<Uint32Array[]> {
  const trace: Uint32Array[] = [];
  model.onRouting = (_l, experts) => trace.push(experts.slice());
  try {
    await fn();
  } finally {
    model.onRouting = undefined;
  }
  return trace.slice(0, L);
}

function quotas(model: GpuModel): number[] {
  return Array.from({ length: L }, (_, l) => model.layerQuota(l));
}

Deno.test("context set + router masking: the prompt's set is resident after the prefill, decode loads nothing", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, { maxContext: 128, expertSlots: SLOTS });
    try {
      assert.deepEqual(quotas(model), [6, 6, 6]);
      // another prompt first, so the cache holds what LRU left from it
      const warm = model.newSession({ routerMasking: true });
      await warm.forward(OTHER);
      warm.free();

      // 1. forward(): the prefill chooses the set
      const s = model.newSession({ routerMasking: true, expertSet: "context" });
      assert.equal(s.expertSet, "context");
      const routing = await prefillRouting(model, () => s.forward(PROMPT));
      const want = chooseExpertSets(routing, E, quotas(model));
      for (let l = 0; l < L; l++) {
        assert.deepEqual(residentIds(model, l), sorted(want[l]), `layer ${l}'s resident set`);
        assert.deepEqual(model.sets.pinnedIn(l), sorted(want[l]), `layer ${l}'s pinned set`);
      }
      let loads = model.cache.loads;
      let reruns = model.stats.reruns;
      for (const id of DECODE) await s.forward([id]);
      const r = await s.decode(
        { feed: [7], maxTokens: 24, sampling: GREEDY, eosIds: [] },
        () => undefined,
      );
      assert.equal(r.tokens.length, 24);
      assert.equal(model.cache.loads, loads, "masked decode among the set loads nothing");
      assert.equal(model.stats.reruns, reruns, "and reruns nothing");
      assert.equal(r.stats.expertLoads, 0);
      s.free();
      for (let l = 0; l < L; l++) assert.deepEqual(model.sets.pinnedIn(l), [], "freed: unpinned");

      // 2. decode() alone: the decode loop's prefill chooses the set
      const d = model.newSession({ routerMasking: true, expertSet: "context" });
      let result = null;
      const routing2 = await prefillRouting(model, async () => {
        loads = model.cache.loads;
        reruns = model.stats.reruns;
        result = await d.decode(
          { feed: THIRD, maxTokens: 32, sampling: GREEDY, eosIds: [] },
          () => undefined,
        );
      });
      const want2 = chooseExpertSets(routing2, E, quotas(model));
      for (let l = 0; l < L; l++) {
        assert.deepEqual(residentIds(model, l), sorted(want2[l]), `layer ${l} after decode()`);
      }
      assert.equal(result!.stats.expertLoads, 0, "no load after the first token");
      assert.equal(model.stats.reruns, reruns, "no rerun");
      assert.ok(model.cache.loads > loads, "the prefill loaded what it routed to");
      d.free();
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

Deno.test("context set + router masking: leftover slots are filled, and layers in several slot domains, so decode still loads nothing", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const slots = 20; // 3 x 6 pinned, 2 slots over
      const probe = await GpuModel.open(opened.weights, { gpu, maxContext: 128, expertSlots: 4 });
      const slotBytes = probe.pool.slotBytes;
      probe.destroy();
      for (const variant of [{}, { expertBindingLimit: 2 * slotBytes, expertPoolBindings: 2 }]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 128,
          expertSlots: slots,
          ...variant,
        });
        const domains = model.pool.domains.length;
        try {
          const s = model.newSession({ routerMasking: true, expertSet: "context" });
          let loads = 0;
          let reruns = 0;
          let result = null;
          const routing = await prefillRouting(model, async () => {
            // (a layerwise prefill never reruns: every rerun would be the decode's)
            reruns = model.stats.reruns;
            result = await s.decode(
              { feed: PROMPT, maxTokens: 32, sampling: GREEDY, eosIds: [] },
              () => undefined,
            );
            loads = model.cache.loads;
          });
          const want = chooseExpertSets(routing, E, quotas(model));
          for (let l = 0; l < L; l++) {
            const resident = residentIds(model, l);
            assert.ok(want[l].every((e) => resident.includes(e)), `${domains} domains: layer ${l}`);
            assert.deepEqual(model.sets.pinnedIn(l), sorted(want[l]));
          }
          assert.ok(model.cache.isFull, "the set and the fill leave no slot free");
          assert.equal(result!.stats.expertLoads, 0, `${domains} domains: no decode load`);
          for (const id of DECODE) await s.forward([id]);
          assert.equal(model.cache.loads, loads);
          assert.equal(model.stats.reruns, reruns);
          s.free();
        } finally {
          model.destroy();
        }
        if ("expertBindingLimit" in variant) assert.ok(domains > 1, "several slot domains");
      }
    } finally {
      opened.close();
    }
  });
});

/** Prefill logits (all rows), then per-token logits, then decode-loop tokens. */
async function exactRun(model: GpuModel, opts: SessionOptions) {
  const s = model.newSession(opts);
  const rows = await s.forward(PROMPT);
  for (const id of DECODE) rows.push(...await s.forward([id]));
  s.free();
  const d = model.newSession(opts);
  const r = await d.decode(
    { feed: OTHER, maxTokens: 24, sampling: { ...GREEDY, temperature: 0.8, seed: 5 }, eosIds: [] },
    () => undefined,
  );
  d.free();
  return { rows, tokens: r.tokens };
}

Deno.test("context set in exact mode: logits and tokens bit-identical to exact mode without it", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const full = await GpuModel.open(opened.weights, { gpu, maxContext: 128 });
      const want = await exactRun(full, {});
      full.destroy();
      for (const slots of [SMALL.topK, 7, SLOTS]) {
        const model = await GpuModel.open(opened.weights, {
          gpu,
          maxContext: 128,
          expertSlots: slots,
        });
        const lru = await exactRun(model, { expertSet: "lru" });
        const ctx = await exactRun(model, { expertSet: "context" });
        for (const got of [lru, ctx]) {
          assert.equal(got.rows.length, want.rows.length);
          for (let i = 0; i < want.rows.length; i++) {
            assert.deepEqual(got.rows[i], want.rows[i], `row ${i} differs at ${slots} slots`);
          }
          assert.deepEqual(got.tokens, want.tokens, `decoded tokens at ${slots} slots`);
        }
        assert.equal(model.cache.pinned.size, 0, "exact mode pins nothing");
        model.destroy();
      }
    } finally {
      opened.close();
    }
  });
});

Deno.test("context sets of several sequences share one pinned set; exact sequences beside them stay exact", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const gpu = await openGpu();
    try {
      const full = await GpuModel.open(opened.weights, { gpu, maxContext: 128 });
      const ref = full.newSession();
      const refRows = await ref.forward(THIRD);
      for (const id of DECODE) refRows.push(...await ref.forward([id]));
      full.destroy();

      const model = await GpuModel.open(opened.weights, {
        gpu,
        maxContext: 128,
        expertSlots: SLOTS,
        maxSequences: 3,
      });
      const q = quotas(model);
      const masked = { routerMasking: true, expertSet: "context" } as const;
      const a = model.newSession(masked);
      const routeA = await prefillRouting(model, () => a.forward(PROMPT));
      const b = model.newSession(masked);
      const routeB = await prefillRouting(model, () => b.forward(OTHER));
      // the pinned set: each prompt's routing shares (scores / tokens) summed, then ranked
      const shared = routeA.map((ra, l) => {
        const sa = routingScores(ra, E).map((x) => x / PROMPT.length);
        const sb = routingScores(routeB[l], E).map((x) => x / OTHER.length);
        return chooseExpertSet(sa.map((x, e) => x + sb[e]), q[l]);
      });
      for (let l = 0; l < L; l++) {
        assert.deepEqual(model.sets.pinnedIn(l), sorted(shared[l]), `layer ${l}: shared set`);
        assert.deepEqual(residentIds(model, l), sorted(shared[l]));
      }

      // an exact sequence meanwhile needs other experts: it may take pinned slots, stays exact
      const x = model.newSession();
      const rows = await x.forward(THIRD);
      for (const id of DECODE) rows.push(...await x.forward([id]));
      x.free();
      for (let i = 0; i < refRows.length; i++) assert.deepEqual(rows[i], refRows[i], `row ${i}`);
      assert.ok([...model.cache.pinned].some((k) => !model.cache.isResident(k)), "took pins");

      // the next masked pass loads the set back, then masked decode loads nothing
      await a.forward([DECODE[0]]);
      for (let l = 0; l < L; l++) assert.deepEqual(residentIds(model, l), sorted(shared[l]));
      let loads = model.cache.loads;
      for (const id of DECODE) await a.forward([id]);
      for (const id of DECODE) await b.forward([id]);
      assert.equal(model.cache.loads, loads);

      // b leaves: the pinned set is a's own again
      b.free();
      const own = chooseExpertSets(routeA, E, q);
      for (let l = 0; l < L; l++) assert.deepEqual(model.sets.pinnedIn(l), sorted(own[l]));
      await a.forward([DECODE[1]]);
      for (let l = 0; l < L; l++) assert.deepEqual(residentIds(model, l), sorted(own[l]));
      loads = model.cache.loads;
      for (const id of DECODE) await a.forward([id]);
      assert.equal(model.cache.loads, loads);
      a.free();
      assert.equal(model.cache.pinned.size, 0);
      model.destroy();
    } finally {
      opened.close();
    }
  });
});

Deno.test("all experts resident: a context set changes nothing and pins nothing", async () => {
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, { maxContext: 64 });
    try {
      const s = model.newSession({ routerMasking: true, expertSet: "context" });
      await s.forward(PROMPT);
      assert.equal(model.cache.pinned.size, 0);
      assert.equal(model.sets.pending(0), false);
      s.free();
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

Deno.test("--expert-set is checked and becomes the sessions' default", async () => {
  assert.equal(runtimeOptions({}, 64).expertSet, "lru");
  assert.equal(runtimeOptions({ "expert-set": "context" }, 64).expertSet, "context");
  assert.throws(
    () => runtimeOptions({ "expert-set": "sage" }, 64),
    (e: Error) =>
      e instanceof UsageError && /--expert-set: expected context or lru/.test(e.message),
  );
  await withSmall(async (dir) => {
    const opened = openModelDir(dir);
    const model = await GpuModel.open(opened.weights, {
      maxContext: 64,
      expertSlots: SLOTS,
      expertSet: "context",
    });
    try {
      const s = model.newSession();
      assert.equal(s.expertSet, "context");
      s.free();
      const t = model.newSession({ expertSet: "lru" });
      assert.equal(t.expertSet, "lru");
      t.free();
    } finally {
      model.destroy();
      opened.close();
    }
  });
});

Deno.test("expert_set in a request is parsed, reaches the session, and a bad value is a 400 naming it", async () => {
  const chat = { messages: [{ role: "user", content: "hi" }] };
  assert.equal(parseChatRequest(chat).expertSet, null);
  assert.equal(parseChatRequest({ ...chat, expert_set: "context" }).expertSet, "context");
  assert.equal(parseCompletionRequest({ prompt: "x", expert_set: "lru" }, 300).expertSet, "lru");
  for (const bad of ["sage", true, 1, ["context"]]) {
    assert.throws(
      () => parseChatRequest({ ...chat, expert_set: bad }),
      (e: Error) =>
        e instanceof InvalidParameterError && e.param === "expert_set" &&
        /expected "context" or "lru"/.test(e.message),
    );
  }

  // over HTTP, into the engine's sessions
  const dir = await testModelDir();
  const tokenizer = await loadTokenizer(dir);
  await Deno.remove(dir, { recursive: true });
  const bigram = new BigramTestModel();
  const asked: (SessionOptions["expertSet"])[] = [];
  const model: LanguageModel = {
    config: bigram.config,
    maxContext: bigram.maxContext,
    newSession(o?: SessionOptions) {
      asked.push(o?.expertSet);
      return bigram.newSession();
    },
  };
  const engine = new LocalEngine(model, tokenizer);
  const server = await startTestServer({ engine });
  try {
    const ask = (extra: Record<string, unknown>) =>
      fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: TEST_MODEL_ID, prompt: "ab", max_tokens: 2, ...extra }),
      });
    for (const extra of [{ expert_set: "context" }, { expert_set: "lru" }, {}]) {
      const r = await ask(extra);
      assert.equal(r.status, 200, await r.clone().text());
      await r.body?.cancel();
    }
    assert.deepEqual(asked, ["context", "lru", undefined]);
    const bad = await ask({ expert_set: "sage" });
    assert.equal(bad.status, 400);
    const err = (await bad.json()).error;
    assert.equal(err.param, "expert_set");
    assert.match(err.message, /expected "context" or "lru", got "sage"/);
    assert.equal(asked.length, 3, "a refused request opens no session");
  } finally {
    await server.close();
    await engine.close();
  }
});
