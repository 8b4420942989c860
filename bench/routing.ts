/**
 * Routing facts and expert-cache tables of a trained model (default: the embedded default model),
 * measured on the held-out token windows of tools/train/heldout_eval_ids.json:
 *
 *   1. routing: every layer's routed experts per token, recorded through GpuModel.onRouting while
 *      the exact model (every expert resident) prefills each window; per layer the expert load,
 *      its entropy against log2(E), the extreme loads, and reuse at the next token and within
 *      REUSE_HORIZON tokens, against independent routing (uniform, and with the measured load);
 *   2. cache policies: that routing as the cache's access trace (token by token, layer by layer,
 *      one `now` per layer visit), replayed by simulate() with LRU and LRFU and by the Belady
 *      optimum at budgets of a fraction of all L x E experts;
 *   3. exact vs router masking: GpuModel at each budget, exact (routerMasking false) and masked,
 *      and under a budget also exact without prefetch (masked sessions never prefetch),
 *      held-out perplexity and greedy decode tokens/s, with the cache's hit rate and readbacks.
 *
 * Every figure is measured in the run; the model's shapes come from its config. Usage:
 *   ./bin/deno run -A --unstable-webgpu bench/routing.ts [--windows N] [--steps N] [--model DIR]
 * Results: stdout and bench/out/routing.json.
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL_DIR, type OpenedModel, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { perplexity, type PerplexityResult } from "../src/perplexity.ts";
import { greedyToken } from "../src/greedy.ts";
import {
  DEFAULT_LRFU_LAMBDA,
  LrfuPolicy,
  LruPolicy,
  simulate,
  simulateOptimal,
} from "../src/experts/policy.ts";
import type { ModelConfig } from "../src/types.ts";
import {
  budgetSlots,
  cacheTrace,
  hitRate,
  independentReuse,
  loadSummary,
  reuse,
  type SequenceRouting,
  splitRows,
  uniformReuse,
} from "./routing_stats.ts";

const HELDOUT = new URL("../tools/train/heldout_eval_ids.json", import.meta.url);
const REFERENCE = new URL("../tools/train/reference_outputs.json", import.meta.url);
const OUT_DIR = new URL("./out/", import.meta.url);
/** Look-ahead of the reuse figure: the tokens a small cache could bridge. */
const REUSE_HORIZON = 8;
/** Budgets of the policy replay, as fractions of all L x E experts. */
const POLICY_BUDGETS = [0.5, 0.25, 0.1];
/** Budgets of the exact vs masked runs (1: every expert resident, the exact baseline). */
const MASKING_BUDGETS = [1, 0.5, 0.25, 0.1];
/** Greedy decode steps timed per configuration. */
const DEFAULT_DECODE_STEPS = 32;
/** Prompt of the decode runs: the first tokens of the first held-out window. */
const PROMPT_TOKENS = 8;

interface Heldout {
  window: number;
  windows: number[][];
}

/** The machine the figures come from. */
function machine(gpu: Gpu) {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return {
    adapter: gpu.adapterInfo.description || gpu.adapterInfo.vendor,
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    loadAvg1m: Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]),
  };
}

/** Left-aligned first column, right-aligned others. */
function printTable(head: string[], rows: string[][]): void {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ");
  console.log(line(head));
  console.log(w.map((n) => "-".repeat(n)).join("  "));
  for (const r of rows) console.log(line(r));
}

const pct = (x: number, digits = 1) => `${(100 * x).toFixed(digits)}%`;

/**
 * Every window's routing per layer, from the exact model (all experts resident) prefilling each
 * window through perplexity(); returns the routing and the perplexity of that pass.
 */
async function recordRouting(
  gpu: Gpu,
  opened: OpenedModel,
  windows: number[][],
  maxContext: number,
): Promise<{ sequences: SequenceRouting[]; ppl: PerplexityResult }> {
  const c = opened.weights.config;
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext,
    expertSource: opened.experts,
  });
  const chunks: Uint32Array[][] = Array.from({ length: c.numLayers }, () => []);
  model.onRouting = (l, experts) => chunks[l].push(experts);
  try {
    const ppl = await perplexity(model, windows);
    const lengths = windows.map((w) => w.length);
    const perLayer = chunks.map((cs) => {
      const row = new Uint32Array(cs.reduce((n, x) => n + x.length, 0));
      let at = 0;
      for (const x of cs) {
        row.set(x, at);
        at += x.length;
      }
      return splitRows(row, lengths, c.topK);
    });
    const sequences = windows.map((_, s) => perLayer.map((rows) => rows[s]));
    return { sequences, ppl };
  } finally {
    model.destroy();
  }
}

