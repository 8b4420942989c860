/**
 * Context-chosen expert sets (src/gpu/expert_sets.ts) against router masking among whatever LRU
 * left resident, on a trained model (default: the embedded default model) under expert budgets of
 * 50%, 25% and 10% of all L x E experts.
 *
 * Perplexity: each held-out window (tools/train/heldout_eval_ids.json) is split into a context
 * (its first --context tokens, prefilled) and the rest, fed one token per forward as decode feeds
 * them and scored: the token after each fed position, so every mode scores the same window length
 * - context - 1 tokens per window, all predicted after the context. (Fed in one forward, a masked
 * layer below its share would route exactly for every token of it, not only until it holds its
 * share.) Modes (one fresh model per budget and mode, windows in order on it, so the cache
 * carries over from window to window as a server's would):
 *   - exact: every expert resident (exact mode gives these logits bit for bit at any budget, so
 *     under a budget only its decode is measured, with and without a context starting set);
 *   - masked, lru: router masking as it is without sets (the context's prefill is masked too once
 *     the cache is full; the rest routes among what LRU left resident);
 *   - masked, lru, exact prefill: the context prefilled exactly by an exact session, whose KV rows
 *     a masked session then reuses (prefix reuse): the rest routes among what LRU left resident
 *     after an exact prefill. Separates the effect of an exact context from that of the choice;
 *   - masked, context set: expertSet "context": the context prefilled exactly, then each layer's
 *     share pinned to the experts the context routed to most; the rest routes among them.
 * Decode: greedy decode-loop runs (session.decode, as generate and serve run) after a prompt of
 * the first --context tokens of --decode-prompts windows the perplexity pass did not see,
 * --decode-tokens tokens each (exact modes at most EXACT_DECODE_TOKENS); tok/s, expert loads,
 * readbacks and reruns per token over the decode steps (the prefill and first token excluded, as
 * DecodeStats counts them), on the model the perplexity pass warmed.
 *
 * Usage:
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/expert_sets.ts \
 *     [--windows N] [--context N] [--decode-prompts N] [--decode-tokens N] [--model DIR]
 * Results: stdout and bench/out/expert_sets.json.
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL_DIR, type OpenedModel, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";
import { negativeLogLikelihood } from "../src/perplexity.ts";
import { GREEDY } from "../src/sampling.ts";
import type { ExpertSetMode, SessionOptions } from "../src/types.ts";

const HELDOUT = new URL("../tools/train/heldout_eval_ids.json", import.meta.url);
const OUT_DIR = new URL("./out/", import.meta.url);
/** Budgets as fractions of all L x E experts. */
const BUDGETS = [0.5, 0.25, 0.1];
const DEFAULT_WINDOWS = 6;
const DEFAULT_CONTEXT = 128;
const DEFAULT_DECODE_PROMPTS = 2;
const DEFAULT_DECODE_TOKENS = 64;
/** Exact decode under a budget runs near 8 tok/s here (a load and a rerun most steps): its runs
 * are cut to this many tokens to keep the bench to a few minutes. */
const EXACT_DECODE_TOKENS = 32;

interface Mode {
  name: string;
  masked: boolean;
  expertSet: ExpertSetMode;
  /** The context is prefilled by an exact session and reused (prefix) by the scoring one. */
  exactPrefill: boolean;
  /** Whether the decode runs are measured for it. */
  decode: boolean;
}

const EXACT: Mode = {
  name: "exact",
  masked: false,
  expertSet: "lru",
  exactPrefill: false,
  decode: true,
};
const MODES: Mode[] = [
  EXACT,
  {
    name: "exact, context set",
    masked: false,
    expertSet: "context",
    exactPrefill: false,
    decode: true,
  },
  { name: "masked, lru", masked: true, expertSet: "lru", exactPrefill: false, decode: true },
  {
    name: "masked, lru, exact prefill",
    masked: true,
    expertSet: "lru",
    exactPrefill: true,
    decode: false,
  },
  {
    name: "masked, context set",
    masked: true,
    expertSet: "context",
    exactPrefill: false,
    decode: true,
  },
];

interface Row {
  budget: number;
  slots: number;
  /** Each layer's share of the slots (what a context set holds per layer). */
  quotas: number[];
  mode: string;
  /** Null for the exact mode under a budget (bit-identical to the resident reference). */
  perplexity: number | null;
  scoredTokens: number;
  perplexitySeconds: number;
  /** Expert records uploaded while scoring, per window. */
  loadsPerWindow: number;
  decode: DecodeFigures | null;
}

interface DecodeFigures {
  tokens: number;
  tokS: number;
  loadsPerToken: number;
  readbacksPerToken: number;
  rerunsPerToken: number;
}

function budgetSlots(fraction: number, total: number, K: number): number {
  return Math.min(total, Math.max(K, Math.round(fraction * total)));
}

function sessionOptions(mode: Mode): SessionOptions {
  return { routerMasking: mode.masked, expertSet: mode.expertSet };
}

