/**
 * Decode-speed baseline: greedy tokens/s on three fixture models (TINY, SMALL and two layers of
 * real Qwen3-30B-A3B shapes), each next to the weight bytes a decoded token reads and next to a
 * memcpy measured in the same run. Not a test: prints one table and writes bench/out/decode.json.
 *
 *   ./bin/deno run -A --unstable-webgpu bench/decode.ts [--steps N] [--real-experts E]
 *     [--real-vocab V]
 *
 * Every figure printed is measured in this run; the only estimates are the real-shape fixture's
 * generation time and memory, used to choose its expert count and vocab before writing it, and
 * they are printed as estimates beside the measured values.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { type FixtureOptions, mulberry32, SMALL, TINY, writeFixture } from "../weights/fixture.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { greedyToken } from "../src/greedy.ts";
import type { ModelConfig } from "../src/types.ts";
import { measureMemcpy, median } from "./memcpy.ts";

/** Prompt tokens before the timed decode steps ("a short prefill"). */
const DECODE_PREFILL_TOKENS = 8;
/** Untimed decode steps first: pipeline compilation and first touches of every buffer. */
const WARMUP_STEPS = 2;
/** Timed decode steps by default (--steps): enough for a stable median, quick on llvmpipe. */
const DEFAULT_STEPS = 16;
/** Prompt length of the prefill measurement; also maxBatch, so it runs as one forward step. */
const PREFILL_PROMPT_TOKENS = 64;
/** Timed prefills (after one untimed); the median is reported. */
const PREFILL_REPS = 3;
/** Seed of the random prompt ids (any fixed value: the fixtures' weights are random anyway). */
const PROMPT_SEED = 7;
const OUT_FILE = new URL("./out/decode.json", import.meta.url).pathname;

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
const QWEN3_30B_A3B: FixtureOptions = {
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
const GENERATION_BYTES_PER_PARAM: Record<FixtureOptions["dtype"], number> = {
  F32: 8,
  BF16: 6,
  F16: 6,
};
/** Calibration fixture: one layer of the real shapes with few experts and a small vocab. */
const CALIBRATION: Partial<FixtureOptions> = { layers: 1, experts: 2, topK: 2, vocab: 2048 };

/** Parameters a fixture holds (every tensor writeFixture writes, norms included). */
function paramCount(o: FixtureOptions): number {
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
async function writeFixtureInChild(dir: string, opts: FixtureOptions) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, CHILD_FLAG, dir, JSON.stringify(opts)],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`fixture child failed (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout)) as GenerationResult;
}

interface GenerationResult {
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

/** Greedy decode as generateGreedy() does it, without its EOS stop: exactly `steps` are timed. */
async function timeDecode(model: GpuModel, steps: number) {
  const session = model.newSession();
  try {
    const prompt = promptIds(DECODE_PREFILL_TOKENS, model.config.vocabSize);
    let [logits] = await session.forward(prompt, { lastOnly: true });
    let next = greedyToken(logits);
    const ms: number[] = [];
    let cpu = process.cpuUsage();
    for (let i = 0; i < WARMUP_STEPS + steps; i++) {
      if (i === WARMUP_STEPS) cpu = process.cpuUsage();
      const t0 = performance.now();
      [logits] = await session.forward([next], { lastOnly: true });
      next = greedyToken(logits);
      if (i >= WARMUP_STEPS) ms.push(performance.now() - t0);
    }
    const used = process.cpuUsage(cpu);
    const medianMs = median(ms);
    return {
      prefillTokens: DECODE_PREFILL_TOKENS,
      warmupSteps: WARMUP_STEPS,
      steps,
      medianMs,
      minMs: Math.min(...ms),
      maxMs: Math.max(...ms),
      tokensPerS: 1000 / medianMs,
      cpuMsPerToken: (used.user + used.system) / 1000 / steps,
    };
  } finally {
    session.free();
  }
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

/** Opens a checkpoint on the GPU, measures decode and prefill, frees everything. */
async function benchModel(gpu: Gpu, dir: string, steps: number) {
  const opened = openModelDir(dir);
  try {
    const c = opened.weights.config;
    const elemBytes = opened.weights.layers[0].q.dtype === "F32" ? 4 : 2;
    const t0 = performance.now();
    const model = await GpuModel.open(opened.weights, {
      gpu,
      maxContext: Math.max(DECODE_PREFILL_TOKENS + WARMUP_STEPS + steps, PREFILL_PROMPT_TOKENS),
      maxBatch: PREFILL_PROMPT_TOKENS,
    });
    await gpu.device.queue.onSubmittedWorkDone(); // the uploads are part of loading
    const loadS = (performance.now() - t0) / 1000;
    try {
      const decode = await timeDecode(model, steps);
      const prefill = await timePrefill(model);
      return { config: c, elemBytes, loadS, decode, prefill };
    } finally {
      model.destroy();
    }
  } finally {
    opened.close();
  }
}

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

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      steps: { type: "string" },
      "real-experts": { type: "string" },
      "real-vocab": { type: "string" },
    },
    strict: true,
  });
  const steps = values.steps ? Number(values.steps) : DEFAULT_STEPS;
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError("--steps: a positive integer");

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
  try {
    const real = await pickRealShape(tmp, {
      experts: values["real-experts"] ? Number(values["real-experts"]) : undefined,
      vocab: values["real-vocab"] ? Number(values["real-vocab"]) : undefined,
    });
    const runs: [string, FixtureOptions][] = [
      ["TINY", { ...TINY, dtype: "BF16" }],
      ["SMALL", { ...SMALL, dtype: "BF16" }],
      [REAL_NAME, real.options],
    ];
    for (const [name, opts] of runs) {
      const dir = `${tmp}/${name.replace(/\W+/g, "_")}`;
      const gen = opts === real.options
        ? await writeFixtureInChild(dir, opts)
        : await writeFixtureTimed(dir, opts);
      console.error(
        `${name}: fixture of ${(paramCount(opts) / 1e6).toFixed(1)} M params written in ` +
          `${gen.seconds.toFixed(1)} s; benchmarking`,
      );
      const r = await benchModel(gpu, dir, steps);
      await Deno.remove(dir, { recursive: true });
      const bytes = bytesPerToken(r.config, r.elemBytes);
      const effectiveGBs = bytes.total * r.decode.tokensPerS / 1e9;
      models.push({
        name,
        fixture: { ...opts, params: paramCount(opts), generation: gen },
        loadS: r.loadS,
        bytesPerToken: bytes,
        decode: { ...r.decode, effectiveGBs, ofMemcpy: effectiveGBs / memcpy.bestGBs },
        prefill: r.prefill,
      });
    }
    printTable(models, memcpy.bestGBs);
    printNotes(models, real.options);
    const report = {
      date: new Date().toISOString(),
      machine: host,
      memcpy,
      realShape: real.report,
      models,
    };
    await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
    await Deno.writeTextFile(OUT_FILE, JSON.stringify(report, null, 2) + "\n");
    console.log(`wrote ${OUT_FILE}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

/** One model's results, as printed and as written to the JSON file. */
interface Row {
  name: string;
  fixture: FixtureOptions & { params: number; generation: GenerationResult };
  loadS: number;
  bytesPerToken: BytesPerToken;
  decode: Awaited<ReturnType<typeof timeDecode>> & { effectiveGBs: number; ofMemcpy: number };
  prefill: Awaited<ReturnType<typeof timePrefill>>;
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
    "decode ms/tok",
    "tok/s",
    "CPU ms/tok",
    "MB/tok",
    "eff GB/s",
    "of memcpy",
  ];
  const cells = rows.map((r) => [
    r.name,
    String(r.fixture.layers),
    String(r.fixture.hidden),
    `${r.fixture.experts}/${r.fixture.topK}`,
    String(r.fixture.vocab),
    r.loadS.toFixed(1),
    r.prefill.tokensPerS.toFixed(1),
    r.decode.medianMs.toFixed(1),
    r.decode.tokensPerS.toFixed(2),
    r.decode.cpuMsPerToken.toFixed(1),
    (r.bytesPerToken.total / 1e6).toFixed(2),
    r.decode.effectiveGBs.toFixed(3),
    `${(r.decode.effectiveGBs / memcpyGBs * 100).toFixed(1)}%`,
  ]);
  const width = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((s, i) => (i ? s.padStart(width[i]) : s.padEnd(width[i])));
  console.log(line(head).join("  "));
  for (const c of cells) console.log(line(c).join("  "));
}

/** Per model, where its bytes per token go; then how the real-shape fixture was made. */
function printNotes(rows: Row[], real: FixtureOptions): void {
  const mb = (n: number) => (n / 1e6).toFixed(2);
  for (const r of rows) {
    const b = r.bytesPerToken;
    console.log(
      `${r.name}: MB/tok = attention ${mb(b.attention)} + router ${mb(b.router)} + ` +
        `experts ${mb(b.experts)} + lm_head ${mb(b.lmHead)}`,
    );
  }
  const gen = rows.find((r) => r.name === REAL_NAME)?.fixture.generation;
  const peak = gen?.peakRssBytes ? `, peak RSS ${(gen.peakRssBytes / 2 ** 30).toFixed(2)} GiB` : "";
  console.log(
    `${REAL_NAME}: real layer shapes with ${real.experts} of ` +
      `${QWEN3_30B_A3B.experts} experts and vocab ${real.vocab} of ${QWEN3_30B_A3B.vocab}; ` +
      `writeFixture took ${gen?.seconds.toFixed(1)} s${peak}`,
  );
}

if (import.meta.main) {
  if (Deno.args[0] === CHILD_FLAG) await childMain(Deno.args[1], Deno.args[2]);
  else await main();
}
