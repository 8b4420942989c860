/**
 * /metrics against the Prometheus text exposition rules (format 0.0.4): one HELP and TYPE per
 * family, counters named `_total`, histograms with cumulative buckets ending at +Inf = _count;
 * generations a client aborts are counted (outcome label, tokens, time to first token); expert
 * loads of unknown source are their own series.
 */
import assert from "node:assert/strict";
import { startTestServer, TEST_MODEL_ID, type TestServer } from "./_test_model.ts";
import { ExpertMetrics, loadFigures } from "../src/experts/metrics.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  type: string;
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parses an exposition, asserting its syntax; samples are grouped under their family. */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const seen = { help: new Set<string>(), type: new Set<string>() };
  assert.ok(text.endsWith("\n"), "the exposition ends with a newline");
  for (const line of text.slice(0, -1).split("\n")) {
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta;
      assert.match(name, NAME, line);
      const key = kind === "HELP" ? "help" : "type";
      assert.ok(!seen[key].has(name), `${kind} ${name} given twice`);
      seen[key].add(name);
      const f = families.get(name) ?? { type: "", help: "", samples: [] };
      if (kind === "TYPE") {
        assert.ok(["counter", "gauge", "histogram", "summary", "untyped"].includes(rest), line);
        assert.equal(f.samples.length, 0, `TYPE ${name} after its samples`);
        f.type = rest;
      } else f.help = rest;
      families.set(name, f);
      continue;
    }
    const m = /^([^{\s]+)(\{[^}]*\})? (\S+)$/.exec(line);
    assert.ok(m, `sample line: ${line}`);
    const [, name, labelText = "", valueText] = m;
    assert.match(name, NAME, line);
    const labels: Record<string, string> = {};
    for (const [, k, v] of labelText.matchAll(LABEL)) labels[k] = v;
    const value = Number(valueText);
    assert.ok(!Number.isNaN(value) || valueText === "NaN", line);
    const family = [name, name.replace(/_(bucket|sum|count)$/, "")].find((n) => families.has(n));
    assert.ok(family, `sample ${name} belongs to no declared family`);
    families.get(family)!.samples.push({ name, labels, value });
  }
  return families;
}

/** A bucket's upper bound ("+Inf" included). */
function bound(s: Sample): number {
  return s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
}

/** The Prometheus conventions this server promises. */
function checkConventions(families: Map<string, Family>): void {
  for (const [name, f] of families) {
    assert.ok(f.type !== "" && f.help !== "", `${name} has HELP and TYPE`);
    assert.ok(name.startsWith("qwen_moe_"), name);
    if (f.type === "counter") {
      assert.match(name, /_total$/, `counter ${name} is named _total`);
      for (const s of f.samples) assert.ok(s.value >= 0, `${name} >= 0`);
    } else assert.doesNotMatch(name, /_total$/, `${f.type} ${name} is not named _total`);
    if (f.type === "histogram") {
      const series = new Map<string, Sample[]>();
      for (const s of f.samples) {
        const { le: _, ...rest } = s.labels;
        const key = JSON.stringify(rest);
        series.set(key, [...series.get(key) ?? [], s]);
      }
      for (const [key, samples] of series) {
        const buckets = samples.filter((s) => s.name === `${name}_bucket`);
        const count = samples.find((s) => s.name === `${name}_count`);
        assert.ok(samples.some((s) => s.name === `${name}_sum`), `${name}${key} has _sum`);
        assert.ok(count, `${name}${key} has _count`);
        assert.equal(buckets.at(-1)?.labels.le, "+Inf", `${name}${key} ends at +Inf`);
        assert.equal(buckets.at(-1)?.value, count.value, `${name}${key}: +Inf = _count`);
        for (let i = 1; i < buckets.length; i++) {
          assert.ok(bound(buckets[i]) > bound(buckets[i - 1]), `${name} le rises`);
          assert.ok(buckets[i].value >= buckets[i - 1].value, `${name} buckets are cumulative`);
        }
      }
    }
  }
}

function value(families: Map<string, Family>, name: string, labels: Record<string, string> = {}) {
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) {
        return s.value;
      }
    }
  }
  assert.fail(`no sample ${name} ${JSON.stringify(labels)}`);
}

async function metrics(server: TestServer): Promise<Map<string, Family>> {
  const families = parseExposition(await (await fetch(`${server.url}/metrics`)).text());
  checkConventions(families);
  return families;
}

