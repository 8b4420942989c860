/** GenerationQueue: one holder at a time, FIFO order, aborted waiters leave the line. */
import assert from "node:assert/strict";
import { GenerationQueue, QueueAbortedError } from "../src/server/queue.ts";

Deno.test("GenerationQueue grants the lock one at a time in arrival order", async () => {
  const q = new GenerationQueue();
  const order: number[] = [];
  let inside = 0;
  let most = 0;
  await Promise.all([0, 1, 2, 3, 4].map((i) =>
    q.run(async () => {
      inside++;
      most = Math.max(most, inside);
      order.push(i);
      await new Promise((r) => setTimeout(r, 1));
      inside--;
    })
  ));
  assert.deepEqual(order, [0, 1, 2, 3, 4]);
  assert.equal(most, 1);
  assert.equal(q.busy, false);
  assert.equal(q.waiting, 0);
});

Deno.test("GenerationQueue drops a waiter whose signal aborts and serves the next one", async () => {
  const q = new GenerationQueue();
  const release = await q.acquire();
  const abort = new AbortController();
  const gone = q.acquire(abort.signal);
  const next = q.acquire();
  assert.equal(q.waiting, 2);
  abort.abort();
  await assert.rejects(gone, QueueAbortedError);
  assert.equal(q.waiting, 1);
  release();
  release(); // a second release is a no-op, not a double grant
  const releaseNext = await next;
  assert.equal(q.busy, true);
  releaseNext();
  assert.equal(q.busy, false);
});
