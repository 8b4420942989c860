/**
 * Serving figures of the embedded default model: starts the real server (main.ts serve's code
 * path: serve() here, the model in a WorkerEngine, on a free loopback port), streams chat
 * completions one after another and then 4 at once, and reports time to first token and decode
 * tokens/s from the client's side, and the latency of GET /health (asked every ~20 ms) during the
 * 4 concurrent generations; then the same /health figure with the model in this thread
 * (LocalEngine), where every GPU readback blocks the server.
 *
 *   ./bin/deno run -A --unstable-webgpu --unstable-no-legacy-abort bench/server.ts
 */
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";
import type { Engine } from "../src/engine/engine.ts";
import { LocalEngine } from "../src/engine/local.ts";
import { WorkerEngine } from "../src/engine/worker_engine.ts";

/** Tokens per reply: long enough for a steady decode rate, short enough for a quick run. */
const MAX_TOKENS = 64;
const SEQUENTIAL = 5;
const CONCURRENT = 4;
/** Context of the served sessions (prompt + reply fit with room to spare). */
const MAX_CONTEXT = 512;
/** Pause between /health requests while generations run. */
const HEALTH_POLL_MS = 20;
const PROMPTS = [
  "Tell me about the sea.",
  "What did the king say to his servants?",
  "Write a short story about a hacker.",
  "In the beginning",
  "Who was Moses?",
];

interface Run {
  ttftMs: number;
  tokens: number;
  decodeTokPerS: number;
  totalMs: number;
}

async function streamOne(url: string, prompt: string): Promise<Run> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "default",
      messages: [{ role: "user", content: prompt }],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let first = 0;
  let last = 0;
  let tokens = 0;
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of res.body) {
    buf += dec.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, nl);
      buf = buf.slice(nl + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const data = JSON.parse(event.slice(6));
      if (data.usage) tokens = data.usage.completion_tokens;
      if (data.choices?.[0]?.delta?.content) {
        last = performance.now();
        if (first === 0) first = last;
      }
    }
  }
  const decodeMs = last - first;
  return {
    ttftMs: first - t0,
    tokens,
    decodeTokPerS: decodeMs > 0 ? (tokens - 1) / (decodeMs / 1000) : 0,
    totalMs: performance.now() - t0,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Streams CONCURRENT replies at once while GET /health is asked every HEALTH_POLL_MS. */
async function concurrentWithHealth(url: string) {
  let running = true;
  const health: number[] = [];
  const polling = (async () => {
    while (running) {
      const t0 = performance.now();
      const res = await fetch(`${url}/health`);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`/health answered ${res.status}`);
      health.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, HEALTH_POLL_MS));
    }
  })();
  const t0 = performance.now();
  const runs = await Promise.all(
    Array.from({ length: CONCURRENT }, (_, i) => streamOne(url, PROMPTS[i % PROMPTS.length])),
  );
  const wall = (performance.now() - t0) / 1000;
  running = false;
  await polling;
  return { runs, wall, health };
}

function healthFigure(health: number[]): string {
  return `/health during ${CONCURRENT} concurrent streams: median ${
    median(health).toFixed(1)
  } ms,` +
    ` max ${Math.max(...health).toFixed(1)} ms over ${health.length} requests`;
}

const tokenizer = await loadTokenizer(DEFAULT_MODEL_DIR);

/** Runs serve() over `engine` until `fn` is done. */
async function withServer<T>(engine: Engine, fn: (url: string) => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const { server, url } = serve({
    engine,
    tokenizer,
    modelId: "default",
    host: "127.0.0.1",
    port: 0,
    signal: stop.signal,
  });
  try {
    return await fn(url);
  } finally {
    stop.abort();
    await server.finished;
  }
}

// the model in the engine worker, as main.ts serve runs it
const worker = await WorkerEngine.start({
  kind: "runtime",
  flags: { "max-context": String(MAX_CONTEXT) },
  defaultContext: MAX_CONTEXT,
});
const { seq, conc } = await withServer(worker, async (url) => {
  await streamOne(url, "warm up");
  const seq: Run[] = [];
  for (let i = 0; i < SEQUENTIAL; i++) seq.push(await streamOne(url, PROMPTS[i % PROMPTS.length]));
  return { seq, conc: await concurrentWithHealth(url) };
});
const workerStats = worker.stats();
await worker.close();

// the same model in this thread: each GPU readback blocks the server's event loop
const opened = await openModel(DEFAULT_MODEL_DIR);
const model = await GpuModel.open(opened.weights, {
  maxContext: MAX_CONTEXT,
  expertSource: opened.experts,
});
const local = new LocalEngine(model, tokenizer);
const inThread = await withServer(local, async (url) => {
  await streamOne(url, "warm up");
  return await concurrentWithHealth(url);
});
await local.close();

const c = model.config;
console.log(`machine: ${model.gpu.adapterInfo.description}; ${Deno.build.target}`);
console.log(
  `model: default (${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numExperts} experts ` +
    `top-${c.topK}, vocab ${c.vocabSize}), replies of up to ${MAX_TOKENS} tokens, greedy, ` +
    `model in the engine worker`,
);
console.log(
  `sequential (${SEQUENTIAL} requests): TTFT median ${
    median(seq.map((r) => r.ttftMs)).toFixed(1)
  }` +
    ` ms, decode median ${median(seq.map((r) => r.decodeTokPerS)).toFixed(1)} tokens/s`,
);
const total = conc.runs.reduce((n, r) => n + r.tokens, 0);
console.log(
  `${CONCURRENT} concurrent (queued FIFO): TTFT ${
    conc.runs.map((r) => r.ttftMs.toFixed(0)).join(", ")
  }` +
    ` ms; ${total} tokens in ${conc.wall.toFixed(2)} s = ${
      (total / conc.wall).toFixed(1)
    } tokens/s`,
);
console.log(`${healthFigure(conc.health)} (model in the engine worker)`);
console.log(`${healthFigure(inThread.health)} (model in the server's thread, for comparison)`);
console.log(
  `GPU readbacks per step: ${(workerStats.gpuReadbacks / workerStats.gpuSteps).toFixed(2)}`,
);
model.destroy();
opened.close();