/** Table 1: load, entropy and reuse per layer. */
function routingFacts(sequences: SequenceRouting[], c: ModelConfig) {
  const { numExperts: E, topK: K } = c;
  const uniform = uniformReuse(E, K, REUSE_HORIZON);
  return Array.from({ length: c.numLayers }, (_, l) => {
    const rows = sequences.map((s) => s[l]);
    const load = loadSummary(rows, E, K);
    return {
      layer: l,
      ...load,
      load: [...load.load],
      reuse: reuse(rows, E, K, REUSE_HORIZON),
      independentAtLoad: independentReuse(load.load, K, REUSE_HORIZON),
      uniform,
    };
  });
}

/**
 * Table 2: LRU, LRFU and Belady hit rates on the routing trace at each budget. LRFU runs with
 * the default lambda per `now` (a layer visit, as GpuModel's clock ticks) and with lambda / L,
 * the same decay per token (the default's doc counts `now` in decode tokens).
 */
function policyTable(sequences: SequenceRouting[], c: ModelConfig) {
  const trace = cacheTrace(sequences, c.numExperts, c.topK);
  const total = c.numLayers * c.numExperts;
  const lambdas = [DEFAULT_LRFU_LAMBDA, DEFAULT_LRFU_LAMBDA / c.numLayers];
  const rows = POLICY_BUDGETS.map((budget) => {
    const slots = budgetSlots(budget, total, c.topK);
    return {
      budget,
      slots,
      lru: hitRate(simulate(trace, slots, new LruPolicy<number>())),
      lrfu: lambdas.map((lambda) => hitRate(simulate(trace, slots, new LrfuPolicy(lambda)))),
      optimal: hitRate(simulateOptimal(trace, slots)),
    };
  });
  return { accesses: trace.length, lrfuLambdas: lambdas, rows };
}

/** How a table-3 model runs: router masking, and prefetch (GpuModelOptions.prefetch). */
interface Mode {
  masked: boolean;
  prefetch: boolean;
}

/** Table 3's modes at a budget: with every expert resident prefetch has nothing to do. */
function modesAt(budget: number): Mode[] {
  const exact = { masked: false, prefetch: true };
  const masked = { masked: true, prefetch: true };
  return budget < 1 ? [exact, { masked: false, prefetch: false }, masked] : [exact, masked];
}

function modeName(m: Mode): string {
  return m.masked ? "masked" : m.prefetch ? "exact" : "exact, no prefetch";
}

/** One row of table 3: a model at one budget, in one mode. */
interface MaskingRow {
  budget: number;
  slots: number;
  mode: string;
  masked: boolean;
  prefetch: boolean;
  perplexity: number;
  scoredTokens: number;
  /** Hit rate of the cache over the perplexity prefills. */
  prefillHitRate: number;
  /** Decode steps / their total seconds (reruns included). */
  decodeTokS: number;
  /** Median step time (less sensitive to other processes on the shared cores). */
  medianStepMs: number;
  /**
   * Over the decode steps only (the cache warmed by the perplexity pass). The cache counts a
   * use of a prefetched expert as a hit, so loadsPerToken is the cost figure.
   */
  decodeHitRate: number;
  /** Experts uploaded per decoded token: misses plus prefetches issued. */
  loadsPerToken: number;
  /** Prefetched experts evicted unused, per decoded token. */
  prefetchWastedPerToken: number;
  readbacksPerToken: number;
  rerunsPerToken: number;
  /** Decoded ids, and how many leading ones equal the exact full-budget run's (greedy
   * continuations part for good at their first difference). */
  tokens: number[];
  prefixAsExact: number;
}