function stream(server: TestServer, maxTokens: number, signal?: AbortSignal) {
  return fetch(`${server.url}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({
      model: TEST_MODEL_ID,
      prompt: "xyz",
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
    }),
    signal,
  });
}

async function eventually(check: () => boolean, what: string): Promise<void> {
  const POLL_LIMIT = 500; // 500 * 10 ms
  for (let i = 0; i < POLL_LIMIT; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`never happened: ${what}`);
}

Deno.test("/metrics follows the Prometheus exposition rules: counters _total, histograms with buckets to +Inf = _count", async () => {
  const server = await startTestServer({
    cacheFigures: {
      hits: 30,
      misses: 10,
      evictions: 4,
      bytesUploaded: 2048,
      gpuSteps: 7,
      gpuGuessesUsed: 5,
      gpuGuessesMissed: 2,
    },
  });
  try {
    checkConventions(await metrics(server)); // before any generation too
    for (let i = 0; i < 3; i++) await (await stream(server, 4)).text();
    const m = await metrics(server);
    assert.equal(m.get("qwen_moe_time_to_first_token_seconds")?.type, "histogram");
    assert.equal(value(m, "qwen_moe_time_to_first_token_seconds_count"), 3);
    assert.equal(value(m, "qwen_moe_time_to_first_token_seconds_bucket", { le: "+Inf" }), 3);
    assert.equal(value(m, "qwen_moe_expert_cache_hits_total"), 30);
    assert.equal(value(m, "qwen_moe_gpu_steps_total"), 7);
    assert.equal(value(m, "qwen_moe_gpu_guesses_used_total"), 5);
    assert.equal(value(m, "qwen_moe_gpu_guesses_missed_total"), 2);
    assert.equal(value(m, "qwen_moe_sessions_created_total"), 3);
    assert.equal(value(m, "qwen_moe_expert_cache_hit_rate"), 0.75);
    assert.equal(m.get("qwen_moe_expert_cache_hit_rate")?.type, "gauge");
  } finally {
    await server.close();
  }
});

Deno.test("/metrics counts a generation the client aborts: outcome label, its tokens and its time to first token", async () => {
  const server = await startTestServer({ maxContext: 100_000, stepDelayMs: 5 });
  try {
    await (await stream(server, 3)).text(); // one completed
    const abort = new AbortController();
    const res = await stream(server, 50_000, abort.signal);
    const reader = res.body!.getReader();
    for (let events = 0; events < 3;) { // three tokens streamed, then the client goes
      const { value: chunk } = await reader.read();
      events += new TextDecoder().decode(chunk).split("data: ").length - 1;
    }
    abort.abort();
    await reader.cancel().catch(() => {});
    await eventually(() => server.stats().liveSessions === 0, "the aborted session was freed");
    const m = await metrics(server);
    assert.equal(value(m, "qwen_moe_generations_total", { outcome: "completed" }), 1);
    assert.equal(value(m, "qwen_moe_generations_total", { outcome: "aborted" }), 1);
    assert.equal(value(m, "qwen_moe_generations_total", { outcome: "failed" }), 0);
    assert.equal(value(m, "qwen_moe_time_to_first_token_seconds_count"), 2);
    assert.equal(value(m, "qwen_moe_prompt_tokens_total"), 6);
    assert.ok(value(m, "qwen_moe_completion_tokens_total") >= 3 + 3);
  } finally {
    await server.close();
  }
});

Deno.test("expert loads of unknown source (pread, compiled binary) are counted as unknown, not warm", async () => {
  const m = new ExpertMetrics();
  m.recordLoad("warm", 1);
  m.recordLoad(null, 2); // the reader could not tell
  m.recordLoad("unknown", 4);
  const s = m.snapshot();
  assert.equal(s.latency.warm.count, 1);
  assert.equal(s.latency.unknown.count, 2);
  const f = loadFigures(s);
  assert.equal(f.unknownLoads, 2);
  assert.equal(f.unknownLoadMeanSeconds, 0.003);
  assert.equal(f.unknownLoadSeconds, 0.006);
  assert.equal(f.warmLoadSeconds, 0.001);
  assert.equal(f.warmLoads, 1);
  const server = await startTestServer({ cacheFigures: f });
  try {
    const families = await metrics(server);
    assert.equal(value(families, "qwen_moe_expert_loads_total", { source: "unknown" }), 2);
    assert.equal(value(families, "qwen_moe_expert_loads_total", { source: "warm" }), 1);
    assert.equal(
      value(families, "qwen_moe_expert_load_mean_seconds", { source: "unknown" }),
      0.003,
    );
    assert.equal(
      value(families, "qwen_moe_expert_load_seconds_total", { source: "unknown" }),
      0.006,
    );
  } finally {
    await server.close();
  }
});
