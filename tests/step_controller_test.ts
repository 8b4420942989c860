/**
 * The decode loop's batch controller (src/gpu/decode_loop.ts StepController): steps per batch from
 * the measured cycle, halved after a miss; and pipelining (encoding the next batch before the
 * current one is read) stopped while most recent cycles had to repair a miss, resumed when misses
 * become rare. Hand-worked moving averages.
 */
import assert from "node:assert/strict";
import {
  FIRST_BATCH_STEPS,
  MISS_RATE_WEIGHT,
  PIPELINE_MAX_MISS_RATE,
  StepController,
  TARGET_BATCH_MS,
} from "../src/gpu/decode_loop.ts";

Deno.test("StepController sizes batches from the cycle time and halves them after a miss", () => {
  const c = new StepController();
  assert.equal(c.steps, FIRST_BATCH_STEPS);
  c.observe(1, TARGET_BATCH_MS / 8); // a step took an eighth of the target
  assert.equal(c.steps, 8);
  c.missed();
  assert.equal(c.steps, 4);
  c.reset();
  assert.equal(c.steps, FIRST_BATCH_STEPS);
});

Deno.test("StepController stops pipelining while most cycles miss and resumes when they stop", () => {
  assert.equal(MISS_RATE_WEIGHT, 0.25);
  assert.equal(PIPELINE_MAX_MISS_RATE, 0.5);
  const c = new StepController();
  assert.equal(c.missRate, 0);
  assert.ok(c.pipelines, "no budget, no misses: pipelined");
  const rates: number[] = [];
  for (const missed of [true, true, true, false, false]) {
    c.cycle(missed);
    rates.push(c.missRate);
  }
  // 0.25, 0.4375, 0.578125, then x 0.75: 0.43359375, 0.3251953125
  assert.deepEqual(rates, [0.25, 0.4375, 0.578125, 0.43359375, 0.3251953125]);
  const c2 = new StepController();
  const pipelines = [true, true, true, false, false].map((m) => (c2.cycle(m), c2.pipelines));
  assert.deepEqual(pipelines, [true, true, false, true, true]);
  c2.cycle(true);
  c2.cycle(true);
  c2.reset();
  assert.ok(!c2.pipelines, "reset keeps the miss rate: it describes the budget");
});
