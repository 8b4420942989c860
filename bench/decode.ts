/**
 * Decode speed before and after the GPU decode loop, side by side in one run: greedy tokens/s,
 * readbacks and submits per token of `Session.decode` with one readback per token (steps per
 * readback 1: the old loop, unpipelined; the baseline) and with the adaptive, pipelined loop, on
 * TINY, SMALL, the embedded default model and two layers of real Qwen3-30B-A3B shapes; next to
 * prefill speed, the weight bytes a decoded token reads and a memcpy measured in the same run.
 * Then /health latency of a real `main.ts serve` subprocess during 4 concurrent streamed chats.
 * Not a test: prints one table and writes bench/out/decode.json.
 *
 *   ./bin/deno run -A --unstable-webgpu bench/decode.ts [--tokens N] [--real-tokens N]
 *     [--reps N] [--real-experts E] [--real-vocab V] [--no-server]
 *
 * Every figure printed is measured in this run; the only estimates are the real-shape fixture's
 * generation time and memory, used to choose its expert count and vocab before writing it, and
 * they are printed as estimates beside the measured values.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { type FixtureOptions, mulberry32, SMALL, TINY, writeFixture } from "../weights/fixture.ts";
import { DEFAULT_MODEL_DIR, type OpenedModel, openModel, openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { TARGET_BATCH_MS } from "../src/gpu/decode_loop.ts";
import { GREEDY } from "../src/sampling.ts";
import type { DecodeStats, FloatDType, ModelConfig } from "../src/types.ts";
import { measureMemcpy, median } from "./memcpy.ts";
import { getJson, SERVE_ARGS, sleep, sseEvents, startServe } from "./serve_process.ts";

/** Prompt tokens fed before the decode ("a short prefill"). */
const DECODE_PREFILL_TOKENS = 8;
/** Tokens per timed decode of the small models (--tokens): the adaptive controller settles on
 * its batch size within the first few readbacks and then runs tens of steps per readback. */
const DEFAULT_TOKENS = 256;
/** Tokens per timed decode of the real-shape model (--real-tokens): a step takes about 100 ms on
 * llvmpipe, as long as the controller's batch target, so its batches hold one or two steps and
 * settle at once; fewer tokens keep the run short. */
const DEFAULT_REAL_TOKENS = 32;
/** Timed decodes per mode (--reps), the two modes alternating; medians are reported. */
const DEFAULT_REPS = 5;
/** Tokens of the untimed warm-up decode in each mode (pipeline compilation, first touches). */
const WARMUP_TOKENS = 32;
/** Prompt length of the prefill measurement; also maxBatch, so it runs as one forward step. */
const PREFILL_PROMPT_TOKENS = 64;
/** Timed prefills (after one untimed); the median is reported. */
const PREFILL_REPS = 3;
/** Seed of the random prompt ids (any fixed value: the fixtures' weights are random anyway). */
const PROMPT_SEED = 7;
const OUT_FILE = new URL("./out/decode.json", import.meta.url).pathname;
const DEFAULT_NAME = "default";

/** The goals on this machine, checked from the table. */
const GOALS = {
  /** tok/s adaptive / tok/s with one readback per token, default model. */
  defaultSpeedup: 2.5,
  /** The same ratio on TINY. */
  tinySpeedup: 4,
  /** Readbacks per decoded token of the adaptive loop, all experts resident. */
  readbacksPerToken: 0.125,
};

/** Weight bytes one decoded token reads, from the shapes (norm vectors and KV cache left out). */
export interface BytesPerToken {
  attention: number; // q, k, v, o projections, all layers
  router: number; // the gate matrix [E, D], all layers
  experts: number; // K experts x (gate, up, down), all layers
  lmHead: number; // [V, D]
  total: number;
}

export function bytesPerToken(c: ModelConfig, elemBytes: number): BytesPerToken {
  const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh, numLayers: L } = c;
  const attention = L * (2 * Hq * Dh * D + 2 * Hkv * Dh * D) * elemBytes;
  const router = L * c.numExperts * D * elemBytes;
  const experts = L * c.topK * 3 * c.moeIntermediateSize * D * elemBytes;
  const lmHead = c.vocabSize * D * elemBytes;
  return { attention, router, experts, lmHead, total: attention + router + experts + lmHead };
}

