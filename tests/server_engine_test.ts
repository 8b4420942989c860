/**
 * One suite run against both Engine implementations over the bigram test model: LocalEngine in
 * this thread and WorkerEngine with the model in a Deno Worker. Pieces and results, FIFO turns,
 * aborts while waiting and while running, early return() and close() behave the same.
 */
import assert from "node:assert/strict";
import type { Engine, EngineJob } from "../src/engine/engine.ts";
import { EngineClosedError } from "../src/engine/engine.ts";
import { LocalEngine } from "../src/engine/local.ts";
import { WorkerEngine } from "../src/engine/worker_engine.ts";
import { GenerationAbortedError } from "../src/generate.ts";
import { QueueAbortedError } from "../src/server/queue.ts";
import { GREEDY } from "../src/sampling.ts";
import { type BigramEngineOptions, openBigramEngineModel, testModelSpec } from "./_test_model.ts";

const NEWLINE = 10; // the bigram model continues "\n" with "abc..."

const IMPLEMENTATIONS: [string, (o: BigramEngineOptions) => Promise<Engine>][] = [
  ["LocalEngine", async (o) => {
    const m = await openBigramEngineModel(o);
    return new LocalEngine(m.model, m.tokenizer, { stats: m.stats });
  }],
  ["WorkerEngine", (o) => WorkerEngine.start(testModelSpec("openBigramEngineModel", o))],
];

function job(maxTokens: number): EngineJob {
  return {
    promptIds: [NEWLINE],
    maxTokens,
    stop: [],
    sampling: GREEDY,
    routerMasking: null,
    stepsPerReadback: null,
  };
}

/** Polls the engine's stats until `check` holds (a worker's snapshot arrives by message). */
async function eventually(engine: Engine, check: (s: Record<string, number>) => boolean) {
  const POLL_LIMIT = 500; // 500 * 10 ms
  for (let i = 0; i < POLL_LIMIT && !check(engine.stats()); i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(check(engine.stats()), JSON.stringify(engine.stats()));
}

for (const [name, open] of IMPLEMENTATIONS) {
  Deno.test(`${name}.run() yields one piece per token and returns the usage`, async () => {
    const engine = await open({});
    try {
      assert.equal(engine.info.maxContext, 256);
      const it = engine.run(job(5), new AbortController().signal);
      const texts: string[] = [];
      let step;
      while (!(step = await it.next()).done) texts.push(step.value.text);
      assert.deepEqual(texts, ["a", "b", "c", "d", "e"]);
      const { finishReason, text, promptTokens, completionTokens } = step.value;
      assert.deepEqual({ finishReason, text, promptTokens, completionTokens }, {
        finishReason: "length",
        text: "abcde",
        promptTokens: 1,
        completionTokens: 5,
      });
      const s = engine.stats(); // a worker pushed its figures before the result
      assert.equal(s.liveSessions, 0);
      assert.equal(s.sessionsCreated, 1);
      assert.equal(s.bigramLiveSessions, 0);
    } finally {
      await engine.close();
    }
  });

  Deno.test(`${name}.run() waits its turn; aborts end a waiting job and a running one`, async () => {
    const engine = await open({ stepDelayMs: 2 });
    try {
      const first = new AbortController();
      const running = engine.run(job(10_000), first.signal);
      assert.equal((await running.next()).value.text, "a");
      const second = new AbortController();
      const waiting = engine.run(job(3), second.signal);
      const turn = waiting.next();
      await eventually(engine, (s) => s.queueWaiting === 1 && s.queueBusy === 1);
      second.abort();
      await assert.rejects(turn, QueueAbortedError);
      first.abort();
      await assert.rejects(async () => {
        while (!(await running.next()).done);
      }, GenerationAbortedError);
      await eventually(engine, (s) => s.liveSessions === 0 && s.queueBusy === 0);
      assert.equal(engine.stats().bigramMaxLiveSessions, 1);
    } finally {
      await engine.close();
    }
  });

  Deno.test(`${name}.run() frees the session when its generator returns early`, async () => {
    const engine = await open({ stepDelayMs: 2 });
    try {
      const it = engine.run(job(10_000), new AbortController().signal);
      await it.next();
      await it.return(undefined as never);
      await eventually(engine, (s) => s.liveSessions === 0 && s.bigramLiveSessions === 0);
      const next = engine.run(job(2), new AbortController().signal);
      while (!(await next.next()).done);
      assert.equal(engine.stats().sessionsCreated, 2);
    } finally {
      await engine.close();
    }
  });

  Deno.test(`${name}.close() ends a running job and refuses new ones`, async () => {
    const engine = await open({ stepDelayMs: 2 });
    const it = engine.run(job(10_000), new AbortController().signal);
    await it.next();
    const ended = assert.rejects(async () => {
      while (!(await it.next()).done);
    }, GenerationAbortedError);
    await engine.close();
    await ended;
    await assert.rejects(
      engine.run(job(1), new AbortController().signal).next(),
      EngineClosedError,
    );
  });
}
