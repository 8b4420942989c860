/**
 * Prefill speed side by side in one run: tokens/s of one prompt of 64, 512 and 2048 tokens (logits
 * of the last token only) on the embedded default model and on two layers of Qwen3-30B-A3B shapes
 * (vocab 32768: with headless chunks the vocab only matters for the last token's logits; see
 * `--compare chunks` for the real vocab), all experts resident.
 *
 * `--compare kernels` (default; 32 of the 128 experts, steps of 64 tokens): the kernels issue's
 * baseline (`wideTiles: false`: matmul tiles of 8 tokens, the expert kernels' large tile only
 * from 1024 pairs), wide tiles (matmul tiles of 16 tokens from 32 tokens a step; expert tiles of
 * 8 pairs from 8 pairs per expert on average), then the tiled expert kernels' workgroups
 * interleaved (`interleavedTiles`: both of llvmpipe's threads get real tiles; tile-major put them
 * all on one thread), then the attention passes with several positions / head-dim chunks per
 * lane (`attentionBlocks`).
 * `--compare steps` (all 128 experts, every kernel choice on): steps of 64 tokens (the old step
 * limit) against 128 (the default `maxBatch`): a 64-token step gives each of 128 experts 4 pairs.
 * `--compare chunks` (32 experts, the real vocab 151936, 128-token steps): the q/k heads' norm
 * and RoPE a workgroup per row or a lane per row (`laneNorms`), then a prompt's chunks before the
 * last without the lm_head (`headlessChunks`).
 * `--compare attention` (32 experts, 128-token steps, every other choice at its default): the
 * attention of prefill steps in three passes (`attentionTiles: false`, the baseline) or
 * flash-style in tiles (attention_tiled.wgsl).
 *
 * All configurations must give the same last-token logits bit for bit, but for `--compare
 * attention`, whose kernels add in another order: there the largest difference is printed. Modes
 * alternate; medians.
 * Not a test: prints a table and writes bench/out/prefill.json (prefill_steps.json).
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/prefill.ts [--reps N]
 *     [--lengths 64,512,2048] [--no-real] [--compare kernels|steps|chunks|attention]
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import { openSideBySide } from "./side_by_side.ts";
import { mulberry32 } from "../weights/fixture.ts";
import { QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { median } from "./memcpy.ts";

const DEFAULT_REPS = 3;
const DEFAULT_LENGTHS = [64, 512, 2048];
const REAL = { ...QWEN3_30B_A3B, experts: 32, vocab: 32768 };
const OUT_DIR = new URL("./out/", import.meta.url).pathname;

interface Row {
  model: string;
  tokens: number;
  mode: string;
  ms: number[];
  medianMs: number;
  tokensPerS: number;
}

interface Mode {
  name: string;
  wideTiles: boolean;
  interleavedTiles: boolean;
  attentionBlocks: boolean;
  /** Tokens per forward step (GpuModelOptions.maxBatch). */
  step: number;
  /** GpuModelOptions.laneNorms and headlessChunks (default true). */
  laneNorms?: boolean;
  headlessChunks?: boolean;
  /** GpuModelOptions.attentionTiles (default: the adapter's). */
  attentionTiles?: boolean;
}

/** The kernels' configurations, 64-token steps (the default comparison). */
const KERNEL_MODES: Mode[] = [
  { name: "before", wideTiles: false, interleavedTiles: false, attentionBlocks: false, step: 64 },
  {
    name: "wide tiles",
    wideTiles: true,
    interleavedTiles: false,
    attentionBlocks: false,
    step: 64,
  },
  {
    name: "+ interleaved",
    wideTiles: true,
    interleavedTiles: true,
    attentionBlocks: false,
    step: 64,
  },
  {
    name: "+ attention blocks",
    wideTiles: true,
    interleavedTiles: true,
    attentionBlocks: true,
    step: 64,
  },
];

/** `--compare steps`: every kernel choice on, steps of 64 tokens (the old step limit) and 128
 * (the default), on a real-shape model with all 128 experts (where a 64-token step gives each
 * expert only 4 pairs). */
const STEP_MODES: Mode[] = [64, 128].map((step) => ({
  name: `${step}-token steps`,
  wideTiles: true,
  interleavedTiles: true,
  attentionBlocks: true,
  step,
}));

/** `--compare chunks`: every kernel choice above on, 128-token steps; the q/k heads' norm and
 * RoPE a workgroup per row (the baseline) or a lane per row, then the chunks before a prompt's
 * last without the lm_head (the baseline ran it over their every row). */
const CHUNK_MODES: Mode[] = [
  { laneNorms: false, headlessChunks: false, name: "before" },
  { laneNorms: true, headlessChunks: false, name: "lane norms" },
  { laneNorms: true, headlessChunks: true, name: "+ headless chunks" },
].map((m) => ({ ...m, wideTiles: true, interleavedTiles: true, attentionBlocks: true, step: 128 }));

/** `--compare attention`: 128-token steps, prefill attention in three passes (the baseline) or
 * in tiles. */
const ATTENTION_MODES: Mode[] = [
  { attentionTiles: false, name: "three passes" },
  { attentionTiles: true, name: "tiles" },
].map((m) => ({ ...m, wideTiles: true, interleavedTiles: true, attentionBlocks: true, step: 128 }));

let MODES = KERNEL_MODES;
/** Whether the modes' logits may differ (attention kernels summing in another order). */
let MAY_DIFFER = false;

