/**
 * Decode speed before and after the GPU decode loop, side by side in one run: greedy tokens/s,
 * readbacks and submits per token of `Session.decode` with one readback per token (steps per
 * readback 1: the old loop, unpipelined; the baseline) and with the adaptive, pipelined loop, on
 * TINY, SMALL, the embedded default model and two layers of real Qwen3-30B-A3B shapes; next to
 * prefill speed, the weight bytes a decoded token reads and a memcpy measured in the same run;
 * with what reached WebGPU per decoded token (dispatches, passes, submits, bytes read back,
 * writeBuffer calls: bench/gpu_counters.ts). Then the expert dispatch comparison (issue 14): the
 * default and real-shape models with every layer dispatching the expert kernels once per pool
 * buffer ("per-pool", the baseline) and once per group of pool buffers ("grouped"), with the
 * expert pool buffers capped at 128 MiB (llvmpipe's binding limit) and at a few slots (many pool
 * buffers), all experts resident and under a 50% expert budget. Then /health latency of a real
 * `main.ts serve` subprocess during 4 concurrent streamed chats. Not a test: prints the tables
 * and writes bench/out/decode.json.
 *
 *   ./bin/deno run -A --unstable-webgpu bench/decode.ts [--tokens N] [--real-tokens N]
 *     [--reps N] [--real-experts E] [--real-vocab V] [--no-server]
 *     [--dispatch-only | --no-dispatch] [--dispatch-tokens N] [--dispatch-real-tokens N]
 *     [--dispatch-reps N] [--many-pools N]
 *
 * Every figure printed is measured in this run; the only estimates are the real-shape fixture's
 * generation time and memory, used to choose its expert count and vocab before writing it, and
 * they are printed as estimates beside the measured values.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { type FixtureOptions, mulberry32, SMALL, TINY, writeFixture } from "../weights/fixture.ts";
import { DEFAULT_MODEL_DIR, type OpenedModel, openModel, openModelDir } from "../src/model_dir.ts";
import { GpuModel, type GpuModelOptions } from "../src/gpu/model.ts";
import { modelExpertLayouts } from "../src/gpu/expert_pool.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { TARGET_BATCH_MS } from "../src/gpu/decode_loop.ts";
import { GREEDY } from "../src/sampling.ts";
import type { DecodeStats, FloatDType, ModelConfig } from "../src/types.ts";
import { measureMemcpy, median } from "./memcpy.ts";
import { getJson, SERVE_ARGS, sleep, sseEvents, startServe } from "./serve_process.ts";
import {
  activeGpuCounters,
  diffCounts,
  type GpuCounts,
  installGpuCounters,
  zeroCounts,
} from "./gpu_counters.ts";

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

/** The issue's goals on this machine, checked from the table. */
const GOALS = {
  /** tok/s adaptive / tok/s with one readback per token, default model. */
  defaultSpeedup: 2.5,
  /** The same ratio on TINY. */
  tinySpeedup: 4,
  /** Readbacks per decoded token of the adaptive loop, all experts resident. */
  readbacksPerToken: 0.125,
  /** WebGPU dispatches per decoded token per layer with "grouped" expert dispatch, whatever the
   * pool buffer count (issue 14). */
  dispatchesPerTokenPerLayer: 20,
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
  /** What reached WebGPU during the whole decode call (prefill included), when GPU counters are
   * installed (bench/gpu_counters.ts), else undefined. */
  gpu?: GpuCounts;
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
  const counters = activeGpuCounters();
  const session = model.newSession();
  try {
    const gpu0 = counters?.snapshot();
    const cpu0 = process.cpuUsage();
    const { tokens, stats } = await session.decode(
      { feed: prompt, maxTokens, sampling: GREEDY, eosIds: [], stepsPerReadback },
      () => undefined,
    );
    const cpu = process.cpuUsage(cpu0);
    const gpu = counters && gpu0 ? diffCounts(counters.snapshot(), gpu0) : undefined;
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
      gpu,
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
  /** What reached WebGPU per decoded token (null when GPU counters are not installed). */
  gpu: GpuPerToken | null;
}

/** WebGPU calls per decoded token (bench/gpu_counters.ts), and dispatches per token per layer. */
export interface GpuPerToken extends GpuCounts {
  /** dispatches / layers: every dispatch of a step (embedding, lm_head and sampler included)
   * spread over the layers, so an upper bound of what one layer dispatches. */
  dispatchesPerLayer: number;
  /** The dispatches of the passes that run expert kernels (the layers' passes: a step records
   * embedding, layers, final norm + lm_head and sampler in passes of their own) / layers: what
   * one layer dispatches. Null when no expert kernel was seen (their labels changed). */
  layerDispatchesPerLayer: number | null;
  /** Expert kernel dispatches (experts_* pipelines) / layers. */
  expertDispatchesPerLayer: number;
  /** Dispatches outside the layers' passes (embedding, final norm, lm_head, sampler). */
  otherDispatches: number;
}

/** Whether a pipeline label (src/gpu/shader.ts: "prelude+kernel|weights|...") is an expert
 * kernel's (experts_gate_up, experts_down and their tiled forms). */
export function isExpertKernel(label: string): boolean {
  return label.split("|")[0].split("+").at(-1)!.startsWith("experts_");
}

/**
 * WebGPU calls per decode-step token, pooled over runs of one prompt: (sum of each run's counts
 * less `base`, the counts of a 1-token decode of the same prompt: its prefill and first-token
 * readback) / (sum of decode-step tokens). Null without counts.
 */
export function gpuPerToken(
  runs: DecodeRun[],
  base: GpuCounts | undefined,
  layers: number,
): GpuPerToken | null {
  if (!base || runs.some((r) => !r.gpu)) return null;
  const total = zeroCounts();
  let tokens = 0;
  for (const r of runs) {
    const d = diffCounts(r.gpu!, base);
    for (const k of Object.keys(total) as (keyof GpuCounts)[]) total[k] += d[k];
    tokens += r.stats.tokens;
  }
  const per = zeroCounts();
  for (const k of Object.keys(per) as (keyof GpuCounts)[]) per[k] = total[k] / tokens;
  const seen = total.markedDispatches > 0;
  return {
    ...per,
    dispatchesPerLayer: per.dispatches / layers,
    layerDispatchesPerLayer: seen ? per.dispatchesInMarkedPasses / layers : null,
    expertDispatchesPerLayer: per.markedDispatches / layers,
    otherDispatches: seen ? per.dispatches - per.dispatchesInMarkedPasses : NaN,
  };
}

/** The counts of a 1-token decode of `prompt` (prefill and first token, no decode step), the
 * base that gpuPerToken subtracts; undefined when GPU counters are not installed. */
export async function baseCounts(
  model: GpuModel,
  prompt: number[],
): Promise<GpuCounts | undefined> {
  if (!activeGpuCounters()) return undefined;
  return (await decodeRun(model, prompt, 1, undefined)).gpu;
}

function summarise(
  runs: DecodeRun[],
  base: GpuCounts | undefined = undefined,
  layers = 1,
): ModeFigures {
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
    gpu: gpuPerToken(runs, base, layers),
  };
}

