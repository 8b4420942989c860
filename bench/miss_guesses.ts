/**
 * What a repair should load for the layers after a miss (the expert-streaming issue's item 2: loads
 * from pre-gating predictions). When a decode pass under a budget first routes to an absent expert
 * at layer l0, the scheduler loads what l0 routed to (its input was exact) and, as guesses, the
 * experts the later layers routed to on their approximate input (the pass went on without l0's
 * missing experts). Pre-gating (src/gpu/pregating.ts) predicts the same layers in the same pass:
 * layer j's router on the output of layer j-1 (d = 1) or j-2 (d = 2), without j's attention, and
 * for j = l0+1 at d = 2 on an exact input (layer l0-1's output). Which is the better guess?
 *
 * On the embedded default model at 50/25/10% of its experts (model policy, as the CLI runs),
 * held-out windows are fed one token a forward after a 16-token prompt (teacher forcing: every
 * budget sees the same tokens); after every pass that missed, each later layer's guess sets are
 * compared with the routing that layer finally used (recall = shared / top-k; a set of k' experts
 * is k' loads at most). Pre-gating is read back after each such pass (an extra readback, so no
 * timing here). Table 2 then lets the repairs load predictions too (GpuModel.extraGuesses: after
 * the flagged experts, within the load cap's allowance) and counts passes (each a readback in the
 * real loop) and expert loads per token, the same tokens fed. Writes bench/out/miss_guesses.json.
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/miss_guesses.ts
 *     [--windows N] [--tokens N]
 */
import { parseArgs } from "node:util";
import { openModel } from "../src/model_dir.ts";
import { GpuModel, type PassReport } from "../src/gpu/model.ts";
import { overlap } from "../src/gpu/pregating.ts";

const HELDOUT = new URL("../tools/train/heldout_eval_ids.json", import.meta.url);
const OUT_FILE = new URL("./out/miss_guesses.json", import.meta.url).pathname;
const BUDGETS = [0.5, 0.25, 0.1];
/** Prompt tokens (prefilled layer by layer) before the measured forwards. */
const PROMPT = 16;
/** Predictions of k + WIDER experts are measured too (the router's most likely, in order). */
const WIDER = 2;

const { values } = parseArgs({
  options: {
    windows: { type: "string", default: "4" },
    tokens: { type: "string", default: "64" },
  },
});
const nWindows = Number(values.windows);
const nTokens = Number(values.tokens);
if (!(Number.isInteger(nWindows) && nWindows > 0 && Number.isInteger(nTokens) && nTokens > 0)) {
  throw new RangeError("--windows N and --tokens N take integers >= 1");
}
const heldout = JSON.parse(await Deno.readTextFile(HELDOUT)) as { windows: number[][] };
const windows = heldout.windows.slice(0, nWindows);
const opened = await openModel();
const c = opened.weights.config;
const { numLayers: L, topK: K, numExperts: E } = c;
const predictK = Math.min(E, K + WIDER);

/** The guess sets compared, by name: each a function of the failed pass and the later layer. */
type Source = (p: Pass, j: number) => ArrayLike<number> | null;
interface Pass extends PassReport {
  /** Pre-gating after each layer: [l][d - 1] = u32 [predictK] (T = 1). */
  predicted: Uint32Array[][];
}
const routed = (p: Pass, j: number) => p.routing.subarray(j * p.stride * K, j * p.stride * K + K);
/** The prediction after layer j - d, when that layer ran in this pass. */
const predicted = (p: Pass, j: number, d: number, k: number) =>
  j < L && j - d >= p.from && j - d >= 0 ? p.predicted[j - d][d - 1].subarray(0, k) : null;
const SOURCES: Record<string, Source> = {
  "routing on the approximate input (today's guesses)": routed,
  [`pre-gating d=1, top-${K}`]: (p, j) => predicted(p, j, 1, K),
  [`pre-gating d=2, top-${K}`]: (p, j) => predicted(p, j, 2, K),
  [`pre-gating d=1, top-${predictK}`]: (p, j) => predicted(p, j, 1, predictK),
  [`pre-gating d=2, top-${predictK}`]: (p, j) => predicted(p, j, 2, predictK),
  [`routing + pre-gating d=1 top-${predictK}`]: (p, j) => {
    const d1 = predicted(p, j, 1, predictK);
    return d1 === null ? null : [...new Set([...routed(p, j), ...d1])];
  },
};

interface Tally {
  shared: number;
  size: number;
  n: number;
}

/** Which predictions a repair loads besides the flagged experts (table 2). */
const LOADS: Record<string, (p: Pass, l0: number) => number[]> = {
  "flagged only (the default)": () => [],
  [`+ pre-gating d=2 top-${predictK}, next layer`]: (p, l0) =>
    keys(l0 + 1, predicted(p, l0 + 1, 2, predictK)),
  [`+ pre-gating d=1 top-${predictK}, every later layer`]: (p, l0) => {
    const out: number[] = [];
    for (let j = l0 + 1; j < L; j++) out.push(...keys(j, predicted(p, j, 1, predictK)));
    return out;
  },
};
function keys(j: number, experts: ArrayLike<number> | null): number[] {
  return j < L && experts !== null ? Array.from(experts, (e) => j * E + e) : [];
}