function promptIds(n: number, vocab: number): number[] {
  const rand = mulberry32(PROMPT_SEED);
  return Array.from({ length: n }, () => Math.floor(rand() * vocab));
}

// ---- the real-shape fixture ----

/** Layers of the real-shape model: two, so it fits a shared machine and still chains layers. */
const REAL_LAYERS = 2;
const REAL_NAME = `30B-A3B x${REAL_LAYERS}`;
/** Qwen3-30B-A3B's layer shapes (its config.json), BF16 like the released checkpoint. */
export const QWEN3_30B_A3B: FixtureOptions = {
  ...TINY,
  dtype: "BF16",
  layers: REAL_LAYERS,
  hidden: 2048,
  heads: 32,
  kvHeads: 4,
  headDim: 128,
  experts: 128,
  topK: 8,
  inter: 768,
  vocab: 151936,
};
/** Fallbacks, in order, when the full model would be too slow or too big to generate. */
const REAL_FALLBACKS = [{ experts: 32, vocab: 151936 }, { experts: 32, vocab: 32768 }];
/** writeFixture time allowed for the real-shape model (the brief: about two minutes). */
const GENERATION_LIMIT_S = 120;
/** Peak memory allowed for writeFixture: a quarter of this 24 GiB machine, shared with others. */
const GENERATION_LIMIT_BYTES = 6 * 2 ** 30;
/** writeFixture holds every tensor as f32 values and as encoded bytes until it returns. */
const GENERATION_BYTES_PER_PARAM: Record<FloatDType, number> = {
  F32: 8,
  BF16: 6,
  F16: 6,
};
/** Calibration fixture: one layer of the real shapes with few experts and a small vocab. */
const CALIBRATION: Partial<FixtureOptions> = { layers: 1, experts: 2, topK: 2, vocab: 2048 };

/** Parameters a fixture holds (every tensor writeFixture writes, norms included). */
export function paramCount(o: FixtureOptions): number {
  const { hidden: D, heads: Hq, kvHeads: Hkv, headDim: Dh, experts: E, inter: I, vocab: V } = o;
  const layer = 2 * Hq * Dh * D + 2 * Hkv * Dh * D + 2 * D + 2 * Dh + E * D + E * 3 * I * D;
  return V * D * (o.tieEmbeddings ? 1 : 2) + o.layers * layer + D;
}

/** Measured writeFixture speed (parameters per second) on the calibration fixture. */
async function calibrate(tmp: string): Promise<{ params: number; seconds: number }> {
  const opts = { ...QWEN3_30B_A3B, ...CALIBRATION };
  const dir = `${tmp}/calibration`;
  const t0 = performance.now();
  await writeFixture(dir, opts);
  const seconds = (performance.now() - t0) / 1000;
  await Deno.remove(dir, { recursive: true });
  return { params: paramCount(opts), seconds };
}

/**
 * The real-shape options to benchmark: the full shape if its estimated generation time and
 * memory fit the limits, else the first fallback that does (or what --real-experts/--real-vocab
 * force). Returns the estimates of every candidate considered.
 */
async function pickRealShape(tmp: string, force: { experts?: number; vocab?: number }) {
  const cal = await calibrate(tmp);
  const paramsPerS = cal.params / cal.seconds;
  const candidates = force.experts || force.vocab
    ? [{
      experts: force.experts ?? QWEN3_30B_A3B.experts,
      vocab: force.vocab ?? QWEN3_30B_A3B.vocab,
    }]
    : [{ experts: QWEN3_30B_A3B.experts, vocab: QWEN3_30B_A3B.vocab }, ...REAL_FALLBACKS];
  const considered = [];
  for (const c of candidates) {
    const options = { ...QWEN3_30B_A3B, ...c };
    const params = paramCount(options);
    const estSeconds = params / paramsPerS;
    const estPeakBytes = params * GENERATION_BYTES_PER_PARAM[options.dtype];
    const fits = estSeconds <= GENERATION_LIMIT_S && estPeakBytes <= GENERATION_LIMIT_BYTES;
    considered.push({ ...c, params, estSeconds, estPeakBytes, fits });
    const billions = (params / 1e9).toFixed(2);
    console.error(
      `real shape, ${c.experts} experts, vocab ${c.vocab}: ${billions} B params, ` +
        `generation estimated ${estSeconds.toFixed(0)} s and ` +
        `${(estPeakBytes / 2 ** 30).toFixed(1)} GiB peak -> ${fits ? "use" : "too big/slow"}`,
    );
    if (fits || candidates.length === 1) {
      return { options, report: { calibration: { ...cal, paramsPerS }, considered } };
    }
  }
  throw new Error("no real-shape candidate fits; pass --real-experts and --real-vocab");
}