/**
 * Both modes on one model: an untimed warm-up decode in each, then `reps` timed decodes per mode,
 * alternating (spr1, adaptive, adaptive, spr1, ...) so that a drift in the machine's load falls on
 * both alike. Every run decodes the same prompt greedily: `sameTokens` says whether all produced
 * the same tokens. With GPU counters installed, the timed decodes are counted as they run (a few
 * additions per WebGPU call, far below a step's time) and an untimed 1-token decode gives the
 * prefill's share to subtract (gpuPerToken).
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
  const base = await baseCounts(model, prompt);
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
  const layers = model.config.numLayers;
  const spr1 = summarise(runs.spr1, base, layers);
  const adaptive = summarise(runs.adaptive, base, layers);
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

// ---- issue 14: expert dispatch per pool buffer vs per group of pool buffers ----

/** How the expert kernels reach the pool buffers: "per-pool" (the baseline: every layer
 * dispatches both expert stages once per pool buffer) and "grouped" (one dispatch binds a group of
 * pool buffers; each layer's experts live in its own group). */
export const EXPERT_DISPATCHES = ["per-pool", "grouped"] as const;
export type ExpertDispatch = (typeof EXPERT_DISPATCHES)[number];
/** GpuModelOptions with the issue-14 fields, typed here too so this bench compiles whether or not
 * src/gpu/model.ts declares them yet. */
