/**
 * How well pre-gating predicts routing (src/gpu/pregating.ts), on the embedded default model over
 * held-out text (tools/train/heldout_eval_ids.json): for each token and layer l, the top-k of
 * layer l+d's router applied to layer l's output (d = 1: the next layer, d = 2: two layers on)
 * against the experts layer l+d actually routed to; and "next token": the token's own routing at
 * layer l taken as the prediction for the next token's layer l. A prediction and the routing both
 * hold k experts, so precision = recall = shared / k. Prints one table per layer and the means;
 * then, for the layers ahead, predictions of k' = k .. 2k experts (the router's k' most likely,
 * GpuModelOptions.pregatingTopK; a prefetcher can load more than it expects to be routed):
 * recall = shared / k, precision = shared / k'. Writes bench/out/pregating.json.
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/pregating.ts [--windows N]
 */
import { parseArgs } from "node:util";
import { openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { overlap, PREGATING_DISTANCES } from "../src/gpu/pregating.ts";

const HELDOUT = new URL("../tools/train/heldout_eval_ids.json", import.meta.url);
const OUT_FILE = new URL("./out/pregating.json", import.meta.url).pathname;
/** Held-out windows measured (--windows); each is fed in forwards of at most maxBatch tokens. */
const DEFAULT_WINDOWS = 16;

const { values } = parseArgs({
  options: { windows: { type: "string", default: String(DEFAULT_WINDOWS) } },
});
const nWindows = Number(values.windows);
if (!(Number.isInteger(nWindows) && nWindows > 0)) throw new RangeError("--windows N, N >= 1");

const heldout = JSON.parse(await Deno.readTextFile(HELDOUT)) as { windows: number[][] };
const windows = heldout.windows.slice(0, nWindows);
const opened = await openModel();
const c = opened.weights.config;
const { numLayers: L, topK: K } = c;
const maxContext = Math.max(...windows.map((w) => w.length));
/** The widest prediction measured: the router's 2k most likely experts (at most all of them). */
const WIDE = Math.min(c.numExperts, 2 * K);
const model = await GpuModel.open(opened.weights, {
  maxContext,
  pregating: true,
  pregatingTopK: WIDE,
});
const chunk = model.maxBatch;

/** shared[l][d]: experts shared by prediction and routing; total[l][d]: experts predicted.
 * d = 0 .. DISTANCES - 1 for layers ahead, d = DISTANCES for the next token. */
const shared = Array.from({ length: L }, () => new Array(PREGATING_DISTANCES + 1).fill(0));
const total = Array.from({ length: L }, () => new Array(PREGATING_DISTANCES + 1).fill(0));
/** wideShared[d][j]: over all layers and tokens, experts shared by the first K + j of a
 * prediction of layer l+d+1 and its routing (j = 0 .. WIDE - K). */
const wideShared = Array.from(
  { length: PREGATING_DISTANCES },
  () => new Array(WIDE - K + 1).fill(0),
);
const wideTokens = new Array(PREGATING_DISTANCES).fill(0);
let tokens = 0;
for (const window of windows) {
  const s = model.newSession();
  const previous: (Uint32Array | null)[] = new Array(L).fill(null); // last token's routing
  for (let t0 = 0; t0 < window.length; t0 += chunk) {
    const ids = window.slice(t0, t0 + chunk);
    const T = ids.length;
    const routed: Uint32Array[] = [];
    model.onRouting = (l, experts) => (routed[l] = experts);
    await s.forward(ids, { lastOnly: true });
    const predicted = await model.pregating!.read(T);
    const at = (a: Uint32Array, t: number) => a.subarray(t * K, (t + 1) * K);
    for (let l = 0; l < L; l++) {
      predicted[l].forEach((p, i) => {
        for (let t = 0; t < T; t++) {
          const row = p.subarray(t * WIDE, (t + 1) * WIDE);
          const actual = at(routed[l + i + 1], t);
          shared[l][i] += overlap(row.subarray(0, K), actual);
          total[l][i] += K;
          for (let j = 0; j <= WIDE - K; j++) {
            wideShared[i][j] += overlap(row.subarray(0, K + j), actual);
          }
          wideTokens[i]++;
        }
      });
      for (let t = 0; t < T; t++) {
        const before = t > 0 ? at(routed[l], t - 1) : previous[l];
        if (before) {
          shared[l][PREGATING_DISTANCES] += overlap(before, at(routed[l], t));
          total[l][PREGATING_DISTANCES] += K;
        }
      }
      previous[l] = at(routed[l], T - 1).slice();
    }
    tokens += T;
  }
  s.free();
}
model.destroy();
opened.close();

const labels = ["next layer", "two layers on", "next token"];
const rate = (l: number, d: number) => total[l][d] === 0 ? null : shared[l][d] / total[l][d];
console.log(
  `Pre-gating precision = recall (shared / top-${K}), default model, ${windows.length} held-out ` +
    `windows, ${tokens} tokens`,
);
console.log(`layer  ${labels.map((x) => x.padStart(14)).join("")}`);
for (let l = 0; l < L; l++) {
  const cells = labels.map((_, d) => {
    const r = rate(l, d);
    return (r === null ? "-" : `${(r * 100).toFixed(1)}%`).padStart(14);
  });
  console.log(`${String(l).padStart(5)}  ${cells.join("")}`);
}
const means = labels.map((_, d) => {
  const sum = shared.reduce((a, row) => a + row[d], 0);
  const n = total.reduce((a, row) => a + row[d], 0);
  return sum / n;
});
console.log(
  `  all  ${means.map((m) => `${(m * 100).toFixed(1)}%`.padStart(14)).join("")}`,
);
console.log(`goal: next-layer recall >= 90%: ${means[0] >= 0.9 ? "met" : "missed"} (top-${K})`);
/** wide[d][j]: recall and precision of the first K + j experts of the distance-d predictions. */
const wide = wideShared.map((row, d) =>
  row.map((n, j) => ({
    predicted: K + j,
    recall: n / (wideTokens[d] * K),
    precision: n / (wideTokens[d] * (K + j)),
  }))
);
console.log(`\nwider predictions (the router's k' most likely), all layers: recall / precision`);
console.log(`    k'  ${labels.slice(0, PREGATING_DISTANCES).map((x) => x.padStart(18)).join("")}`);
for (let j = 0; j <= WIDE - K; j++) {
  const cells = wide.map((row) =>
    `${(row[j].recall * 100).toFixed(1)}% / ${(row[j].precision * 100).toFixed(1)}%`.padStart(18)
  );
  console.log(`${String(K + j).padStart(6)}  ${cells.join("")}`);
}
await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  OUT_FILE,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      windows: windows.length,
      tokens,
      topK: K,
      perLayer: shared.map((row, l) => row.map((_, d) => rate(l, d))),
      mean: Object.fromEntries(labels.map((x, d) => [x, means[d]])),
      wider: Object.fromEntries(wide.map((row, d) => [labels[d], row])),
    },
    null,
    2,
  ),
);