/** Flag that makes this script write one fixture and exit (the child side of the next function). */
const CHILD_FLAG = "--write-fixture";

/**
 * writeFixture in a child process, so its several GiB of arrays are returned to the system before
 * the benchmark loads the model. Returns the child's measured time and peak resident memory.
 */
export async function writeFixtureInChild(dir: string, opts: FixtureOptions) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, CHILD_FLAG, dir, JSON.stringify(opts)],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`fixture child failed (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout)) as GenerationResult;
}

export interface GenerationResult {
  seconds: number;
  /** VmHWM of the writing process (measured only for the real-shape child). */
  peakRssBytes?: number;
}

async function childMain(dir: string, json: string): Promise<void> {
  const t0 = performance.now();
  await writeFixture(dir, JSON.parse(json));
  const seconds = (performance.now() - t0) / 1000;
  const hwm = /^VmHWM:\s*(\d+) kB/m.exec(Deno.readTextFileSync("/proc/self/status"));
  const result: GenerationResult = {
    seconds,
    peakRssBytes: hwm ? Number(hwm[1]) * 1024 : undefined,
  };
  console.log(JSON.stringify(result));
}

async function writeFixtureTimed(dir: string, opts: FixtureOptions): Promise<GenerationResult> {
  const t0 = performance.now();
  await writeFixture(dir, opts);
  return { seconds: (performance.now() - t0) / 1000 };
}

// ---- timing ----

/** The two decode loops compared: steps per readback 1 (the baseline) and adaptive. */
export const MODES = [
  { name: "spr1", stepsPerReadback: 1 },
  { name: "adaptive", stepsPerReadback: undefined },
] as const;
export type ModeName = (typeof MODES)[number]["name"];

/** One greedy decode through Session.decode, and what its stats say. */
export interface DecodeRun {
  /** Every token kept (the first one comes back with the prefill's readback). */
  tokens: number[];
  stats: DecodeStats;
  /** stats.tokens / stats.ms: decode steps only, prefill and first token excluded. */
  tokensPerS: number;
  readbacksPerToken: number;
  submitsPerToken: number;
  /** This process's user+system CPU time over the whole decode call (prefill included). */
  cpuMs: number;
}

/**
 * Greedy decode of `maxTokens` tokens after `prompt` on a fresh session, with no EOS (so exactly
 * maxTokens come back) and `stepsPerReadback` (undefined: adaptive).
 */
export async function decodeRun(
  model: GpuModel,
  prompt: number[],
  maxTokens: number,
  stepsPerReadback: number | undefined,
): Promise<DecodeRun> {
  const session = model.newSession();
  try {
    const cpu0 = process.cpuUsage();
    const { tokens, stats } = await session.decode(
      { feed: prompt, maxTokens, sampling: GREEDY, eosIds: [], stepsPerReadback },
      () => undefined,
    );
    const cpu = process.cpuUsage(cpu0);
    if (tokens.length !== maxTokens) {
      throw new Error(`decode returned ${tokens.length} tokens, not ${maxTokens}`);
    }
    return {
      tokens,
      stats,
      tokensPerS: stats.tokens / (stats.ms / 1000),
      readbacksPerToken: stats.readbacks / stats.tokens,
      submitsPerToken: stats.submits / stats.tokens,
      cpuMs: (cpu.user + cpu.system) / 1000,
    };
  } finally {
    session.free();
  }
}

/** One mode's timed runs, summarised. */
export interface ModeFigures {
  runs: DecodeRun["stats"][];
  runTokensPerS: number[];
  /** Median over the runs. */
  tokensPerS: number;
  /** Pooled over the runs: sum of readbacks (submits) / sum of decode-step tokens. */
  readbacksPerToken: number;
  submitsPerToken: number;
  /** Pooled: decode-step tokens / readbacks. */
  stepsPerReadback: number;
  cpuMsPerToken: number;
}

function summarise(runs: DecodeRun[]): ModeFigures {
  const sum = (f: (s: DecodeStats) => number) => runs.reduce((n, r) => n + f(r.stats), 0);
  const tokens = sum((s) => s.tokens);
  const readbacks = sum((s) => s.readbacks);
  return {
    runs: runs.map((r) => r.stats),
    runTokensPerS: runs.map((r) => r.tokensPerS),
    tokensPerS: median(runs.map((r) => r.tokensPerS)),
    readbacksPerToken: readbacks / tokens,
    submitsPerToken: sum((s) => s.submits) / tokens,
    stepsPerReadback: tokens / readbacks,
    cpuMsPerToken: runs.reduce((n, r) => n + r.cpuMs, 0) / tokens,
  };
}

/**
 * Both modes on one model: an untimed warm-up decode in each, then `reps` timed decodes per mode,
 * alternating (spr1, adaptive, adaptive, spr1, ...) so that a drift in the machine's load falls on
 * both alike. Every run decodes the same prompt greedily: `sameTokens` says whether all produced
 * the same tokens.
 */
export async function compareModes(
  model: GpuModel,
  prompt: number[],
  tokens: number,
  reps: number,
) {
  for (const m of MODES) {
    await decodeRun(model, prompt, Math.min(tokens, WARMUP_TOKENS), m.stepsPerReadback);
  }
  const runs: Record<ModeName, DecodeRun[]> = { spr1: [], adaptive: [] };
  for (let i = 0; i < reps; i++) {
    const order = i % 2 === 0 ? MODES : [...MODES].reverse();
    for (const m of order) {
      runs[m.name].push(await decodeRun(model, prompt, tokens, m.stepsPerReadback));
    }
  }
  const first = runs.spr1[0].tokens;
  const sameTokens = [...runs.spr1, ...runs.adaptive].every((r) =>
    r.tokens.every((t, i) => t === first[i])
  );
  const spr1 = summarise(runs.spr1);
  const adaptive = summarise(runs.adaptive);
  return {
    promptTokens: prompt.length,
    tokensPerRun: tokens,
    warmupTokens: Math.min(tokens, WARMUP_TOKENS),
    reps,
    sameTokens,
    spr1,
    adaptive,
    speedup: adaptive.tokensPerS / spr1.tokensPerS,
  };
}

/** A 64-token prompt in one forward step (last row's logits read back), fresh session each. */
async function timePrefill(model: GpuModel) {
  const prompt = promptIds(PREFILL_PROMPT_TOKENS, model.config.vocabSize);
  const ms: number[] = [];
  for (let i = 0; i < 1 + PREFILL_REPS; i++) {
    const session = model.newSession();
    const t0 = performance.now();
    await session.forward(prompt, { lastOnly: true });
    if (i > 0) ms.push(performance.now() - t0);
    session.free();
  }
  const medianMs = median(ms);
  return {
    tokens: PREFILL_PROMPT_TOKENS,
    reps: PREFILL_REPS,
    medianMs,
    tokensPerS: PREFILL_PROMPT_TOKENS / (medianMs / 1000),
  };
}

/** Opens a model on the GPU (all experts resident), measures decode and prefill, frees it. */
async function benchModel(gpu: Gpu, opened: OpenedModel, tokens: number, reps: number) {
  const c = opened.weights.config;
  const elemBytes = opened.weights.layers[0].q.dtype === "F32" ? 4 : 2;
  const t0 = performance.now();
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: Math.max(DECODE_PREFILL_TOKENS + tokens, PREFILL_PROMPT_TOKENS),
    maxBatch: PREFILL_PROMPT_TOKENS,
    expertSource: opened.experts,
  });
  await gpu.device.queue.onSubmittedWorkDone(); // the uploads are part of loading
  const loadS = (performance.now() - t0) / 1000;
  try {
    const prompt = promptIds(DECODE_PREFILL_TOKENS, c.vocabSize);
    const decode = await compareModes(model, prompt, tokens, reps);
    const prefill = await timePrefill(model);
    return { config: c, elemBytes, loadS, decode, prefill };
  } finally {
    model.destroy();
  }
}

// ---- /health through a real server ----

/** Concurrent streamed chats during the /health measurement, and their length. */
const SERVER_STREAMS = 4;
const SERVER_MAX_TOKENS = 128;
/** Pause between /health requests while the chats run. */
const HEALTH_POLL_MS = 20;
const SERVER_PROMPTS = [
  "Tell me about the sea.",
  "What did the king say to his servants?",
  "Write a short story about a hacker.",
  "Who was Moses?",
];

/** One streamed chat completion: time to first token, tokens (from usage), total time. */
async function streamChat(url: string, model: string, prompt: string, maxTokens: number) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      messages: [{ role: "user", content: prompt }],
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  let firstMs = 0;
  let tokens = 0;
  for await (const data of sseEvents(res, "chat")) {
    if (data.usage) tokens = data.usage.completion_tokens;
    if (firstMs === 0 && data.choices?.[0]?.delta?.content) firstMs = performance.now() - t0;
  }
  if (tokens === 0) throw new Error("chat: the stream ended without tokens or usage");
  return { ttftMs: firstMs, tokens, ms: performance.now() - t0 };
}

/**
 * Starts `bin/deno run ... main.ts serve --port P` (the embedded default model, adaptive steps per
 * readback), waits for /health ok, streams one short warm-up chat, then SERVER_STREAMS chats at
 * once while GET /health is asked every HEALTH_POLL_MS; stops the server with SIGINT.
 */
async function measureServer() {
  const server = await startServe();
  const { url, modelId, readyS, port } = server;
  try {
    await streamChat(url, modelId, "warm up", 16);
    const before = await gpuCounters(url);

    let running = true;
    const health: number[] = [];
    const polling = (async () => {
      while (running) {
        const h0 = performance.now();
        const res = await fetch(`${url}/health`);
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`/health answered ${res.status}`);
        health.push(performance.now() - h0);
        await sleep(HEALTH_POLL_MS);
      }
    })();
    const c0 = performance.now();
    let chats;
    let wallS;
    try {
      chats = await Promise.all(
        SERVER_PROMPTS.slice(0, SERVER_STREAMS).map((p) =>
          streamChat(url, modelId, p, SERVER_MAX_TOKENS)
        ),
      );
      wallS = (performance.now() - c0) / 1000;
    } finally {
      running = false;
      await polling;
    }
    await sleep(200); // the engine's stats snapshot follows the last generation
    const after = await gpuCounters(url);
    const tokens = chats.reduce((n, c) => n + c.tokens, 0);
    return {
      command: `bin/deno ${SERVE_ARGS.join(" ")} serve --port ${port}`,
      readyS,
      streams: SERVER_STREAMS,
      maxTokens: SERVER_MAX_TOKENS,
      chats,
      tokens,
      wallS,
      tokensPerS: tokens / wallS,
      gpuReadbacksPerStep: (after.readbacks - before.readbacks) / (after.steps - before.steps),
      health: {
        pollMs: HEALTH_POLL_MS,
        requests: health.length,
        medianMs: median(health),
        maxMs: Math.max(...health),
      },
    };
  } finally {
    await server.stop();
  }
}

/** The engine's GPU step and readback counters, from GET /stats. */
async function gpuCounters(url: string) {
  const s = await getJson(`${url}/stats`);
  const cache = (s?.body as { cache?: Record<string, number> })?.cache ?? {};
  return { steps: cache.gpuSteps ?? NaN, readbacks: cache.gpuReadbacks ?? NaN };
}

// ---- the run ----

function machine(gpu: Gpu) {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return {
    adapter: gpu.adapterInfo.description || gpu.adapterInfo.vendor,
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    loadAvg1m: Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]),
  };
}

function positiveInt(flag: string, value: string | undefined, fallback: number): number {
  const n = value === undefined ? fallback : Number(value);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--${flag}: a positive integer`);
  return n;
}

