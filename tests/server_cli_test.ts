/**
 * expertCacheStats(): the GPU expert cache snapshot flattened for /metrics and /stats; serve's
 * --steps-per-readback takes a positive integer only.
 */
import assert from "node:assert/strict";
import { ExpertMetrics } from "../src/experts/metrics.ts";
import { expertCacheStats, serveCommand } from "../src/server/cli.ts";
import { UsageError } from "../src/cli/args.ts";

Deno.test("expertCacheStats() flattens counters and gives load latencies in seconds", () => {
  const m = new ExpertMetrics();
  m.hits = 6;
  m.misses = 2;
  m.evictions = 1;
  m.bytesUploaded = 4096;
  m.recordLoad("cold", 20);
  m.recordLoad("cold", 40);
  m.recordLoad("warm", 2);
  const s = expertCacheStats(m.snapshot());
  assert.equal(s.hits, 6);
  assert.equal(s.misses, 2);
  assert.equal(s.hitRate, 0.75);
  assert.equal(s.evictions, 1);
  assert.equal(s.bytesUploaded, 4096);
  assert.equal(s.coldLoads, 2);
  assert.ok(Math.abs(s.coldLoadMeanSeconds - 0.03) < 1e-12);
  assert.equal(s.warmLoads, 1);
  assert.ok(Math.abs(s.warmLoadMeanSeconds - 0.002) < 1e-12);
});

Deno.test("serveCommand() refuses a --steps-per-readback that is not a positive integer", async () => {
  for (const bad of ["0", "-2", "1.5", "many"]) {
    await assert.rejects(serveCommand(["--steps-per-readback", bad]), UsageError, bad);
  }
});

Deno.test("serveCommand() checks its flags before loading anything: ports, origins, the key", async () => {
  const missing = "/nonexistent/model/dir"; // a flag error must come before this fails to load
  const cases: [string[], RegExp][] = [
    [["--port", "70000"], /--port/],
    [["--port", "0x1f40"], /--port/],
    [["--max-body-bytes", "Infinity"], /--max-body-bytes/],
    [["--cors-origin", "not a url"], /--cors-origin/],
    [["--cors-origin", "https://app.example/path"], /--cors-origin/],
    [["--api-key-all"], /--api-key-all needs --api-key/],
    [["--api-key", ""], /--api-key: the key is empty/],
    [["--expert-slots", "1e3"], /--expert-slots/],
  ];
  const saved = Deno.env.get("QWEN_MOE_API_KEY");
  Deno.env.delete("QWEN_MOE_API_KEY");
  try {
    for (const [args, message] of cases) {
      await assert.rejects(serveCommand(["--model", missing, ...args]), (e: Error) => {
        assert.ok(e instanceof UsageError, `${args}: ${e}`);
        assert.match(e.message, message);
        return true;
      });
    }
  } finally {
    if (saved !== undefined) Deno.env.set("QWEN_MOE_API_KEY", saved);
  }
});
