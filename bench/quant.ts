/**
 * Quantized packs side by side with bf16, in one run: `pack(inDir, outDir, { quant })` with the
 * experts (and with "+base" also q/k/v/o and lm_head) in Q8_0, Q4_0 and Q4_K, on the embedded
 * default model and on two layers of Qwen3-30B-A3B's real shapes (a random BF16 fixture). Per
 * variant: bytes of an expert record and of its GPU slot, held-out perplexity (default model
 * only: the fixture's weights are random), greedy decode tokens/s with every expert resident and
 * under a budget of 25% of bf16's expert bytes (more slots when records are smaller), and the
 * expert cache's hit rate and loads per token at that budget; ratios against bf16 of this run.
 * Not a test: prints one table and writes bench/out/quant.json.
 *
 *   ./bin/deno task bench:quant [--tokens N] [--real-tokens N] [--windows N] [--reps N]
 *     [--real-experts E] [--real-vocab V] [--skip-real]
 *
 * Every figure is measured in this run. Packs are written into a temp dir removed at the end.
 */
import { parseArgs } from "node:util";
import { mulberry32 } from "../weights/fixture.ts";
import { pack } from "../src/pack/pack.ts";
import type { QuantOptions } from "../src/pack/quantize.ts";
import type { QuantType } from "../src/quant/formats.ts";
import type { ModelConfig } from "../src/types.ts";
import type { PackManifest } from "../src/pack/format.ts";
import { DEFAULT_MODEL_DIR, type OpenedModel, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { modelExpertLayouts } from "../src/gpu/expert_pool.ts";
import { perplexity } from "../src/perplexity.ts";
import { decodeRun, paramCount, QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { median } from "./memcpy.ts";

const HELDOUT = new URL("../tools/train/heldout_eval_ids.json", import.meta.url);
const OUT_FILE = new URL("./out/quant.json", import.meta.url).pathname;
/** The config the pack children run with (the bench task's). */
const CONFIG = new URL("../deno.test.json", import.meta.url).pathname;

/** Types benchmarked, each for the experts alone and for experts and base. */
const TYPES: QuantType[] = ["Q8_0", "Q4_0", "Q4_K"];
/** The expert budget: this fraction of the bf16 pack's expert bytes (every slot of L x E). */
const BUDGET_FRACTION = 0.25;
/** Greedy tokens per timed decode of the default model (--tokens). */
const DEFAULT_TOKENS = 64;
/** The same for the real-shape model (--real-tokens): a step takes 0.1-0.5 s there. */
const DEFAULT_REAL_TOKENS = 16;
/** Held-out windows of the perplexity (--windows; 256 tokens each, of 64). */
const DEFAULT_WINDOWS = 16;
/** Timed decodes per variant and budget (--reps), in alternating variant order; medians. */
const DEFAULT_REPS = 3;
/** Tokens of the untimed warm-up decode on every opened model (another prompt than the timed
 * one, so the cache does not start with the timed decode's own experts). */
const WARMUP_TOKENS = 8;
/** Prompt tokens before each decode. */
const PROMPT_TOKENS = 8;
/** Packs run in child processes, this many at once (quantizing is single-threaded JS). */
const PACK_CONCURRENCY = 2;
/** The real-shape fixture's size unless --real-experts/--real-vocab: 32 of 128 experts and a
 * 32768 vocab keep its generation near 30 s and under 3 GiB, and its Q4_K packs near 2 minutes
 * (Q4_K's reference quantizer is slow; the untied lm_head is quantized by "+base"). */
const REAL_DEFAULT = { experts: 32, vocab: 32768 };
const REAL_NAME = "30B-A3B x2";
const DEFAULT_NAME = "default";
/** Seeds of the real-shape model's random prompts (its weights are random anyway). */
const PROMPT_SEED = 7;
const WARMUP_SEED = 8;

/** A pack to compare: bf16 as packed, or quantized. */
interface Variant {
  name: string;
  quant: QuantOptions | null;
}

const VARIANTS: Variant[] = [
  { name: "bf16", quant: null },
  ...TYPES.flatMap((t) => [
    { name: `${t}`, quant: { experts: t } },
    { name: `${t}+base`, quant: { experts: t, base: t } },
  ]),
];

// ---- packing, in child processes ----

/** Flag that makes this script pack one model and exit (the child side of packInChild). */
const PACK_CHILD_FLAG = "--pack-child";

interface PackFigures {
  seconds: number;
  baseBytes: number;
  expertBytes: number;
}

async function packChildMain(inDir: string, outDir: string, quant: string): Promise<void> {
  const r = await pack(inDir, outDir, { quant: JSON.parse(quant) });
  const out: PackFigures = {
    seconds: r.seconds,
    baseBytes: r.baseBytes,
    expertBytes: r.expertBytes,
  };
  console.log(JSON.stringify(out));
}

async function packInChild(inDir: string, outDir: string, quant: QuantOptions) {
  const script = new URL(import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      CONFIG,
      "-A",
      script,
      PACK_CHILD_FLAG,
      inDir,
      outDir,
      JSON.stringify(quant),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`pack of ${outDir} failed (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout)) as PackFigures;
}

/** Runs jobs, n at a time, in order of start; after a failure starts no more, and throws the
 * first error once the running ones have ended (so no child outlives the temp dir). */
async function pool<T>(jobs: (() => Promise<T>)[], n: number): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  const errors: unknown[] = [];
  let next = 0;
  const worker = async () => {
    while (next < jobs.length && errors.length === 0) {
      const i = next++;
      try {
        results[i] = await jobs[i]();
      } catch (e) {
        errors.push(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, jobs.length) }, worker));
  if (errors.length) throw errors[0];
  return results;
}

// ---- one model's variants ----

/** A packed variant: where it is and what its manifest and slot layouts say. */
interface Packed {
  variant: Variant;
  dir: string;
  /** Pack time (null: the bf16 default model, packed before this run). */
  packS: number | null;
  config: ModelConfig;
  manifest: PackManifest;
  gateDtype: string;
  downDtype: string;
  baseDtype: string;
  recordBytes: number;
  slotBytes: number;
  /** Every layer's records: sum over layers of recordBytes x E. */
  expertBytes: number;
  baseFileBytes: number;
}

async function inspectVariant(v: Variant, dir: string, packS: number | null): Promise<Packed> {
  const opened = await openModel(dir);
  try {
    const manifest: PackManifest = JSON.parse(await Deno.readTextFile(`${dir}/manifest.json`));
    const layouts = modelExpertLayouts(opened.weights);
    const E = opened.weights.config.numExperts;
    return {
      variant: v,
      dir,
      packS,
      config: opened.weights.config,
      manifest,
      gateDtype: layouts[0].gateDtype,
      downDtype: layouts[0].downDtype,
      baseDtype: opened.weights.layers[0].q.dtype,
      recordBytes: layouts[0].recordBytes,
      slotBytes: layouts[0].slotBytes,
      expertBytes: layouts.reduce((n, l) => n + l.recordBytes * E, 0),
      baseFileBytes: manifest.base.bytes,
    };
  } finally {
    opened.close();
  }
}

/**
 * Opens a variant for `fn` and closes it after, so one variant's files are mapped at a time.
 * Every expert record is read once first (checksum-verified and paged in, untimed), so no timed
 * decode pays a record's first-read verification.
 */
async function withVariant<T>(p: Packed, fn: (opened: OpenedModel) => Promise<T>): Promise<T> {
  const opened = await openModel(p.dir);
  try {
    const { numLayers: L, numExperts: E } = opened.weights.config;
    for (let l = 0; l < L; l++) for (let e = 0; e < E; e++) opened.experts?.read(l, e);
    return await fn(opened);
  } finally {
    opened.close();
  }
}

/** One timed decode's figures. */
interface RunFigures {
  tokensPerS: number;
  decodeTokens: number;
  readbacks: number;
  expertLoads: number;
  hits: number;
  misses: number;
  /** Hits on prefetched experts (the cache counts them as hits). */
  prefetchHits: number;
  loadS: number;
  tokens: number[];
}

/** A variant at one budget, over the reps. */
interface BudgetFigures {
  slots: number;
  runs: RunFigures[];
  tokensPerS: number;
  readbacksPerToken: number;
  /** Pooled cache hit rate over the timed decode calls (their 8-token prompt included). */
  hitRate: number;
  /** The same without the hits on prefetched experts. */
  hitRateNoPrefetch: number;
  /** Expert records uploaded per decode step (misses and prefetches; prompt excluded). */
  loadsPerToken: number;
  /** Whether every rep decoded the same tokens. */
  stable: boolean;
}

function summarise(slots: number, runs: RunFigures[]): BudgetFigures {
  const sum = (f: (r: RunFigures) => number) => runs.reduce((n, r) => n + f(r), 0);
  const tokens = sum((r) => r.decodeTokens);
  const lookups = sum((r) => r.hits + r.misses);
  return {
    slots,
    runs,
    tokensPerS: median(runs.map((r) => r.tokensPerS)),
    readbacksPerToken: sum((r) => r.readbacks) / tokens,
    hitRate: lookups ? sum((r) => r.hits) / lookups : 1,
    hitRateNoPrefetch: lookups ? sum((r) => r.hits - r.prefetchHits) / lookups : 1,
    loadsPerToken: sum((r) => r.expertLoads) / tokens,
    stable: runs.every((r) => sameTokens(r.tokens, runs[0].tokens)),
  };
}

function sameTokens(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

function commonPrefix(a: number[], b: number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/** Opens the variant on the GPU with `slots` expert slots, warms it up, times one decode. */
async function timedDecode(
  gpu: Gpu,
  opened: OpenedModel,
  slots: number,
  prompts: { timed: number[]; warmup: number[] },
  tokens: number,
): Promise<RunFigures> {
  const t0 = performance.now();
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: PROMPT_TOKENS + Math.max(tokens, WARMUP_TOKENS),
    expertSource: opened.experts,
    expertSlots: slots,
  });
  await gpu.device.queue.onSubmittedWorkDone();
  const loadS = (performance.now() - t0) / 1000;
  try {
    await decodeRun(model, prompts.warmup, WARMUP_TOKENS, undefined);
    const m0 = model.cache.metrics.snapshot();
    const r = await decodeRun(model, prompts.timed, tokens, undefined);
    const m1 = model.cache.metrics.snapshot();
    return {
      tokensPerS: r.tokensPerS,
      decodeTokens: r.stats.tokens,
      readbacks: r.stats.readbacks,
      expertLoads: r.stats.expertLoads,
      hits: m1.hits - m0.hits,
      misses: m1.misses - m0.misses,
      prefetchHits: m1.prefetchHit - m0.prefetchHit,
      loadS,
      tokens: r.tokens,
    };
  } finally {
    model.destroy();
  }
}

/** One variant's row: its pack's figures, then what was measured. */
interface VariantRow extends Omit<Packed, "config" | "manifest" | "variant"> {
  model: string;
  variant: string;
  quant: QuantOptions | null;
  dir: string;
  fallbacks: NonNullable<PackManifest["quantization"]>["fallbacks"];
  perplexity: { value: number; scoredTokens: number; windows: number; seconds: number } | null;
  resident: BudgetFigures;
  budget: BudgetFigures;
  /** Leading resident tokens equal to bf16's (rep 0). */
  prefixAsBf16: number;
  /** The budget run decoded the resident run's tokens (exact caching changes nothing). */
  budgetSameAsResident: boolean;
}

interface ModelSetup {
  name: string;
  /** Where bf16 comes from: an already packed dir, or a checkpoint to pack first. */
  bf16Dir: string;
  bf16Packed: boolean;
  prompts: { timed: number[]; warmup: number[] };
  tokens: number;
  windows: number[][] | null;
}

/** Packs the variants, measures perplexity, then the decodes in alternating order. */
async function benchModel(
  gpu: Gpu,
  tmp: string,
  setup: ModelSetup,
  reps: number,
): Promise<{ rows: VariantRow[]; budgetBytes: number; packWallS: number }> {
  const dirOf = (v: Variant) => `${tmp}/${setup.name.replace(/\W+/g, "_")}-${v.name}`;
  const t0 = performance.now();
  const packFigures = await pool(
    VARIANTS.map((v) => () => {
      if (v.quant === null && setup.bf16Packed) return Promise.resolve(null);
      console.error(`${setup.name}: packing ${v.name}`);
      return packInChild(setup.bf16Dir, dirOf(v), v.quant ?? {});
    }),
    PACK_CONCURRENCY,
  );
  const packWallS = (performance.now() - t0) / 1000;
  const packed: Packed[] = [];
  for (const [i, v] of VARIANTS.entries()) {
    const dir = v.quant === null && setup.bf16Packed ? setup.bf16Dir : dirOf(v);
    packed.push(await inspectVariant(v, dir, packFigures[i]?.seconds ?? null));
  }
  const c = packed[0].config;
  const total = c.numLayers * c.numExperts;
  const budgetBytes = BUDGET_FRACTION * packed[0].slotBytes * total;
  const slotsAt = (p: Packed) =>
    Math.min(total, Math.max(c.topK, Math.floor(budgetBytes / p.slotBytes)));

  // perplexity, every expert resident (exact: a budget would not change it)
  const ppl: VariantRow["perplexity"][] = [];
  for (const p of packed) {
    if (!setup.windows) {
      ppl.push(null);
      continue;
    }
    const windows = setup.windows;
    const t1 = performance.now();
    const r = await withVariant(p, async (opened) => {
      const model = await GpuModel.open(opened.weights, {
        gpu,
        maxContext: Math.max(...windows.map((w) => w.length)),
        expertSource: opened.experts,
      });
      try {
        return await perplexity(model, windows);
      } finally {
        model.destroy();
      }
    });
    const seconds = (performance.now() - t1) / 1000;
    ppl.push({
      value: r.perplexity,
      scoredTokens: r.scoredTokens,
      windows: windows.length,
      seconds,
    });
    console.error(`${setup.name} ${p.variant.name}: perplexity ${r.perplexity.toFixed(3)}`);
  }

  // decodes: variants forward then backward, resident and budget swapped each rep
  const runs = packed.map(() => ({ resident: [] as RunFigures[], budget: [] as RunFigures[] }));
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 === 0 ? [...packed.keys()] : [...packed.keys()].reverse();
    for (const i of order) {
      const p = packed[i];
      const kinds = rep % 2 === 0
        ? (["resident", "budget"] as const)
        : (["budget", "resident"] as const);
      await withVariant(p, async (opened) => {
        for (const kind of kinds) {
          const slots = kind === "resident" ? total : slotsAt(p);
          const r = await timedDecode(gpu, opened, slots, setup.prompts, setup.tokens);
          runs[i][kind].push(r);
          console.error(
            `${setup.name} ${p.variant.name} ${kind} (${slots} slots) rep ${rep + 1}: ` +
              `${r.tokensPerS.toFixed(2)} tok/s, ` +
              `${(r.expertLoads / r.decodeTokens).toFixed(2)} loads/tok; ${rss()}`,
          );
        }
      });
    }
  }
  const bf16Tokens = runs[0].resident[0].tokens;
  const rows = packed.map((p, i): VariantRow => ({
    model: setup.name,
    variant: p.variant.name,
    quant: p.variant.quant,
    dir: p.dir,
    packS: p.packS,
    gateDtype: p.gateDtype,
    downDtype: p.downDtype,
    baseDtype: p.baseDtype,
    recordBytes: p.recordBytes,
    slotBytes: p.slotBytes,
    expertBytes: p.expertBytes,
    baseFileBytes: p.baseFileBytes,
    fallbacks: p.manifest.quantization?.fallbacks ?? [],
    perplexity: ppl[i],
    resident: summarise(total, runs[i].resident),
    budget: summarise(slotsAt(p), runs[i].budget),
    prefixAsBf16: commonPrefix(runs[i].resident[0].tokens, bf16Tokens),
    budgetSameAsResident: runs[i].budget.every((r) =>
      sameTokens(r.tokens, runs[i].resident[0].tokens)
    ),
  }));
  return { rows, budgetBytes, packWallS };
}

// ---- the run ----

/** The machine the figures come from (as bench/routing.ts). */
function machine(gpu: Gpu) {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return {
    adapter: gpu.adapterInfo.description || gpu.adapterInfo.vendor,
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    loadAvg1m: loadAvg(),
  };
}

function loadAvg(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}

/** This process's resident memory now: anonymous (heap, llvmpipe's buffers) and mapped files. */
function rss(): string {
  const status = Deno.readTextFileSync("/proc/self/status");
  const gib = (key: string) =>
    (Number(new RegExp(`^${key}:\\s*(\\d+) kB`, "m").exec(status)?.[1]) / 2 ** 20).toFixed(2);
  return `RSS ${gib("VmRSS")} GiB (anon ${gib("RssAnon")}, file ${gib("RssFile")})`;
}

function peakRssBytes(): number {
  const hwm = /^VmHWM:\s*(\d+) kB/m.exec(Deno.readTextFileSync("/proc/self/status"));
  return hwm ? Number(hwm[1]) * 1024 : NaN;
}

function positiveInt(flag: string, value: string | undefined, fallback: number): number {
  const n = value === undefined ? fallback : Number(value);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--${flag}: a positive integer`);
  return n;
}

function randomIds(n: number, vocab: number, seed: number): number[] {
  const rand = mulberry32(seed);
  return Array.from({ length: n }, () => Math.floor(rand() * vocab));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      tokens: { type: "string" },
      "real-tokens": { type: "string" },
      windows: { type: "string" },
      reps: { type: "string" },
      "real-experts": { type: "string" },
      "real-vocab": { type: "string" },
      "skip-real": { type: "boolean" },
    },
    strict: true,
  });
  const tokens = positiveInt("tokens", values.tokens, DEFAULT_TOKENS);
  const realTokens = positiveInt("real-tokens", values["real-tokens"], DEFAULT_REAL_TOKENS);
  const reps = positiveInt("reps", values.reps, DEFAULT_REPS);
  const realExperts = positiveInt("real-experts", values["real-experts"], REAL_DEFAULT.experts);
  const realVocab = positiveInt("real-vocab", values["real-vocab"], REAL_DEFAULT.vocab);
  if (tokens < 2 || realTokens < 2) throw new RangeError("--tokens: at least 2 (one decode step)");
  const heldout: { windows: number[][] } = JSON.parse(await Deno.readTextFile(HELDOUT));
  const nWindows = Math.min(
    positiveInt("windows", values.windows, DEFAULT_WINDOWS),
    heldout.windows.length,
  );

  const started = performance.now();
  const gpu = await openGpu();
  const host = machine(gpu);
  console.log(`adapter: ${host.adapter}`);
  console.log(`cpu: ${host.cpu}, ${host.cores} cores, load ${host.loadAvg1m} (1 min avg at start)`);
  console.log(`deno ${host.deno}`);

  const tmp = await Deno.makeTempDir({ prefix: "bench-quant-" });
  const rows: VariantRow[] = [];
  const models: Record<string, unknown>[] = [];
  try {
    const setups: (() => Promise<ModelSetup & { fixture?: Record<string, unknown> }>)[] = [
      () =>
        Promise.resolve({
          name: DEFAULT_NAME,
          bf16Dir: DEFAULT_MODEL_DIR,
          bf16Packed: true,
          prompts: {
            timed: heldout.windows[0].slice(0, PROMPT_TOKENS),
            warmup: heldout.windows[1].slice(0, PROMPT_TOKENS),
          },
          tokens,
          windows: heldout.windows.slice(0, nWindows),
        }),
    ];
    if (!values["skip-real"]) {
      setups.push(async () => {
        const options = { ...QWEN3_30B_A3B, experts: realExperts, vocab: realVocab };
        const dir = `${tmp}/real-checkpoint`;
        console.error(
          `${REAL_NAME}: writing a ${(paramCount(options) / 1e9).toFixed(2)} B-param BF16 ` +
            `fixture (${realExperts} experts, vocab ${realVocab})`,
        );
        const generation = await writeFixtureInChild(dir, options);
        return {
          name: REAL_NAME,
          bf16Dir: dir,
          bf16Packed: false,
          prompts: {
            timed: randomIds(PROMPT_TOKENS, realVocab, PROMPT_SEED),
            warmup: randomIds(PROMPT_TOKENS, realVocab, WARMUP_SEED),
          },
          tokens: realTokens,
          windows: null,
          fixture: { ...options, params: paramCount(options), generation },
        };
      });
    }
    for (const make of setups) {
      const t0 = performance.now();
      const setup = await make();
      const r = await benchModel(gpu, tmp, setup, reps);
      if (!setup.bf16Packed) await Deno.remove(setup.bf16Dir, { recursive: true });
      const c = await openModelConfig(r.rows[0].dir);
      rows.push(...r.rows);
      models.push({
        name: setup.name,
        shape: c,
        fixture: setup.fixture ?? null,
        tokens: setup.tokens,
        windows: setup.windows?.length ?? null,
        budgetFraction: BUDGET_FRACTION,
        budgetBytes: r.budgetBytes,
        packWallS: r.packWallS,
        benchS: (performance.now() - t0) / 1000,
      });
      for (const row of r.rows) {
        if (row.dir.startsWith(tmp)) await Deno.remove(row.dir, { recursive: true });
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const totalS = (performance.now() - started) / 1000;

  printTable(rows);
  printNotes(rows, models, reps);
  const peak = peakRssBytes();
  console.log(
    `load ${loadAvg()} (1 min avg at the end); peak RSS of this process ` +
      `${(peak / 2 ** 30).toFixed(2)} GiB; total ${totalS.toFixed(0)} s`,
  );
  const report = {
    date: new Date().toISOString(),
    machine: { ...host, loadAvg1mEnd: loadAvg() },
    options: { tokens, realTokens, reps, windows: nWindows, warmupTokens: WARMUP_TOKENS },
    models,
    variants: rows,
    peakRssBytes: peak,
    totalS,
  };
  await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(OUT_FILE, JSON.stringify(report, null, 1) + "\n");
  console.log(`wrote ${OUT_FILE}`);
}

/** The shape figures of a packed model's config (for the JSON). */
async function openModelConfig(dir: string) {
  const manifest: PackManifest = JSON.parse(await Deno.readTextFile(`${dir}/manifest.json`));
  const c = manifest.config as Record<string, number>;
  return {
    layers: c.num_hidden_layers,
    hidden: c.hidden_size,
    experts: c.num_experts,
    topK: c.num_experts_per_tok,
    inter: c.moe_intermediate_size,
    vocab: c.vocab_size,
  };
}

const pct = (x: number, digits = 1) => `${(100 * x).toFixed(digits)}%`;
const signedPct = (x: number) => `${x >= 0 ? "+" : ""}${pct(x, 2)}`;
const times = (x: number) => `${x.toFixed(2)}x`;

/** Left-aligned first two columns, right-aligned others. */
function printTable(rows: VariantRow[]): void {
  const head = [
    "model",
    "variant",
    "experts",
    "base",
    "record KiB",
    "x bf16",
    "slot KiB",
    "x bf16",
    "base MiB",
    "perplexity",
    "vs bf16",
    "tok/s all",
    "x bf16",
    "slots 25%",
    "tok/s 25%",
    "x bf16",
    "hit 25%",
    "no pf",
    "loads/tok",
    "prefix",
  ];
  const bf16 = (r: VariantRow) => rows.find((b) => b.model === r.model && b.quant === null)!;
  const cells = rows.map((r) => {
    const b = bf16(r);
    const experts = r.gateDtype === r.downDtype ? r.gateDtype : `${r.gateDtype}/${r.downDtype}`;
    return [
      r.model,
      r.variant,
      experts.toUpperCase(),
      r.baseDtype.toUpperCase(),
      (r.recordBytes / 1024).toFixed(1),
      times(r.recordBytes / b.recordBytes),
      (r.slotBytes / 1024).toFixed(1),
      times(r.slotBytes / b.slotBytes),
      (r.baseFileBytes / 2 ** 20).toFixed(1),
      r.perplexity ? r.perplexity.value.toFixed(3) : "-",
      r.perplexity && b.perplexity ? signedPct(r.perplexity.value / b.perplexity.value - 1) : "-",
      r.resident.tokensPerS.toFixed(2),
      times(r.resident.tokensPerS / b.resident.tokensPerS),
      String(r.budget.slots),
      r.budget.tokensPerS.toFixed(2),
      times(r.budget.tokensPerS / b.budget.tokensPerS),
      pct(r.budget.hitRate),
      pct(r.budget.hitRateNoPrefetch),
      r.budget.loadsPerToken.toFixed(2),
      `${r.prefixAsBf16}/${r.resident.runs[0].tokens.length}`,
    ];
  });
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i < 2 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ");
  console.log(line(head));
  console.log(w.map((n) => "-".repeat(n)).join("  "));
  for (const c of cells) console.log(line(c));
}

/** What the columns mean and what was used; fallbacks, pack times, runs, exactness. */
function printNotes(rows: VariantRow[], models: Record<string, unknown>[], reps: number): void {
  console.log(
    `experts: gate(=up)/down types as packed; base: q/k/v/o type; "+base": q/k/v/o and lm_head ` +
      `(the embedding table too when tied) in the experts' type. record: gate | up | down as packed; ` +
      `slot: its GPU slot stride (parts aligned to whole blocks). Perplexity: every expert resident. tok/s: ` +
      `median of ${reps} greedy decodes (variants in alternating order, resident and 25% ` +
      `swapped each rep, each on a freshly opened model after an untimed ${WARMUP_TOKENS}-token ` +
      `decode of another prompt), adaptive steps per readback (bench/decode.ts decodeRun), ` +
      `decode steps only. 25%: slots = floor(${BUDGET_FRACTION} x bf16 slot bytes x L x E / ` +
      `slot bytes), at least top-k. hit: cache hit rate over the timed decode calls (their ` +
      `${PROMPT_TOKENS}-token prompt included; the cache counts a use of a prefetched expert as a ` +
      `hit), "no pf": without those; loads/tok: expert records uploaded per decode ` +
      `step (misses + prefetches). prefix: leading greedy tokens equal to bf16's.`,
  );
  for (const m of models) {
    const s = m.shape as Record<string, number>;
    const fixture = m.fixture as
      | { generation: { seconds: number; peakRssBytes?: number }; params: number }
      | null;
    const gen = fixture
      ? `; random BF16 fixture of ${(fixture.params / 1e9).toFixed(2)} B params written in ` +
        `${fixture.generation.seconds.toFixed(1)} s` +
        (fixture.generation.peakRssBytes
          ? ` (child peak RSS ${(fixture.generation.peakRssBytes / 2 ** 30).toFixed(2)} GiB)`
          : "")
      : "";
    console.log(
      `${m.name}: ${s.layers} layers, hidden ${s.hidden}, top-${s.topK} of ${s.experts} ` +
        `experts, inter ${s.inter}, vocab ${s.vocab}${gen}; ${m.tokens} tokens per decode` +
        (m.windows ? `; perplexity over ${m.windows} held-out windows` : "") +
        `; 25% budget = ${((m.budgetBytes as number) / 2 ** 20).toFixed(1)} MiB; packs ` +
        `${(m.packWallS as number).toFixed(0)} s wall (${PACK_CONCURRENCY} at once); ` +
        `${(m.benchS as number).toFixed(0)} s in all`,
    );
  }
  for (const r of rows) {
    const fb = r.fallbacks.map((f) => `${f.wanted} -> ${f.used} for ${f.tensor} (${f.reason})`);
    const runs = (b: BudgetFigures) => b.runs.map((x) => x.tokensPerS.toFixed(1)).join(" ");
    console.log(
      `${r.model} ${r.variant}: ` +
        (r.packS === null ? "as packed" : `packed in ${r.packS.toFixed(1)} s`) +
        `; tok/s runs all [${runs(r.resident)}], 25% [${runs(r.budget)}]; readbacks/tok ` +
        `${r.resident.readbacksPerToken.toFixed(3)} all, ${
          r.budget.readbacksPerToken.toFixed(3)
        } ` +
        `25%; same tokens every rep: ${r.resident.stable && r.budget.stable ? "yes" : "NO"}; ` +
        `25% decodes the resident tokens: ${r.budgetSameAsResident ? "yes" : "NO"}` +
        (fb.length ? `; fallbacks: ${fb.join("; ")}` : ""),
    );
  }
}

if (import.meta.main) {
  if (Deno.args[0] === PACK_CHILD_FLAG) {
    await packChildMain(Deno.args[1], Deno.args[2], Deno.args[3]);
  } else {
    await main();
  }
}