/** Where a model comes from: a fixture written now, or the embedded default model. */
type Source = { fixture: FixtureOptions; child: boolean } | { dir: string };

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      tokens: { type: "string" },
      "real-tokens": { type: "string" },
      reps: { type: "string" },
      "real-experts": { type: "string" },
      "real-vocab": { type: "string" },
      "no-server": { type: "boolean" },
    },
    strict: true,
  });
  const tokens = positiveInt("tokens", values.tokens, DEFAULT_TOKENS);
  const realTokens = positiveInt("real-tokens", values["real-tokens"], DEFAULT_REAL_TOKENS);
  const reps = positiveInt("reps", values.reps, DEFAULT_REPS);
  if (tokens < 2 || realTokens < 2) throw new RangeError("--tokens: at least 2 (one decode step)");

  const started = performance.now();
  const gpu = await openGpu();
  const host = machine(gpu);
  console.log(`adapter: ${host.adapter}`);
  console.log(`cpu: ${host.cpu}, ${host.cores} cores, load ${host.loadAvg1m} (1 min)`);
  console.log(`deno ${host.deno} (v8 ${host.v8})`);
  const memcpy = measureMemcpy();
  console.log(
    `memcpy ${memcpy.bytes >> 20} MiB (Uint8Array.set, best of ${memcpy.reps}): ` +
      `${memcpy.bestGBs.toFixed(2)} GB/s`,
  );

  const tmp = await Deno.makeTempDir({ prefix: "bench-decode-" });
  const models: Row[] = [];
  let realShape = null;
  try {
    const real = await pickRealShape(tmp, {
      experts: values["real-experts"] ? Number(values["real-experts"]) : undefined,
      vocab: values["real-vocab"] ? Number(values["real-vocab"]) : undefined,
    });
    realShape = real.report;
    const runs: [string, Source][] = [
      ["TINY", { fixture: { ...TINY, dtype: "BF16" }, child: false }],
      ["SMALL", { fixture: { ...SMALL, dtype: "BF16" }, child: false }],
      [DEFAULT_NAME, { dir: DEFAULT_MODEL_DIR }],
      [REAL_NAME, { fixture: real.options, child: true }],
    ];
    for (const [name, source] of runs) {
      let fixture: Row["fixture"] = null;
      let opened: OpenedModel;
      if ("fixture" in source) {
        const opts = source.fixture;
        const dir = `${tmp}/${name.replace(/\W+/g, "_")}`;
        const gen = source.child
          ? await writeFixtureInChild(dir, opts)
          : await writeFixtureTimed(dir, opts);
        console.error(
          `${name}: fixture of ${(paramCount(opts) / 1e6).toFixed(1)} M params written in ` +
            `${gen.seconds.toFixed(1)} s; benchmarking`,
        );
        fixture = { ...opts, params: paramCount(opts), generation: gen };
        opened = openModelDir(dir);
      } else {
        console.error(`${name}: ${source.dir}; benchmarking`);
        opened = await openModel(source.dir);
      }
      const n = name === REAL_NAME ? realTokens : tokens;
      const t0 = performance.now();
      let r;
      try {
        r = await benchModel(gpu, opened, n, reps);
      } finally {
        opened.close();
      }
      if (fixture) await Deno.remove(opened.dir, { recursive: true });
      const c = r.config;
      const bytes = bytesPerToken(c, r.elemBytes);
      const effectiveGBs = bytes.total * r.decode.adaptive.tokensPerS / 1e9;
      models.push({
        name,
        shape: {
          layers: c.numLayers,
          hidden: c.hiddenSize,
          experts: c.numExperts,
          topK: c.topK,
          vocab: c.vocabSize,
        },
        fixture,
        loadS: r.loadS,
        benchS: (performance.now() - t0) / 1000,
        bytesPerToken: bytes,
        decode: { ...r.decode, effectiveGBs, ofMemcpy: effectiveGBs / memcpy.bestGBs },
        prefill: r.prefill,
      });
      console.error(
        `${name}: ${r.decode.spr1.tokensPerS.toFixed(1)} -> ` +
          `${r.decode.adaptive.tokensPerS.toFixed(1)} tok/s`,
      );
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }

  let server = null;
  let serverError = null;
  if (!values["no-server"]) {
    console.error(`main.ts serve: ${SERVER_STREAMS} concurrent chats, /health every ~20 ms`);
    try {
      server = await measureServer();
    } catch (e) {
      // the table above is still worth printing and keeping
      serverError = e instanceof Error ? e.message : String(e);
      console.error(`main.ts serve measurement failed: ${serverError}`);
    }
  }
  const goals = checkGoals(models);
  const totalS = (performance.now() - started) / 1000;

  printTable(models, memcpy.bestGBs);
  printNotes(models, server, goals);
  if (serverError) console.log(`main.ts serve measurement failed: ${serverError}`);
  console.log(`total ${totalS.toFixed(0)} s`);
  const report = {
    date: new Date().toISOString(),
    machine: host,
    memcpy,
    options: { tokens, realTokens, reps, warmupTokens: WARMUP_TOKENS },
    realShape,
    models,
    server,
    serverError,
    goals,
    totalS,
  };
  await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(OUT_FILE, JSON.stringify(report, null, 2) + "\n");
  console.log(`wrote ${OUT_FILE}`);
}