type DispatchModelOptions = GpuModelOptions & {
  expertDispatch?: ExpertDispatch;
  expertBindingLimit?: number;
};
/** llvmpipe's storage binding limit (and WebGPU's default): forced on every device, so that a GPU
 * with larger bindings gets the pool buffer count llvmpipe gets. */
export const LLVMPIPE_BINDING_LIMIT = 128 * 2 ** 20;
/** Pool buffers the small binding limit aims at with every expert resident (--many-pools). */
const DEFAULT_MANY_POOLS = 32;
/** The expert budget of the budgeted runs: this share of all experts (the budget path). */
const DISPATCH_BUDGET = 0.5;
/** Tokens per timed decode (--dispatch-tokens, --dispatch-real-tokens) and timed decodes per
 * configuration (--dispatch-reps): eight configurations per model, each opened afresh. */
const DEFAULT_DISPATCH_TOKENS = 64;
const DEFAULT_DISPATCH_REAL_TOKENS = 8;
const DEFAULT_DISPATCH_REPS = 1;
/** Untimed warm-up decode of each configuration (compiles its pipelines). */
const DISPATCH_WARMUP_TOKENS = 4;

/** One configuration of the expert dispatch comparison, as measured. */
export interface DispatchRow {
  model: string;
  layers: number;
  expertDispatch: ExpertDispatch;
  /** "128 MiB" or "many pools", and the bytes each pool buffer was capped at. */
  limit: string;
  bindingLimit: number;
  /** "all" (every expert resident) or the budget, e.g. "50%". */
  budget: string;
  expertSlots: number;
  /** model.pool.pools.length, and model.pool.groups.length where the pool has groups. */
  pools: number;
  groups: number | null;
  loadS: number;
  tokensPerRun: number;
  reps: number;
  /** Median over the timed decodes (decode steps only, as in the table above). */
  tokensPerS: number;
  readbacksPerToken: number;
  expertLoadsPerToken: number;
  /** Passes over layers redone after misses (model.stats.reruns), per decoded token. */
  rerunsPerToken: number;
  /** WebGPU calls per decoded token (prefill's share subtracted). */
  gpu: GpuPerToken | null;
  /** Whether every timed decode produced the tokens of the model's first configuration, and
   * where the first one that did not first differed (null: none). */
  sameTokens: boolean;
  firstDifference: number | null;
}

/**
 * The expert dispatch comparison on one model: for each binding limit (128 MiB, then the one that
 * makes about `manyPools` pool buffers with every expert resident), each budget (all experts
 * resident, then DISPATCH_BUDGET of them) and each dispatch ("per-pool", then "grouped"): open the
 * model afresh with those options, decode DISPATCH_WARMUP_TOKENS untimed, a 1-token decode for
 * the prefill's counts, then `reps` timed greedy decodes of `tokens` tokens (adaptive steps per
 * readback), counted as they run.
 */