async function maskingRun(
  gpu: Gpu,
  opened: OpenedModel,
  windows: number[][],
  budget: number,
  mode: Mode,
  steps: number,
  maxContext: number,
): Promise<Omit<MaskingRow, "prefixAsExact">> {
  const c = opened.weights.config;
  const slots = budgetSlots(budget, c.numLayers * c.numExperts, c.topK);
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext,
    expertSlots: slots,
    expertSource: opened.experts,
    routerMasking: mode.masked,
    prefetch: mode.prefetch,
  });
  try {
    const m0 = model.cache.metrics.snapshot();
    const ppl = await perplexity(model, windows);
    const m1 = model.cache.metrics.snapshot();
    // greedy decode after a short prompt; the timed part is the decode steps alone
    const session = model.newSession();
    const tokens: number[] = [];
    try {
      let [logits] = await session.forward(windows[0].slice(0, PROMPT_TOKENS), { lastOnly: true });
      const m2 = model.cache.metrics.snapshot();
      const s2 = { ...model.stats };
      const stepMs: number[] = [];
      for (let i = 0; i < steps; i++) {
        tokens.push(greedyToken(logits));
        const t0 = performance.now();
        [logits] = await session.forward([tokens[i]], { lastOnly: true });
        stepMs.push(performance.now() - t0);
      }
      const seconds = stepMs.reduce((a, b) => a + b, 0) / 1000;
      stepMs.sort((a, b) => a - b);
      const m3 = model.cache.metrics.snapshot();
      const rate = (a: typeof m0, b: typeof m0) => {
        const n = b.hits - a.hits + b.misses - a.misses;
        return n ? (b.hits - a.hits) / n : 0;
      };
      return {
        budget,
        slots,
        mode: modeName(mode),
        ...mode,
        perplexity: ppl.perplexity,
        scoredTokens: ppl.scoredTokens,
        prefillHitRate: rate(m0, m1),
        decodeTokS: steps / seconds,
        medianStepMs: stepMs[Math.floor(steps / 2)],
        decodeHitRate: rate(m2, m3),
        loadsPerToken: (m3.misses - m2.misses + m3.prefetchIssued - m2.prefetchIssued) / steps,
        prefetchWastedPerToken: (m3.prefetchWasted - m2.prefetchWasted) / steps,
        readbacksPerToken: (model.stats.readbacks - s2.readbacks) / steps,
        rerunsPerToken: (model.stats.reruns - s2.reruns) / steps,
        tokens,
      };
    } finally {
      session.free();
    }
  } finally {
    model.destroy();
  }
}