/** One model's results, as printed and as written to the JSON file. */
interface Row {
  name: string;
  shape: { layers: number; hidden: number; experts: number; topK: number; vocab: number };
  /** The fixture written for it (null: the embedded default model). */
  fixture: (FixtureOptions & { params: number; generation: GenerationResult }) | null;
  loadS: number;
  /** Wall time of this model's measurements (open, decodes, prefills). */
  benchS: number;
  bytesPerToken: BytesPerToken;
  decode: Awaited<ReturnType<typeof compareModes>> & { effectiveGBs: number; ofMemcpy: number };
  prefill: Awaited<ReturnType<typeof timePrefill>>;
}

/** One goal of the issue: the measured value, the bound, and whether it holds. */
interface Goal {
  goal: string;
  model: string;
  value: number;
  bound: number;
  met: boolean;
}

function checkGoals(rows: Row[]): Goal[] {
  const goals: Goal[] = [];
  const speedup = (name: string, bound: number) => {
    const r = rows.find((r) => r.name === name);
    if (!r) return;
    const value = r.decode.speedup;
    goals.push({
      goal: `tok/s adaptive >= ${bound}x spr 1`,
      model: name,
      value,
      bound,
      met: value >= bound,
    });
  };
  speedup(DEFAULT_NAME, GOALS.defaultSpeedup);
  speedup("TINY", GOALS.tinySpeedup);
  for (const r of rows) {
    const value = r.decode.adaptive.readbacksPerToken;
    const bound = GOALS.readbacksPerToken;
    goals.push({
      goal: `readbacks/token adaptive <= ${bound} (all resident)`,
      model: r.name,
      value,
      bound,
      met: value <= bound,
    });
  }
  return goals;
}