async function benchDispatch(
  gpu: Gpu,
  name: string,
  opened: OpenedModel,
  tokens: number,
  reps: number,
  manyPools: number,
): Promise<DispatchRow[]> {
  const c = opened.weights.config;
  const total = c.numLayers * c.numExperts;
  const slotBytes = modelExpertLayouts(opened.weights)[0].slotBytes;
  const limits = [
    { limit: "128 MiB", bindingLimit: LLVMPIPE_BINDING_LIMIT },
    { limit: "many pools", bindingLimit: slotBytes * Math.ceil(total / manyPools) },
  ];
  const budgets = [
    { budget: "all", expertSlots: total },
    {
      budget: `${DISPATCH_BUDGET * 100}%`,
      expertSlots: Math.max(c.topK, Math.floor(total * DISPATCH_BUDGET)),
    },
  ];
  const prompt = promptIds(DECODE_PREFILL_TOKENS, c.vocabSize);
  const rows: DispatchRow[] = [];
  let reference: number[] | null = null;
  for (const { limit, bindingLimit } of limits) {
    for (const { budget, expertSlots } of budgets) {
      for (const expertDispatch of EXPERT_DISPATCHES) {
        const opts: DispatchModelOptions = {
          gpu,
          maxContext: DECODE_PREFILL_TOKENS + Math.max(tokens, DISPATCH_WARMUP_TOKENS),
          maxBatch: DECODE_PREFILL_TOKENS,
          maxSequences: 1,
          expertSource: opened.experts,
          expertSlots,
          expertDispatch,
          expertBindingLimit: bindingLimit,
        };
        const t0 = performance.now();
        const model = await GpuModel.open(opened.weights, opts);
        await gpu.device.queue.onSubmittedWorkDone();
        const loadS = (performance.now() - t0) / 1000;
        try {
          const pool = model.pool as unknown as { pools: unknown[]; groups?: unknown[] };
          await decodeRun(model, prompt, Math.min(tokens, DISPATCH_WARMUP_TOKENS), undefined);
          const base = await baseCounts(model, prompt);
          const runs: DecodeRun[] = [];
          const reruns0 = model.stats.reruns;
          for (let i = 0; i < reps; i++) {
            runs.push(await decodeRun(model, prompt, tokens, undefined));
          }
          const reruns = model.stats.reruns - reruns0;
          reference ??= runs[0].tokens;
          const differences = runs.map((r) => r.tokens.findIndex((t, i) => t !== reference![i]))
            .filter((i) => i >= 0);
          const sum = (f: (s: DecodeStats) => number) => runs.reduce((n, r) => n + f(r.stats), 0);
          const decoded = sum((s) => s.tokens);
          const row: DispatchRow = {
            model: name,
            layers: c.numLayers,
            expertDispatch,
            limit,
            bindingLimit,
            budget,
            expertSlots,
            pools: pool.pools.length,
            groups: pool.groups?.length ?? null,
            loadS,
            tokensPerRun: tokens,
            reps,
            tokensPerS: median(runs.map((r) => r.tokensPerS)),
            readbacksPerToken: sum((s) => s.readbacks) / decoded,
            expertLoadsPerToken: sum((s) => s.expertLoads) / decoded,
            rerunsPerToken: reruns / decoded,
            gpu: gpuPerToken(runs, base, c.numLayers),
            sameTokens: differences.length === 0,
            firstDifference: differences.length === 0 ? null : Math.min(...differences),
          };
          rows.push(row);
          console.error(
            `${name}, ${limit} (${row.pools} pools${
              row.groups === null ? "" : `, ${row.groups} groups`
            }), ${budget} experts, ${expertDispatch}: ${row.tokensPerS.toFixed(1)} tok/s, ` +
              `${row.gpu?.layerDispatchesPerLayer?.toFixed(1) ?? "?"} dispatches/token/layer`,
          );
        } finally {
          model.destroy();
        }
      }
    }
  }
  return rows;
}