async function benchModel(
  name: string,
  dir: string,
  lengths: number[],
  reps: number,
): Promise<{ rows: Row[]; identical: boolean; maxDiff: number }> {
  const maxLen = Math.max(...lengths);
  const side = await openSideBySide(
    dir,
    MODES.map((m) => ({
      maxContext: maxLen,
      maxBatch: m.step,
      wideTiles: m.wideTiles,
      interleavedTiles: m.interleavedTiles,
      attentionBlocks: m.attentionBlocks,
      laneNorms: m.laneNorms,
      headlessChunks: m.headlessChunks,
      attentionTiles: m.attentionTiles,
    })),
  );
  const models = side.models;
  const c = side.opened.weights.config;
  const rows: Row[] = [];
  let identical = true;
  let maxDiff = 0;
  try {
    for (const n of lengths) {
      const rand = mulberry32(n);
      const prompt = Array.from({ length: n }, () => Math.floor(rand() * c.vocabSize));
      const times: number[][] = MODES.map(() => []);
      const last: Float32Array[] = [];
      for (let rep = 0; rep <= reps; rep++) {
        for (const [i, model] of models.entries()) {
          const s = model.newSession();
          const t0 = performance.now();
          const logits = await s.forward(prompt, { lastOnly: true });
          const ms = performance.now() - t0;
          s.free();
          if (rep > 0) times[i].push(ms); // the first round compiles pipelines
          else last[i] = logits[logits.length - 1];
        }
      }
      if (!last.every((l) => l.every((v, j) => Object.is(v, last[0][j])))) identical = false;
      for (const l of last) {
        for (let j = 0; j < l.length; j++) maxDiff = Math.max(maxDiff, Math.abs(l[j] - last[0][j]));
      }
      for (const [i, m] of MODES.entries()) {
        const med = median(times[i]);
        rows.push({
          model: name,
          tokens: n,
          mode: m.name,
          ms: times[i],
          medianMs: med,
          tokensPerS: n / (med / 1000),
        });
        console.error(`${name} ${n} ${m.name}: ${(n / (med / 1000)).toFixed(1)} tok/s`);
      }
    }
  } finally {
    side.close();
  }
  return { rows, identical, maxDiff };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      reps: { type: "string", default: String(DEFAULT_REPS) },
      lengths: { type: "string", default: DEFAULT_LENGTHS.join(",") },
      "no-real": { type: "boolean", default: false },
      compare: { type: "string", default: "kernels" },
    },
    strict: true,
  });
  const reps = Number(values.reps);
  const lengths = values.lengths.split(",").map(Number);
  if (!Number.isInteger(reps) || reps < 1 || !lengths.every((n) => Number.isInteger(n) && n > 0)) {
    throw new RangeError("--reps: a positive integer; --lengths: positive integers, commas");
  }
  const compare = values.compare;
  if (!["kernels", "steps", "chunks", "attention"].includes(compare)) {
    throw new RangeError("--compare: kernels, steps, chunks or attention");
  }
  const steps = compare === "steps";
  MODES = steps
    ? STEP_MODES
    : compare === "chunks"
    ? CHUNK_MODES
    : compare === "attention"
    ? ATTENTION_MODES
    : KERNEL_MODES;
  MAY_DIFFER = compare === "attention";
  // chunks: the real vocab, since the baseline runs the lm_head over the early chunks' rows
  const real = steps
    ? { ...REAL, experts: 128 }
    : compare === "chunks"
    ? { ...REAL, vocab: QWEN3_30B_A3B.vocab }
    : REAL;
  const t0 = performance.now();
  const results = [await benchModel("default", DEFAULT_MODEL_DIR, lengths, reps)];
  let tmp: string | null = null;
  if (!values["no-real"]) {
    tmp = await Deno.makeTempDir({ prefix: "moe-prefill-bench-" });
    try {
      console.error("writing the real-shape fixture ...");
      await writeFixtureInChild(`${tmp}/real`, real);
      const name = `30B-A3B x2 (E=${real.experts}, V=${real.vocab})`;
      results.push(await benchModel(name, `${tmp}/real`, lengths, reps));
    } finally {
      Deno.removeSync(tmp, { recursive: true });
    }
  }
  const rows = results.flatMap((r) => r.rows);
  const lines = [
    `prefill tok/s, ${reps} timed runs per cell after one untimed, modes alternating, medians; ` +
    `load avg ${Deno.loadavg()[0].toFixed(2)} at the end; ` +
    `${((performance.now() - t0) / 1000).toFixed(0)} s`,
    `| model | prompt | ${MODES.map((m) => `${m.name} tok/s`).join(" | ")} | ratios to ${
      MODES[0].name
    } |`,
    `| --- | --- | ${MODES.map(() => "---").join(" | ")} | --- |`,
  ];
  for (const r of results) {
    for (const n of lengths) {
      const speeds = MODES.map((m) =>
        r.rows.find((x) => x.tokens === n && x.mode === m.name)!.tokensPerS
      );
      lines.push(
        `| ${r.rows[0].model} | ${n} | ${speeds.map((v) => v.toFixed(1)).join(" | ")} | ${
          speeds.slice(1).map((v) => `${(v / speeds[0]).toFixed(2)}x`).join(" / ")
        } |`,
      );
    }
  }
  lines.push(
    MAY_DIFFER
      ? `last-token logits, largest |difference| between modes: ${
        results.map((r) => `${r.rows[0].model} ${r.maxDiff.toExponential(2)}`).join(", ")
      }`
      : `last-token logits identical in all modes: ${
        results.map((r) => `${r.rows[0].model} ${r.identical ? "yes" : "NO"}`).join(", ")
      }`,
  );
  for (const l of lines) console.log(l);
  Deno.mkdirSync(new URL("./out/", import.meta.url), { recursive: true });
  Deno.writeTextFileSync(
    `${OUT_DIR}prefill${compare === "kernels" ? "" : `_${compare}`}.json`,
    JSON.stringify({ date: new Date().toISOString(), rows, lines }, null, 2) + "\n",
  );
}

if (import.meta.main) await main();