function printTable(rows: Row[], memcpyGBs: number): void {
  const head = [
    "model",
    "L",
    "D",
    "E/K",
    "V",
    "load s",
    "prefill64 tok/s",
    "tok/s spr1",
    "tok/s adapt",
    "ratio",
    "rb/tok spr1",
    "rb/tok adapt",
    "steps/rb adapt",
    "sub/tok spr1",
    "sub/tok adapt",
    "MB/tok",
    "eff GB/s",
    "of memcpy",
  ];
  const cells = rows.map((r) => {
    const d = r.decode;
    return [
      r.name,
      String(r.shape.layers),
      String(r.shape.hidden),
      `${r.shape.experts}/${r.shape.topK}`,
      String(r.shape.vocab),
      r.loadS.toFixed(1),
      r.prefill.tokensPerS.toFixed(1),
      d.spr1.tokensPerS.toFixed(2),
      d.adaptive.tokensPerS.toFixed(2),
      `${d.speedup.toFixed(2)}x`,
      d.spr1.readbacksPerToken.toFixed(3),
      d.adaptive.readbacksPerToken.toFixed(3),
      d.adaptive.stepsPerReadback.toFixed(1),
      d.spr1.submitsPerToken.toFixed(3),
      d.adaptive.submitsPerToken.toFixed(3),
      (r.bytesPerToken.total / 1e6).toFixed(2),
      d.effectiveGBs.toFixed(3),
      `${(d.effectiveGBs / memcpyGBs * 100).toFixed(1)}%`,
    ];
  });
  const width = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((s, i) => (i ? s.padStart(width[i]) : s.padEnd(width[i])));
  console.log(line(head).join("  "));
  for (const c of cells) console.log(line(c).join("  "));
}