function printDispatchTable(rows: DispatchRow[]): void {
  const head = [
    "model",
    "limit",
    "budget",
    "pools",
    "groups",
    "dispatch",
    "load s",
    "tok/s",
    "disp/tok",
    "layer disp/tok/L",
    "exp disp/tok/L",
    "other disp/tok",
    "pass/tok",
    "sub/tok",
    "rb/tok",
    "read B/tok",
    "wb/tok",
    "write KB/tok",
    "loads/tok",
    "reruns/tok",
    "same tok",
  ];
  const f = (x: number | undefined, d: number) => (x === undefined ? "?" : x.toFixed(d));
  const cells = rows.map((r) => [
    r.model,
    `${r.limit} (${(r.bindingLimit / 2 ** 20).toFixed(r.bindingLimit < 2 ** 24 ? 2 : 0)} MiB)`,
    r.budget,
    String(r.pools),
    r.groups === null ? "-" : String(r.groups),
    r.expertDispatch,
    r.loadS.toFixed(1),
    r.tokensPerS.toFixed(2),
    f(r.gpu?.dispatches, 1),
    f(r.gpu?.layerDispatchesPerLayer ?? undefined, 1),
    f(r.gpu?.expertDispatchesPerLayer, 1),
    f(r.gpu?.otherDispatches, 1),
    f(r.gpu?.passes, 2),
    f(r.gpu?.submits, 3),
    r.readbacksPerToken.toFixed(3),
    f(r.gpu?.readBytes, 0),
    f(r.gpu?.writeBuffers, 2),
    f(r.gpu === null ? undefined : r.gpu.writeBytes / 1e3, 1),
    r.expertLoadsPerToken.toFixed(2),
    r.rerunsPerToken.toFixed(2),
    r.sameTokens ? "yes" : `NO (#${r.firstDifference})`,
  ]);
  printAligned(head, cells);
  const t = rows[0];
  console.log(
    `expert dispatch (issue 14): ${t.tokensPerRun} tokens per timed decode ` +
      `(${rows.find((r) => r.layers !== t.layers)?.tokensPerRun ?? t.tokensPerRun} for the ` +
      `real shape), ${t.reps} per configuration after a ${DISPATCH_WARMUP_TOKENS}-token warm-up, ` +
      `adaptive steps per readback, each configuration a fresh GpuModel; per token: WebGPU calls ` +
      `of the timed decodes less a 1-token decode's (the prefill), over decode-step tokens; ` +
      `layer disp/tok/L = dispatches of the passes that run expert kernels (the layers') / ` +
      `layers, exp = expert kernels' alone, other = embedding, final norm, lm_head, sampler; ` +
      `same tok: the tokens of the model's first configuration (NO: index of the first ` +
      `token that differs); the goal (dispatches/token/layer <= ` +
      `${GOALS.dispatchesPerTokenPerLayer}) is checked with every expert resident, at each pool ` +
      `count; under the budget a token also reruns layers after misses (reruns/tok, random ` +
      `fixture routing), which multiplies its dispatches whatever the dispatch`,
  );
  for (let i = 0; i + 1 < rows.length; i += 2) {
    const [a, b] = [rows[i], rows[i + 1]];
    if (a.expertDispatch !== "per-pool" || b.expertDispatch !== "grouped") continue;
    console.log(
      `${a.model}, ${a.limit}, ${a.budget} experts, ${a.pools} -> ${b.pools} pools: grouped ` +
        `${(b.tokensPerS / a.tokensPerS).toFixed(2)}x the tok/s of per-pool, dispatches/token ` +
        `${f(a.gpu?.dispatches, 1)} -> ${f(b.gpu?.dispatches, 1)}, per layer ` +
        `${f(a.gpu?.layerDispatchesPerLayer ?? undefined, 1)} -> ` +
        `${f(b.gpu?.layerDispatchesPerLayer ?? undefined, 1)}`,
    );
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
      "dispatch-only": { type: "boolean" },
      "no-dispatch": { type: "boolean" },
      "dispatch-tokens": { type: "string" },
      "dispatch-real-tokens": { type: "string" },
      "dispatch-reps": { type: "string" },
      "many-pools": { type: "string" },
    },
    strict: true,
  });
  const tokens = positiveInt("tokens", values.tokens, DEFAULT_TOKENS);
  const realTokens = positiveInt("real-tokens", values["real-tokens"], DEFAULT_REAL_TOKENS);
  const reps = positiveInt("reps", values.reps, DEFAULT_REPS);
  if (tokens < 2 || realTokens < 2) throw new RangeError("--tokens: at least 2 (one decode step)");
  const dispatchOnly = values["dispatch-only"] ?? false;
  if (dispatchOnly && values["no-dispatch"]) {
    throw new RangeError("--dispatch-only and --no-dispatch exclude each other");
  }
  const dispatch = !values["no-dispatch"];
  const dispatchTokens = positiveInt(
    "dispatch-tokens",
    values["dispatch-tokens"],
    DEFAULT_DISPATCH_TOKENS,
  );
  const dispatchRealTokens = positiveInt(
    "dispatch-real-tokens",
    values["dispatch-real-tokens"],
    DEFAULT_DISPATCH_REAL_TOKENS,
  );
  const dispatchReps = positiveInt("dispatch-reps", values["dispatch-reps"], DEFAULT_DISPATCH_REPS);
  const manyPools = positiveInt("many-pools", values["many-pools"], DEFAULT_MANY_POOLS);
  if (dispatchTokens < 2 || dispatchRealTokens < 2) {
    throw new RangeError("--dispatch-tokens: at least 2 (one decode step)");
  }

  // every WebGPU call of this process from here on is counted (a few additions per call), the
  // expert kernels marked so that the layers' passes can be told from the rest
  const counters = installGpuCounters({ mark: isExpertKernel });
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
  const dispatchRows: DispatchRow[] = [];
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
    ].filter(([name]) => !dispatchOnly || name === DEFAULT_NAME || name === REAL_NAME) as [
      string,
      Source,
    ][];
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
      let r = null;
      try {
        if (!dispatchOnly) r = await benchModel(gpu, opened, n, reps);
        if (dispatch && (name === DEFAULT_NAME || name === REAL_NAME)) {
          const dn = name === REAL_NAME ? dispatchRealTokens : dispatchTokens;
          console.error(`${name}: expert dispatch per pool vs grouped (issue 14)`);
          dispatchRows.push(
            ...await benchDispatch(gpu, name, opened, dn, dispatchReps, manyPools),
          );
        }
      } finally {
        opened.close();
      }
      if (fixture) await Deno.remove(opened.dir, { recursive: true });
      if (!r) continue;
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
  if (!values["no-server"] && !dispatchOnly) {
    console.error(`main.ts serve: ${SERVER_STREAMS} concurrent chats, /health every ~20 ms`);
    try {
      server = await measureServer();
    } catch (e) {
      // the table above is still worth printing and keeping
      serverError = e instanceof Error ? e.message : String(e);
      console.error(`main.ts serve measurement failed: ${serverError}`);
    }
  }
  const goals = checkGoals(models, dispatchRows);
  const totalS = (performance.now() - started) / 1000;
  const gpuCalls = counters.snapshot();
  counters.uninstall();

  if (models.length > 0) {
    printTable(models, memcpy.bestGBs);
    printGpuTable(models);
    printNotes(models, server);
  }
  if (dispatchRows.length > 0) printDispatchTable(dispatchRows);
  printGoals(goals);
  if (serverError) console.log(`main.ts serve measurement failed: ${serverError}`);
  console.log(`total ${totalS.toFixed(0)} s`);
  const report = {
    date: new Date().toISOString(),
    machine: host,
    memcpy,
    options: {
      tokens,
      realTokens,
      reps,
      warmupTokens: WARMUP_TOKENS,
      dispatchOnly,
      dispatch,
      dispatchTokens,
      dispatchRealTokens,
      dispatchReps,
      dispatchWarmupTokens: DISPATCH_WARMUP_TOKENS,
      manyPools,
      dispatchBudget: DISPATCH_BUDGET,
    },
    realShape,
    models,
    dispatch: dispatchRows,
    server,
    serverError,
    goals,
    /** Every WebGPU call this process made while counted (model loads and uploads included). */
    gpuCalls,
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

function checkGoals(rows: Row[], dispatchRows: DispatchRow[]): Goal[] {
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
  for (const r of dispatchRows) {
    // under a budget reruns after misses multiply a token's dispatches: see printDispatchTable
    if (r.expertDispatch !== "grouped" || r.budget !== "all" || !r.gpu) continue;
    // the layers' own dispatches; all of a step's / layers when the layers' passes were not seen
    const value = r.gpu.layerDispatchesPerLayer ?? r.gpu.dispatchesPerLayer;
    const bound = GOALS.dispatchesPerTokenPerLayer;
    goals.push({
      goal: `dispatches/token/layer grouped <= ${bound} (${
        r.gpu.layerDispatchesPerLayer === null ? "all dispatches / layers" : "the layers' passes"
      }; all dispatches / layers ${r.gpu.dispatchesPerLayer.toFixed(1)})`,
      model: `${r.model}, ${r.pools} pools (${r.limit}), all experts resident`,
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
  printAligned(head, cells);
}

/** A table: the first column left-aligned, the others right-aligned. */
function printAligned(head: string[], cells: string[][]): void {
  const width = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((s, i) => (i ? s.padStart(width[i]) : s.padEnd(width[i])));
  console.log(line(head).join("  "));
  for (const c of cells) console.log(line(c).join("  "));
}

/** What reached WebGPU per decoded token, before (spr1) and after (adaptive), next to tok/s. */
function printGpuTable(rows: Row[]): void {
  const head = [
    "model",
    "mode",
    "tok/s",
    "disp/tok",
    "disp/tok/L",
    "layer disp/tok/L",
    "exp disp/tok/L",
    "pass/tok",
    "sub/tok",
    "cmdbuf/tok",
    "maps/tok",
    "read B/tok",
    "wb/tok",
    "write B/tok",
  ];
  const cells: string[][] = [];
  for (const r of rows) {
    for (const m of MODES) {
      const f = r.decode[m.name];
      const g = f.gpu;
      const n = (x: number | undefined, d: number) => (x === undefined ? "?" : x.toFixed(d));
      cells.push([
        r.name,
        m.name,
        f.tokensPerS.toFixed(2),
        n(g?.dispatches, 1),
        n(g?.dispatchesPerLayer, 1),
        n(g?.layerDispatchesPerLayer ?? undefined, 1),
        n(g?.expertDispatchesPerLayer, 1),
        n(g?.passes, 2),
        n(g?.submits, 3),
        n(g?.commandBuffers, 3),
        n(g?.mapReads, 3),
        n(g?.readBytes, 0),
        n(g?.writeBuffers, 2),
        n(g?.writeBytes, 0),
      ]);
    }
  }
  printAligned(head, cells);
  console.log(
    `WebGPU calls per decoded token (bench/gpu_counters.ts), counted during the timed decodes: ` +
      `their counts less a 1-token decode's (the prefill and first token), over decode-step ` +
      `tokens; disp/tok/L = every dispatch of a step (embedding, lm_head, sampler too) / layers; ` +
      `layer disp/tok/L = the dispatches of the passes that run expert kernels (the layers') / ` +
      `layers; exp = the expert kernels' alone; read B = bytes mapped for reading, wb = queue.writeBuffer calls`,
  );
}

/** Runs and tokens behind the table, where bytes per token go, the server, the goals. */
function printNotes(
  rows: Row[],
  server: Awaited<ReturnType<typeof measureServer>> | null,
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
}

function printGoals(goals: Goal[]): void {
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
