/**
 * Exact decode under an expert budget, before and after in one run: greedy tokens/s, expert loads
 * and readbacks per token of the decode loop on the embedded default model at 100/50/25/10% of
 * its experts, for
 *   - "before": the loop pipelining every cycle (alwaysPipeline; the batch behind a miss is
 *     computed and discarded) with the LRU policy,
 *   - "miss-aware, lru": the loop stops pipelining while most cycles repair a miss,
 *   - "miss-aware, model": the same with the model-aware eviction policy (`--policy model`),
 *   - "model policy, writeBuffer uploads": the same with expert uploads through
 *     queue.writeBuffer instead of staging buffers kept mapped (expertStagingBuffers: 0),
 *   - "model policy, no prefetch": loading only what a miss's layer routed to (`--no-prefetch`),
 *     not the experts later layers flagged on their approximate input,
 *   - "model policy, uncapped guesses": every flagged expert loaded at a miss (`loadCap: false`,
 *     the baseline), where the default loads a guess only while the step's hits exceed its wrong
 *     and unscored guesses, so that no step loads more experts than it routes.
 * Also counted: decode steps that loaded more experts than they routed, decode loads per routed
 * (layer, expert) pair (loads/tok also counts the prompt's), and decode loads per token against
 * Belady's: the misses per decoded token of the optimal offline replacement replaying the same
 * routing (the prompt's, then each token's layer by layer) with the same slots.
 * Every configuration must decode the same tokens (exact mode). Prints one table, the ratio to
 * resident speed, and whether tokens/s ever drops at a larger budget; writes bench/out/budget.json
 * (budget_real.json with --real).
 *
 * --real: two layers of Qwen3-30B-A3B shapes (32 of its 128 experts, its vocab of 151936: the
 * lm_head is 622 of the 849 MB a token reads), written to a temporary directory, at 100/50/25%,
 * with the model policy and the head gate (a step that missed skips its lm_head) on and off
 * (`headGate: false`, the baseline).
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/budget.ts [--tokens N]
 *     [--reps N] [--real]
 */