/** Sum of -log p over the tokens after the context of each window, and how many. */
async function score(
  model: GpuModel,
  windows: number[][],
  context: number,
  mode: Mode,
): Promise<{ nll: number; scored: number }> {
  let nll = 0;
  let scored = 0;
  for (const w of windows) {
    let session;
    if (mode.exactPrefill) {
      const exact = model.newSession();
      await exact.forward(w.slice(0, context), { lastOnly: true });
      exact.free();
      session = model.newSession({ ...sessionOptions(mode), prefix: w });
      if (session.length !== context) {
        throw new Error(`prefix reuse found ${session.length} of ${context} context tokens`);
      }
    } else {
      session = model.newSession(sessionOptions(mode));
      await session.forward(w.slice(0, context), { lastOnly: true });
    }
    try {
      if (!mode.masked) {
        // (one forward: bit for bit the logits of feeding them one at a time)
        const rows = await session.forward(w.slice(context, w.length - 1));
        rows.forEach((row, i) => {
          nll += negativeLogLikelihood(row, w[context + 1 + i]);
          scored++;
        });
      } else {
        // one token per forward, as decode runs: a masked layer below its share routes exactly
        // only for the tokens that bring it there (a many-token forward would route it exactly
        // for all of them)
        for (let p = context; p + 1 < w.length; p++) {
          const [row] = await session.forward([w[p]]);
          nll += negativeLogLikelihood(row, w[p + 1]);
          scored++;
        }
      }
    } finally {
      session.free();
    }
  }
  return { nll, scored };
}

async function decodeRuns(
  model: GpuModel,
  prompts: number[][],
  maxTokens: number,
  mode: Mode,
): Promise<DecodeFigures> {
  let tokens = 0, ms = 0, loads = 0, readbacks = 0, reruns = 0;
  for (const prompt of prompts) {
    const s = model.newSession(sessionOptions(mode));
    try {
      // (reruns are counted over the whole decode, prefill included: a layerwise prefill has none)
      const r0 = model.stats.reruns;
      const r = await s.decode(
        { feed: prompt, maxTokens, sampling: GREEDY, eosIds: [] },
        () => undefined,
      );
      reruns += model.stats.reruns - r0;
      tokens += r.stats.tokens;
      ms += r.stats.ms;
      loads += r.stats.expertLoads;
      readbacks += r.stats.readbacks;
    } finally {
      s.free();
    }
  }
  return {
    tokens,
    tokS: tokens / (ms / 1000),
    loadsPerToken: loads / tokens,
    readbacksPerToken: readbacks / tokens,
    rerunsPerToken: reruns / tokens,
  };
}

async function run(
  gpu: Gpu,
  opened: OpenedModel,
  windows: number[][],
  prompts: number[][],
  opts: { context: number; decodeTokens: number; maxContext: number },
  budget: number,
  mode: Mode,
): Promise<Row> {
  const c = opened.weights.config;
  const total = c.numLayers * c.numExperts;
  const slots = budget === 1 ? total : budgetSlots(budget, total, c.topK);
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: opts.maxContext,
    expertSlots: slots,
    expertSource: opened.experts,
    maxSequences: 2,
  });
  try {
    const quotas = Array.from({ length: c.numLayers }, (_, l) => model.layerQuota(l));
    let perplexity: number | null = null;
    let scored = 0;
    let seconds = 0;
    let loadsPerWindow = 0;
    // exact under a budget gives the resident logits bit for bit: only its decode is measured
    if (budget === 1 || mode.masked) {
      const t0 = performance.now();
      const loads = model.cache.loads;
      const s = await score(model, windows, opts.context, mode);
      seconds = (performance.now() - t0) / 1000;
      loadsPerWindow = (model.cache.loads - loads) / windows.length;
      perplexity = Math.exp(s.nll / s.scored);
      scored = s.scored;
    }
    const tokens = mode.masked
      ? opts.decodeTokens
      : Math.min(opts.decodeTokens, EXACT_DECODE_TOKENS);
    const decode = mode.decode && budget < 1
      ? await decodeRuns(model, prompts, tokens, mode)
      : null;
    return {
      budget,
      slots,
      quotas,
      mode: mode.name,
      perplexity,
      scoredTokens: scored,
      perplexitySeconds: seconds,
      loadsPerWindow,
      decode,
    };
  } finally {
    model.destroy();
  }
}