/** Runs and tokens behind the table, where bytes per token go, the server, the goals. */
function printNotes(
  rows: Row[],
  server: Awaited<ReturnType<typeof measureServer>> | null,
  goals: Goal[],
): void {
  const r0 = rows[0].decode;
  console.log(
    `tok/s: median of ${r0.reps} greedy decodes per mode (alternating, after a ` +
      `${r0.warmupTokens}-token warm-up in each) of ${r0.tokensPerRun} tokens ` +
      `(${rows.find((r) => r.name === REAL_NAME)?.decode.tokensPerRun} for ${REAL_NAME}) after ` +
      `an ${DECODE_PREFILL_TOKENS}-token prompt, no EOS; decode steps only (prefill and first ` +
      `token excluded); readbacks, submits, steps: pooled over the runs; eff GB/s from adaptive`,
  );
  for (const r of rows) {
    const d = r.decode;
    const runs = (m: ModeFigures) => m.runTokensPerS.map((x) => x.toFixed(1)).join(" ");
    console.log(
      `${r.name}: runs tok/s spr1 [${runs(d.spr1)}], adaptive [${runs(d.adaptive)}]; ` +
        `CPU ms/tok ${d.spr1.cpuMsPerToken.toFixed(1)} -> ${
          d.adaptive.cpuMsPerToken.toFixed(1)
        }; ` +
        `same tokens in every run: ${d.sameTokens ? "yes" : "NO"}; ${r.benchS.toFixed(0)} s`,
    );
  }
  const mb = (n: number) => (n / 1e6).toFixed(2);
  for (const r of rows) {
    const b = r.bytesPerToken;
    console.log(
      `${r.name}: MB/tok = attention ${mb(b.attention)} + router ${mb(b.router)} + ` +
        `experts ${mb(b.experts)} + lm_head ${mb(b.lmHead)}`,
    );
  }
  const realRow = rows.find((r) => r.name === REAL_NAME);
  const real = realRow?.fixture;
  if (realRow && real) {
    const gen = real.generation;
    const peak = gen.peakRssBytes
      ? `, peak RSS ${(gen.peakRssBytes / 2 ** 30).toFixed(2)} GiB`
      : "";
    const stepMs = 1000 / realRow.decode.adaptive.tokensPerS;
    console.log(
      `${REAL_NAME}: real layer shapes with ${real.experts} of ` +
        `${QWEN3_30B_A3B.experts} experts and vocab ${real.vocab} of ${QWEN3_30B_A3B.vocab}; ` +
        `writeFixture took ${gen.seconds.toFixed(1)} s${peak}; a step takes ` +
        `${stepMs.toFixed(0)} ms (the adaptive loop aims at ${TARGET_BATCH_MS} ms per batch)`,
    );
  }
  if (server) {
    const h = server.health;
    console.log(
      `main.ts serve (default model, adaptive, subprocess; /health ok after ` +
        `${server.readyS.toFixed(1)} s): /health median ${h.medianMs.toFixed(1)} ms, max ` +
        `${h.maxMs.toFixed(1)} ms over ${h.requests} GETs (every ~${h.pollMs} ms) during ` +
        `${server.streams} concurrent streamed chats (max_tokens ${server.maxTokens}, ` +
        `temperature 0): ${server.tokens} tokens in ${server.wallS.toFixed(2)} s = ` +
        `${server.tokensPerS.toFixed(1)} tok/s, TTFT ` +
        `${server.chats.map((c) => c.ttftMs.toFixed(0)).join("/")} ms, ` +
        `${server.gpuReadbacksPerStep.toFixed(3)} GPU readbacks per step`,
    );
  }
  for (const g of goals) {
    console.log(
      `goal ${g.goal}, ${g.model}: ${g.value.toFixed(g.value < 1 ? 3 : 2)} -> ` +
        (g.met ? "met" : "NOT met"),
    );
  }
}

if (import.meta.main) {
  if (Deno.args[0] === CHILD_FLAG) await childMain(Deno.args[1], Deno.args[2]);
  else await main();
}