import { parseArgs } from "node:util";
import { openModel } from "../src/model_dir.ts";
import { GpuModel, type GpuModelOptions } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { type Access, policyFactory, simulateOptimal } from "../src/experts/policy.ts";
import { GREEDY } from "../src/sampling.ts";
import { median } from "./memcpy.ts";
import { QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { openModelDir } from "../src/model_dir.ts";

/** Prompt tokens fed before the decode. */
const PROMPT_TOKENS = 32;
/** Tokens per timed decode (--tokens) and timed decodes per configuration (--reps, medians). */
const DEFAULT_TOKENS = 48;
const DEFAULT_REPS = 3;
const BUDGETS = [1, 0.5, 0.25, 0.1];
/** --real: fewer tokens (a step takes ~100 ms on llvmpipe) and budgets. */
const REAL_TOKENS = 16;
const REAL_REPS = 2;
const REAL_BUDGETS = [1, 0.5, 0.25];
const REAL = { ...QWEN3_30B_A3B, experts: 32 };

interface Config {
  name: string;
  opts: (grid: { numLayers: number; numExperts: number }) => GpuModelOptions;
}

const CONFIGS: Config[] = [
  { name: "before (always pipelined), lru", opts: () => ({ alwaysPipeline: true }) },
  { name: "miss-aware, lru", opts: () => ({}) },
  { name: "miss-aware, model policy", opts: (g) => ({ policy: policyFactory("model")(g) }) },
  {
    name: "model policy, writeBuffer uploads",
    opts: (g) => ({ policy: policyFactory("model")(g), expertStagingBuffers: 0 }),
  },
  {
    name: "model policy, no prefetch",
    opts: (g) => ({ policy: policyFactory("model")(g), prefetch: false }),
  },
  {
    name: "model policy, uncapped guesses",
    opts: (g) => ({ policy: policyFactory("model")(g), loadCap: false }),
  },
];

const REAL_CONFIGS: Config[] = [
  { name: "model policy, head gate", opts: (g) => ({ policy: policyFactory("model")(g) }) },
  {
    name: "model policy, no head gate",
    opts: (g) => ({ policy: policyFactory("model")(g), headGate: false }),
  },
];

const { values } = parseArgs({
  options: {
    tokens: { type: "string" },
    reps: { type: "string" },
    real: { type: "boolean", default: false },
  },
});
const real = values.real;
const tokens = Number(values.tokens ?? (real ? REAL_TOKENS : DEFAULT_TOKENS));
const reps = Number(values.reps ?? (real ? REAL_REPS : DEFAULT_REPS));
const configs = real ? REAL_CONFIGS : CONFIGS;
const budgets = real ? REAL_BUDGETS : BUDGETS;
const OUT_FILE = new URL(`./out/${real ? "budget_real" : "budget"}.json`, import.meta.url).pathname;
if (!(Number.isInteger(tokens) && tokens > 0 && Number.isInteger(reps) && reps > 0)) {
  throw new RangeError("--tokens and --reps take positive integers");
}

const tmp = real ? await Deno.makeTempDir({ prefix: "moe-budget-real-" }) : null;
if (tmp !== null) {
  console.error("writing the real-shape fixture ...");
  await writeFixtureInChild(`${tmp}/real`, REAL);
}
const opened = tmp !== null ? openModelDir(`${tmp}/real`) : await openModel();
const gpu = await openGpu();
const c = opened.weights.config;
const total = c.numLayers * c.numExperts;
const prompt = Array.from({ length: PROMPT_TOKENS }, (_, i) => (i * 7919 + 13) % c.vocabSize);

interface Row {
  budget: number;
  slots: number;
  config: string;
  tokensPerS: number;
  loadsPerToken: number;
  readbacksPerToken: number;
  /** Over the timed decodes: steps that loaded more than they routed, and the decode steps'
   * loads over the pairs they routed. */
  stepsOverRouted: number;
  loadsPerRouted: number;
  /** Decode loads per decoded token, and Belady's misses per token on the same routing. */
  decodeLoadsPerToken: number;
  beladyPerToken: number;
  tokens: number[];
}

/** The routing a decode emitted (GpuModel.onRouting) as an access trace: each layer visit one
 * `now`, the prompt's layer visits first; `decodeFrom`: the first decode access. */
function recordRouting(model: GpuModel, E: number, K: number) {
  const trace: Access<number>[] = [];
  let decodeFrom = -1, visits = 0;
  model.onRouting = (l, experts) => {
    if (experts.length === K && decodeFrom < 0) decodeFrom = trace.length;
    const now = visits++;
    for (const e of new Set(experts)) trace.push({ key: l * E + e, now });
  };
  return { trace, decodeFrom: () => decodeFrom };
}
const rows: Row[] = [];
for (const fraction of budgets) {
  const slots = Math.max(c.topK, Math.round(total * fraction));
  for (const config of configs) {
    const model = await GpuModel.open(opened.weights, {
      gpu,
      maxContext: PROMPT_TOKENS + tokens + 8,
      expertSlots: slots,
      expertSource: opened.experts,
      ...config.opts(c),
    });
    const speeds: number[] = [], loads: number[] = [], readbacks: number[] = [];
    let ids: number[] = [];
    let over = 0, routed = 0, loaded = 0, belady = 0, decoded = 0;
    for (let r = 0; r <= reps; r++) {
      const s0 = { ...model.stats };
      const rec = recordRouting(model, c.numExperts, c.topK);
      const s = model.newSession();
      const res = await s.decode(
        { feed: prompt, maxTokens: tokens, sampling: GREEDY, eosIds: [] },
        () => undefined,
      );
      s.free();
      if (r === 0) continue; // warm-up: pipelines compile, the cache fills
      over += model.stats.stepsOverRouted - s0.stepsOverRouted;
      routed += model.stats.stepRouted - s0.stepRouted;
      // decode steps' loads only (the prompt's layer-by-layer loads are not a step's)
      loaded += model.stats.expertLoads - s0.expertLoads -
        (model.stats.prefillLoads - s0.prefillLoads);
      const n = res.stats.tokens;
      decoded += n;
      if (slots < total) belady += simulateOptimal(rec.trace, slots, rec.decodeFrom()).misses;
      speeds.push(n / (res.stats.ms / 1000));
      loads.push(res.stats.expertLoads / n);
      readbacks.push(res.stats.readbacks / n);
      ids = res.tokens;
    }
    model.destroy();
    rows.push({
      budget: fraction,
      slots,
      config: config.name,
      tokensPerS: median(speeds),
      loadsPerToken: median(loads),
      readbacksPerToken: median(readbacks),
      stepsOverRouted: over,
      loadsPerRouted: routed > 0 ? loaded / routed : 0,
      decodeLoadsPerToken: loaded / decoded,
      beladyPerToken: belady / decoded,
      tokens: ids,
    });
    const row = rows.at(-1)!;
    console.error(
      `${(fraction * 100).toFixed(0)}% ${config.name}: ${row.tokensPerS.toFixed(1)} tok/s`,
    );
  }
}

const same = rows.every((r) => r.tokens.join() === rows[0].tokens.join());
const resident = (name: string) =>
  rows.find((r) => r.budget === 1 && r.config === name)!.tokensPerS;
console.log(
  `Exact decode by expert budget, ${real ? "2 layers of Qwen3-30B-A3B shapes" : "default model"} ` +
    `(${total} experts), ${tokens} greedy tokens ` +
    `after ${PROMPT_TOKENS} prompt tokens, median of ${reps}; tokens identical everywhere: ${same}`,
);
console.log(
  "budget  slots  config                            tok/s   of resident  loads/tok  readbacks/tok" +
    "  steps over routed  loads/routed  decode loads/tok  Belady/tok  ratio",
);
for (const r of rows) {
  console.log(
    `${`${(r.budget * 100).toFixed(0)}%`.padEnd(6)}  ${String(r.slots).padStart(5)}  ` +
      `${r.config.padEnd(32)}  ${r.tokensPerS.toFixed(1).padStart(6)}  ` +
      `${(r.tokensPerS / resident(r.config)).toFixed(2).padStart(11)}  ` +
      `${r.loadsPerToken.toFixed(2).padStart(9)}  ${r.readbacksPerToken.toFixed(2).padStart(13)}` +
      `  ${String(r.stepsOverRouted).padStart(17)}  ${r.loadsPerRouted.toFixed(3).padStart(12)}` +
      `  ${r.decodeLoadsPerToken.toFixed(2).padStart(16)}  ${
        r.beladyPerToken.toFixed(2).padStart(10)
      }` +
      `  ${r.beladyPerToken > 0 ? (r.decodeLoadsPerToken / r.beladyPerToken).toFixed(2) : "-"}`,
  );
}
const monotone = configs.map((config) => {
  const speeds = budgets.map((b) =>
    rows.find((r) => r.budget === b && r.config === config.name)!.tokensPerS
  );
  // budgets descend: a larger budget must never be slower than the next smaller one
  const ok = speeds.every((v, i) => i === 0 || speeds[i - 1] >= v);
  return { config: config.name, speeds, ok };
});
for (const m of monotone) {
  console.log(`tok/s never lower at a larger budget (${m.config}): ${m.ok ? "yes" : "no"}`);
}
await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  OUT_FILE,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      adapter: gpu.adapterInfo.description,
      tokens,
      reps,
      sameTokens: same,
      rows: rows.map(({ tokens: _t, ...r }) => r),
      monotone,
    },
    null,
    2,
  ),
);
gpu.device.destroy();
opened.close();
if (tmp !== null) Deno.removeSync(tmp, { recursive: true });