/** Left-aligned first column, right-aligned others. */
function printTable(head: string[], rows: string[][]): void {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join("  ");
  console.log(line(head));
  console.log(w.map((n) => "-".repeat(n)).join("  "));
  for (const r of rows) console.log(line(r));
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
      context: { type: "string" },
      "decode-prompts": { type: "string" },
      "decode-tokens": { type: "string" },
      model: { type: "string" },
    },
    strict: true,
  });
  const heldout: { window: number; windows: number[][] } = JSON.parse(
    await Deno.readTextFile(HELDOUT),
  );
  const all = heldout.windows;
  const nWindows = Math.min(positiveInt(values.windows, DEFAULT_WINDOWS, "--windows"), all.length);
  const context = positiveInt(values.context, DEFAULT_CONTEXT, "--context");
  if (context + 2 > heldout.window) {
    throw new RangeError(
      `--context ${context} leaves nothing to score in ${heldout.window} tokens`,
    );
  }
  const nPrompts = positiveInt(
    values["decode-prompts"],
    DEFAULT_DECODE_PROMPTS,
    "--decode-prompts",
  );
  const decodeTokens = positiveInt(
    values["decode-tokens"],
    DEFAULT_DECODE_TOKENS,
    "--decode-tokens",
  );
  const windows = all.slice(0, nWindows);
  // decode prompts from windows the perplexity pass did not see
  const prompts = all.slice(-nPrompts).map((w) => w.slice(0, context));
  const opts = {
    context,
    decodeTokens,
    maxContext: Math.max(heldout.window, context + decodeTokens),
  };
  const tStart = performance.now();
  const gpu = await openGpu();
  const opened = await openModel(values.model ?? DEFAULT_MODEL_DIR);
  const rows: Row[] = [];
  try {
    const c = opened.weights.config;
    console.error(
      `model ${opened.dir}: ${c.numLayers} layers x ${c.numExperts} experts, top-${c.topK}; ` +
        `${nWindows} windows of ${heldout.window} (context ${context}); ` +
        `${nPrompts} decode prompts x ${decodeTokens} tokens; ${gpu.adapterInfo.description}`,
    );
    for (const budget of [1, ...BUDGETS]) {
      for (const mode of budget === 1 ? [EXACT] : MODES) {
        const row = await run(gpu, opened, windows, prompts, opts, budget, mode);
        rows.push(row);
        console.error(
          `  ${(100 * budget).toFixed(0)}% ${mode.name}: ` +
            `${row.perplexity?.toFixed(3) ?? "-"} (${row.perplexitySeconds.toFixed(1)} s)` +
            (row.decode ? `, decode ${row.decode.tokS.toFixed(1)} tok/s` : ""),
        );
      }
    }
  } finally {
    opened.close();
    gpu.device.destroy();
  }
  const seconds = (performance.now() - tStart) / 1000;
  const reference = rows[0].perplexity!;
  console.log(
    `Perplexity over ${nWindows} held-out windows of ${heldout.window} tokens: the first ` +
      `${context} are the context (prefilled), the next ${heldout.window - context - 1} scored ` +
      `(${rows[0].scoredTokens} tokens); exact = every expert resident (exact mode under any ` +
      `budget gives it bit for bit). Decode: greedy, ${nPrompts} prompts of ${context} tokens, ` +
      `${decodeTokens} tokens each (exact: ${Math.min(decodeTokens, EXACT_DECODE_TOKENS)}), ` +
      `per-token figures over the decode steps. loads/window: ` +
      `expert uploads while scoring (context prefill included).`,
  );
  printTable(
    [
      "budget",
      "slots",
      "per layer",
      "mode",
      "perplexity",
      "vs exact",
      "loads/window",
      "decode tok/s",
      "loads/tok",
      "readbacks/tok",
      "reruns/tok",
    ],
    rows.map((r) => [
      `${(100 * r.budget).toFixed(0)}%`,
      String(r.slots),
      String(Math.min(...r.quotas)) +
      (Math.max(...r.quotas) > Math.min(...r.quotas) ? `-${Math.max(...r.quotas)}` : ""),
      r.mode,
      r.perplexity === null ? "= exact" : r.perplexity.toFixed(3),
      r.perplexity === null
        ? ""
        : `${r.perplexity >= reference ? "+" : ""}${
          (100 * (r.perplexity / reference - 1)).toFixed(1)
        }%`,
      r.perplexity === null ? "" : r.loadsPerWindow.toFixed(1),
      r.decode ? r.decode.tokS.toFixed(1) : "",
      r.decode ? r.decode.loadsPerToken.toFixed(2) : "",
      r.decode ? r.decode.readbacksPerToken.toFixed(3) : "",
      r.decode ? r.decode.rerunsPerToken.toFixed(3) : "",
    ]),
  );
  console.log(`(${seconds.toFixed(0)} s)`);
  await Deno.mkdir(OUT_DIR, { recursive: true });
  const out = new URL("expert_sets.json", OUT_DIR);
  await Deno.writeTextFile(
    out,
    JSON.stringify(
      {
        model: values.model ?? DEFAULT_MODEL_DIR,
        windows: nWindows,
        window: heldout.window,
        context,
        decodePrompts: nPrompts,
        decodeTokens,
        adapter: gpu.adapterInfo.description || gpu.adapterInfo.vendor,
        cores: navigator.hardwareConcurrency,
        loadAvg1m: Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]),
        seconds,
        rows,
      },
      null,
      2,
    ) + "\n",
  );
  console.error(`wrote ${out.pathname}`);
}

if (import.meta.main) await main();