function positiveInt(v: string | undefined, fallback: number, flag: string): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${flag}: a positive integer, got ${v}`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      windows: { type: "string" },
      steps: { type: "string" },
      model: { type: "string" },
    },
    strict: true,
  });
  const heldout: Heldout = JSON.parse(await Deno.readTextFile(HELDOUT));
  const all = heldout.windows;
  const nWindows = Math.min(positiveInt(values.windows, all.length, "--windows"), all.length);
  const steps = positiveInt(values.steps, DEFAULT_DECODE_STEPS, "--steps");
  const modelDir = values.model ?? DEFAULT_MODEL_DIR;
  const tStart = performance.now();

  const gpu = await openGpu();
  const host = machine(gpu);
  console.log(`adapter: ${host.adapter}`);
  console.log(`cpu: ${host.cpu}, ${host.cores} cores, load ${host.loadAvg1m} (1 min avg at start)`);
  console.log(`deno ${host.deno}`);
  const opened = await openModel(modelDir);
  try {
    const c = opened.weights.config;
    const { numLayers: L, numExperts: E, topK: K } = c;
    console.log(
      `model: ${opened.dir}: ${L} layers, top-${K} of ${E} experts, vocab ${c.vocabSize}`,
    );
    const maxContext = Math.max(...all.map((w) => w.length), PROMPT_TOKENS + steps);

    // 1. routing facts
    const routed = await recordRouting(gpu, opened, all, maxContext);
    const reference = JSON.parse(await Deno.readTextFile(REFERENCE));
    const torchPpl: number | undefined = modelDir === DEFAULT_MODEL_DIR
      ? reference?.heldout?.perplexity
      : undefined;
    const tokens = all.reduce((n, w) => n + w.length, 0);
    console.log(
      `\n1. routing of ${all.length} held-out windows (${tokens} tokens), exact model: ` +
        `perplexity ${routed.ppl.perplexity.toFixed(3)} over ${routed.ppl.scoredTokens} ` +
        `scored tokens` + (torchPpl ? ` (torch float64 reference ${torchPpl.toFixed(3)})` : ""),
    );
    const facts = routingFacts(routed.sequences, c);
    const u = facts[0].uniform;
    console.log(
      `expert load per layer (% of routed slots, experts 0..${E - 1}; even: ${pct(1 / E, 2)})`,
    );
    for (const f of facts) {
      console.log(`  L${f.layer}: ${f.load.map((x) => (100 * x).toFixed(1)).join(" ")}`);
    }
    console.log(
      `reuse: of the experts routed at token t, the fraction routed again at t+1 and within ` +
        `t+1..t+${REUSE_HORIZON} (same layer, same window); "uniform": independent uniform ` +
        `top-${K} of ${E}; "indep": independent tokens with the measured load`,
    );
    printTable(
      [
        "layer",
        "entropy",
        `of ${Math.log2(E).toFixed(2)}`,
        "max load",
        "min load",
        "reuse t+1",
        "uniform",
        "indep",
        `reuse <=${REUSE_HORIZON}`,
        "uniform",
        "indep",
      ],
      facts.map((f) => [
        `L${f.layer}`,
        `${f.entropyBits.toFixed(3)} b`,
        pct(f.entropyBits / f.uniformBits),
        pct(f.maxLoad, 2),
        pct(f.minLoad, 2),
        pct(f.reuse.next),
        pct(u.next),
        pct(f.independentAtLoad.next),
        pct(f.reuse.withinHorizon),
        pct(u.withinHorizon),
        pct(f.independentAtLoad.withinHorizon),
      ]),
    );

    // 2. cache policies on the trace
    const policies = policyTable(routed.sequences, c);
    console.log(
      `\n2. cache hit rate replaying the routing trace (${policies.accesses} accesses, one now ` +
        `per layer visit; all experts: ${L * E})`,
    );
    printTable(
      [
        "budget",
        "slots",
        "lru",
        ...policies.lrfuLambdas.map((x) => `lrfu(${+x.toPrecision(3)})`),
        "belady",
      ],
      policies.rows.map((r) => [
        pct(r.budget, 0),
        String(r.slots),
        pct(r.lru),
        ...r.lrfu.map((x) => pct(x)),
        pct(r.optimal),
      ]),
    );

    // 3. exact vs router masking
    const windows = all.slice(0, nWindows);
    const runs: MaskingRow[] = [];
    let exactTokens: number[] | undefined;
    for (const budget of MASKING_BUDGETS) {
      for (const mode of modesAt(budget)) {
        const t0 = performance.now();
        const r = await maskingRun(gpu, opened, windows, budget, mode, steps, maxContext);
        console.error(
          `  (${pct(budget, 0)} ${modeName(mode)}: ` +
            `${((performance.now() - t0) / 1000).toFixed(1)} s)`,
        );
        exactTokens ??= r.tokens;
        let prefixAsExact = 0;
        while (prefixAsExact < steps && r.tokens[prefixAsExact] === exactTokens[prefixAsExact]) {
          prefixAsExact++;
        }
        runs.push({ ...r, prefixAsExact });
      }
    }
    const base = runs[0].perplexity;
    console.log(
      `\n3. exact vs router masking: perplexity over ${nWindows} of ${all.length} held-out ` +
        `windows (${runs[0].scoredTokens} scored tokens); greedy decode of ${steps} tokens after ` +
        `a ${PROMPT_TOKENS}-token prompt; tok/s = steps / their total time, median ms = median ` +
        `step. Over the decode steps (cache warmed by the perplexity pass): hit rate (a used ` +
        `prefetched expert counts as a hit), experts uploaded (misses + prefetches) and ` +
        `prefetches evicted unused per token, readbacks and reruns per token; "prefix": leading ` +
        `decoded tokens equal to exact 100%'s. Prefill (perplexity) never prefetches.`,
    );
    printTable(
      [
        "budget",
        "slots",
        "mode",
        "perplexity",
        "vs exact",
        "prefill hit",
        "tok/s",
        "median ms",
        "decode hit",
        "loads/tok",
        "wasted/tok",
        "readbacks/tok",
        "reruns/tok",
        "prefix",
      ],
      runs.map((r) => [
        pct(r.budget, 0),
        String(r.slots),
        r.mode,
        r.perplexity.toFixed(3),
        `${r.perplexity >= base ? "+" : ""}${pct(r.perplexity / base - 1, 2)}`,
        pct(r.prefillHitRate),
        r.decodeTokS.toFixed(1),
        r.medianStepMs.toFixed(1),
        pct(r.decodeHitRate),
        r.loadsPerToken.toFixed(2),
        r.prefetchWastedPerToken.toFixed(2),
        r.readbacksPerToken.toFixed(2),
        r.rerunsPerToken.toFixed(2),
        `${r.prefixAsExact}/${steps}`,
      ]),
    );

    const seconds = (performance.now() - tStart) / 1000;
    console.log(`\ntotal ${seconds.toFixed(0)} s`);
    await Deno.mkdir(OUT_DIR, { recursive: true });
    const out = new URL("routing.json", OUT_DIR);
    await Deno.writeTextFile(
      out,
      JSON.stringify(
        {
          machine: host,
          model: { dir: opened.dir, layers: L, experts: E, topK: K, vocab: c.vocabSize },
          routingPass: {
            windows: all.length,
            tokens,
            perplexity: routed.ppl.perplexity,
            meanNll: routed.ppl.meanNll,
            scoredTokens: routed.ppl.scoredTokens,
            torchPerplexity: torchPpl ?? null,
          },
          reuseHorizon: REUSE_HORIZON,
          layers: facts,
          policies,
          masking: { windows: nWindows, decodeSteps: steps, promptTokens: PROMPT_TOKENS, runs },
          seconds,
        },
        null,
        1,
      ) + "\n",
    );
    console.log(`wrote ${out.pathname}`);
  } finally {
    opened.close();
  }
}

if (import.meta.main) await main();
