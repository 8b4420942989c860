/**
 * Serving figures of the embedded default model: starts the real server (main.ts serve's code
 * path, in this process, on a free loopback port), streams chat completions one after another
 * and then 4 at once, and reports time to first token and decode tokens/s from the client's side.
 *
 *   ./bin/deno run -A --unstable-webgpu --unstable-no-legacy-abort bench/server.ts
 */
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { loadTokenizer } from "../src/tokenizer.ts";
import { serve } from "../src/server/app.ts";

/** Tokens per reply: long enough for a steady decode rate, short enough for a quick run. */
const MAX_TOKENS = 64;
const SEQUENTIAL = 5;
const CONCURRENT = 4;
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

const opened = await openModel(DEFAULT_MODEL_DIR);
const model = await GpuModel.open(opened.weights, {
  maxContext: 512,
  expertSource: opened.experts,
});
const tokenizer = await loadTokenizer(DEFAULT_MODEL_DIR);
const stop = new AbortController();
const { server, url } = serve({
  model,
  tokenizer,
  modelId: "default",
  host: "127.0.0.1",
  port: 0,
  signal: stop.signal,
});
await streamOne(url, "warm up");
const seq: Run[] = [];
for (let i = 0; i < SEQUENTIAL; i++) seq.push(await streamOne(url, PROMPTS[i % PROMPTS.length]));
const t0 = performance.now();
const conc = await Promise.all(
  Array.from({ length: CONCURRENT }, (_, i) => streamOne(url, PROMPTS[i % PROMPTS.length])),
);
const concWall = (performance.now() - t0) / 1000;
const c = model.config;
console.log(`machine: ${model.gpu.adapterInfo.description}; ${Deno.build.target}`);
console.log(
  `model: default (${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numExperts} experts ` +
    `top-${c.topK}, vocab ${c.vocabSize}), replies of up to ${MAX_TOKENS} tokens, greedy`,
);
console.log(
  `sequential (${SEQUENTIAL} requests): TTFT median ${
    median(seq.map((r) => r.ttftMs)).toFixed(1)
  }` +
    ` ms, decode median ${median(seq.map((r) => r.decodeTokPerS)).toFixed(1)} tokens/s`,
);
const total = conc.reduce((n, r) => n + r.tokens, 0);
console.log(
  `${CONCURRENT} concurrent (queued FIFO): TTFT ${
    conc.map((r) => r.ttftMs.toFixed(0)).join(", ")
  }` +
    ` ms; ${total} tokens in ${concWall.toFixed(2)} s = ${(total / concWall).toFixed(1)} tokens/s`,
);
console.log(`GPU readbacks per step: ${(model.stats.readbacks / model.stats.steps).toFixed(2)}`);
stop.abort();
await server.finished;
model.destroy();
opened.close();