/** One budget and repair rule: the guess tallies and what the forwards cost. */
async function run(budget: number, load: (p: Pass, l0: number) => number[]) {
  const slots = Math.max(K, Math.round(budget * L * E));
  const model = await GpuModel.open(opened.weights, {
    maxContext: PROMPT + nTokens + 1,
    expertSlots: slots,
    expertSource: opened.experts,
    pregating: true,
    pregatingTopK: predictK,
  });
  // tallies[where][source]: where = the layer right after the miss, or the later ones
  const tallies: Record<string, Record<string, Tally>> = { next: {}, later: {} };
  let passes: Pass[] = [];
  model.onPass = async (p) => {
    const predictions = p.firstMissed >= 0 ? await model.pregating!.read(p.T) : [];
    passes.push({ ...p, routing: p.routing.slice(), predicted: predictions });
  };
  model.extraGuesses = (l0) => load(passes.at(-1)!, l0);
  let forwards = 0, passCount = 0, misses = 0;
  const s0 = { ...model.stats };
  for (const window of windows) {
    const s = model.newSession();
    await s.forward(window.slice(0, PROMPT), { lastOnly: true });
    for (let t = PROMPT; t < Math.min(window.length, PROMPT + nTokens); t++) {
      passes = [];
      await s.forward([window[t]], { lastOnly: true });
      forwards++;
      passCount += passes.length;
      // each layer's final routing: from the pass whose exact part holds it (from .. firstMissed)
      const final = (j: number) =>
        routed(passes.find((p) => j >= p.from && (p.firstMissed < 0 || j <= p.firstMissed))!, j);
      for (const p of passes) {
        if (p.firstMissed < 0) continue;
        misses++;
        for (let j = p.firstMissed + 1; j < L; j++) {
          const where = j === p.firstMissed + 1 ? "next" : "later";
          for (const [name, source] of Object.entries(SOURCES)) {
            const guess = source(p, j);
            if (guess === null) continue;
            const t = tallies[where][name] ??= { shared: 0, size: 0, n: 0 };
            t.shared += overlap(guess, final(j));
            t.size += guess.length;
            t.n++;
          }
        }
      }
    }
    s.free();
  }
  const st = model.stats;
  const decodeLoads = st.expertLoads - s0.expertLoads - (st.prefillLoads - s0.prefillLoads);
  const cost = {
    passesPerToken: passCount / forwards,
    loadsPerToken: decodeLoads / forwards,
    stepsOverRouted: st.stepsOverRouted - s0.stepsOverRouted,
  };
  model.destroy();
  const table = Object.fromEntries(
    Object.entries(tallies).map(([where, bySource]) => [
      where,
      Object.fromEntries(
        Object.entries(bySource).map(([name, t]) => [name, {
          recall: t.shared / (t.n * K),
          meanSize: t.size / t.n,
          layers: t.n,
        }]),
      ),
    ]),
  );
  return { slots, forwards, misses, cost, table };
}

const rows = [];
for (const budget of BUDGETS) {
  const base = await run(budget, LOADS["flagged only (the default)"]);
  const { slots, forwards, misses, table } = base;
  console.log(
    `\n${(budget * 100).toFixed(0)}% (${slots} slots): ${forwards} tokens, ` +
      `${base.cost.passesPerToken.toFixed(2)} passes a token, ${misses} passes that missed`,
  );
  console.log(
    "guess for a later layer                              right after the miss    later layers",
  );
  for (const name of Object.keys(SOURCES)) {
    const cell = (where: string) => {
      const t = table[where][name];
      return t
        ? `${(100 * t.recall).toFixed(1)}% of ${t.meanSize.toFixed(1)} (${t.layers})`.padEnd(24)
        : "-".padEnd(24);
    };
    console.log(`${name.padEnd(53)}${cell("next")}${cell("later")}`);
  }
  const costs: Record<string, typeof base.cost> = {};
  for (const [name, load] of Object.entries(LOADS)) {
    costs[name] = name === "flagged only (the default)"
      ? base.cost
      : (await run(budget, load)).cost;
    const c = costs[name];
    console.log(
      `repair loads ${name.padEnd(44)} passes/token ${c.passesPerToken.toFixed(2)}  ` +
        `loads/token ${c.loadsPerToken.toFixed(2)}  steps over routed ${c.stepsOverRouted}`,
    );
  }
  rows.push({ budget, slots, forwards, misses, table, costs });
}
await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  OUT_FILE,
  JSON.stringify({ date: new Date().toISOString(), windows: nWindows, tokens: nTokens, rows }),
);
console.log(`\nwrote ${OUT_FILE}`);
