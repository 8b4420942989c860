/**
 * Resident decode and prefill with the resident f16/bf16 matrices row-major (`rows8Weights:
 * false`, the baseline) and in the rows8 layout (the default: an invocation's 8 rows read as one
 * stream), side by side in one run, on the embedded default model and on two layers of
 * Qwen3-30B-A3B shapes (32 experts, vocab 151936: the untied lm_head is 622 of the 849 MB a token
 * reads). Greedy decode tokens/s (the adaptive loop) and a 64-token prefill; both layouts must
 * decode the same tokens. Modes alternate; medians. Not a test: prints a table.
 * `--compare qkv` sets three q/k/v matmuls (`fusedQkv: false`, the baseline) beside one matmul
 * over their stacked rows (the default) instead; `--compare norms` the q/k heads' norm and RoPE
 * with a workgroup per row (`laneNorms: false`, the baseline) beside a lane per row; `--compare
 * arrays` private arrays at the kernels' declared maxima (`exactArrays: false`) beside sized per
 * pipeline; `--compare heads` the prompts prefilled together with the lm_head over every row of
 * their chunk (`compactHead: false`) beside over the sampled rows only (use with --batch);
 * `--compare tiles` 16-token matmul tiles from 32 tokens a step (`paddedTiles: false`) beside the
 * tile that pads fewer tokens (use with --batch 16: steps of 16 sequences); `--compare chunks`
 * rows8 chunks read through the generic weights_block8.wgsl (`chunkLoaders: false`) beside the
 * dtype's own chunk loader (the chunk's word index computed once); `--compare textures` the
 * resident rows8 matrices in storage buffers (`textureWeights: false`) beside in read-only storage
 * textures (llvmpipe's default); `--compare expert-textures` the expert pools in buffers
 * (`textureExperts: false`) beside in textures (llvmpipe's default; resident matrices in textures
 * both ways).
 * `--batch N`: N sequences decode at once (aggregate tokens/s of the batched loop, including their
 * prompts' prefill together, and the ms until every one had its first token; a step of 8-31
 * sequences runs the 8-token matmul). `--quant q8_0` (or `q4_0`) runs either comparison
 * on both models packed with q8_0 (q4_0) experts and base (q/k/v/o, lm_head: `pack --quant q8_0
 * --quant-base q8_0`), whose resident matrices rows8 repacks with their scales (repackQ8Rows8,
 * repackQ4Rows8); `--quant
 * q6_k` / `q4_k` with the base only in that type (`--quant-base`; the experts stay as they are:
 * quantizing them to a K-quant in TypeScript would take minutes), repacked by repackQ6KRows8 /
 * repackQ4KRows8.
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/layout.ts [--reps N]
 *     [--no-real] [--compare rows8|qkv|norms|arrays|tiles|heads|chunks|textures|expert-textures] [--batch N] [--quant q8_0|q4_0|q6_k|q4_k]
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import { openSideBySide } from "./side_by_side.ts";
import type { GpuModelOptions } from "../src/gpu/model.ts";
import { GREEDY } from "../src/sampling.ts";
import { QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { median } from "./memcpy.ts";
import { pack } from "../src/pack/pack.ts";
import type { QuantOptions } from "../src/pack/quantize.ts";

const REAL = { ...QWEN3_30B_A3B, experts: 32 };
/** What `--compare` sets side by side: the baseline first. */
const COMPARISONS: Record<string, { name: string; opts: GpuModelOptions }[]> = {
  rows8: [
    { name: "row-major", opts: { rows8Weights: false } },
    { name: "rows8", opts: { rows8Weights: true } },
  ],
  qkv: [
    { name: "3 q/k/v matmuls", opts: { fusedQkv: false } },
    { name: "stacked q/k/v", opts: { fusedQkv: true } },
  ],
  norms: [
    { name: "q/k norms, a workgroup a row", opts: { laneNorms: false } },
    { name: "a lane a row", opts: { laneNorms: true } },
  ],
  arrays: [
    { name: "arrays at declared maxima", opts: { exactArrays: false } },
    { name: "exact arrays", opts: { exactArrays: true } },
  ],
  tiles: [
    { name: "16-token tiles from 32 tokens", opts: { paddedTiles: false } },
    { name: "tiles by padding", opts: { paddedTiles: true } },
  ],
  heads: [
    { name: "head on every prompt row", opts: { compactHead: false } },
    { name: "on the sampled rows", opts: { compactHead: true } },
  ],
  chunks: [
    { name: "generic chunk loader", opts: { chunkLoaders: false } },
    { name: "the dtype's chunk loader", opts: { chunkLoaders: true } },
  ],
  textures: [
    { name: "weights in buffers", opts: { textureWeights: false } },
    { name: "in textures", opts: { textureWeights: true } },
  ],
  "expert-textures": [
    { name: "expert pools in buffers", opts: { textureWeights: true, textureExperts: false } },
    { name: "in textures", opts: { textureWeights: true, textureExperts: true } },
  ],
};
let MODES = COMPARISONS.rows8;

async function bench(name: string, dir: string, tokens: number, reps: number): Promise<string[]> {
  const side = await openSideBySide(
    dir,
    MODES.map((m) => ({
      maxContext: 64 + tokens + 8,
      ...(BATCH > 1 ? { maxSequences: BATCH } : {}),
      ...m.opts,
    })),
  );
  const models = side.models;
  const c = side.opened.weights.config;
  const prompt = Array.from({ length: 64 }, (_, i) => (i * 7919 + 13) % c.vocabSize);
  const decode: number[][] = MODES.map(() => []), prefill: number[][] = MODES.map(() => []);
  /** Batch mode: ms until every sequence had its first token (their prompts prefilled together). */
  const firsts: number[][] = MODES.map(() => []);
  const ids: string[] = [];
  try {
    for (let rep = 0; rep <= reps; rep++) {
      for (const [i, model] of models.entries()) {
        const s = model.newSession();
        const t0 = performance.now();
        await s.forward(prompt, { lastOnly: true });
        const prefillMs = performance.now() - t0;
        s.free();
        // BATCH sequences at once (distinct prompts), batched by the decode loop
        const sessions = Array.from({ length: BATCH }, () => model.newSession());
        const t1 = performance.now();
        let started = 0, allFirst = 0;
        const results = await Promise.all(sessions.map((s, b) => {
          let first = true;
          return s.decode(
            {
              feed: prompt.slice(b % 56, b % 56 + 8),
              maxTokens: tokens,
              sampling: GREEDY,
              eosIds: [],
            },
            () => {
              if (first && ++started === BATCH) allFirst = performance.now() - t1;
              first = false;
              return undefined;
            },
          );
        }));
        const decodeMs = performance.now() - t1;
        for (const s of sessions) s.free();
        if (rep === 0) { // pipelines compile
          ids[i] = results.map((r) => r.tokens.join()).join("|");
          continue;
        }
        prefill[i].push(64 / (prefillMs / 1000));
        firsts[i].push(allFirst);
        const r = results[0];
        decode[i].push(
          BATCH === 1
            ? r.stats.tokens / (r.stats.ms / 1000)
            : results.reduce((n, x) => n + x.stats.tokens, 0) / (decodeMs / 1000),
        );
      }
    }
  } finally {
    side.close();
  }
  const [d0, d1] = decode.map(median), [p0, p1] = prefill.map(median);
  if (BATCH > 1) {
    const [f0, f1] = firsts.map(median);
    console.log(
      `${name}: ms until all ${BATCH} sequences had a first token: ${MODES[0].name} ${
        f0.toFixed(0)
      }, ${MODES[1].name} ${f1.toFixed(0)} (${(f0 / f1).toFixed(2)}x faster)`,
    );
  }
  return [
    `| ${name} | ${d0.toFixed(1)} | ${d1.toFixed(1)} | ${(d1 / d0).toFixed(2)}x | ${
      p0.toFixed(1)
    } | ${p1.toFixed(1)} | ${(p1 / p0).toFixed(2)}x | ${ids[0] === ids[1] ? "yes" : "NO"} |`,
  ];
}

const { values } = parseArgs({
  options: {
    reps: { type: "string", default: "3" },
    "no-real": { type: "boolean", default: false },
    compare: { type: "string", default: "rows8" },
    quant: { type: "string" },
    batch: { type: "string", default: "1" },
  },
});
/** Sequences decoding at once (--batch): aggregate tokens/s of the batched decode loop. */
const BATCH = Number(values.batch);
if (!Number.isInteger(BATCH) || BATCH < 1) throw new RangeError("--batch: a positive integer");
/** What --quant packs: q8_0 experts and base, or a q6_k base. */
const QUANTS: Record<string, QuantOptions> = {
  q8_0: { experts: "Q8_0", base: "Q8_0" },
  q4_0: { experts: "Q4_0", base: "Q4_0" },
  q6_k: { base: "Q6_K" },
  q4_k: { base: "Q4_K" },
};
if (values.quant !== undefined && !(values.quant in QUANTS)) {
  throw new RangeError(`--quant: ${Object.keys(QUANTS).join(" or ")}`);
}
const quantTmp = values.quant ? await Deno.makeTempDir({ prefix: "moe-layout-quant-" }) : null;
const quantTag = values.quant
  ? ` ${values.quant}${values.quant.endsWith("_k") ? " base" : ""}`
  : "";
/** The model directory benched: as it is, or packed as --quant says. */
async function variant(dir: string, name: string): Promise<string> {
  if (quantTmp === null) return dir;
  const out = `${quantTmp}/${name}`;
  console.error(`packing ${name} (${quantTag.trim()}) ...`);
  await pack(dir, out, { quant: QUANTS[values.quant!] });
  return out;
}
if (!(values.compare in COMPARISONS)) {
  throw new RangeError(`--compare: ${Object.keys(COMPARISONS).join(" or ")}`);
}
MODES = COMPARISONS[values.compare];
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) throw new RangeError("--reps: a positive integer");
const t0 = performance.now();
const lines = [
  `| model | decode tok/s${BATCH > 1 ? ` (${BATCH} sequences)` : ""} ${MODES[0].name} | ${
    MODES[1].name
  } | ratio | prefill 64 tok/s ${MODES[0].name} | ${MODES[1].name} | ratio | same tokens |`,
  "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ...await bench(
    `default${quantTag}`,
    await variant(DEFAULT_MODEL_DIR, "default"),
    128,
    reps,
  ),
];
if (!values["no-real"]) {
  const tmp = await Deno.makeTempDir({ prefix: "moe-layout-bench-" });
  try {
    console.error("writing the real-shape fixture ...");
    await writeFixtureInChild(`${tmp}/real`, REAL);
    lines.push(
      ...await bench(
        `30B-A3B x2 (E=32, V=151936)${quantTag}`,
        await variant(`${tmp}/real`, "real"),
        16,
        reps,
      ),
    );
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
}
if (quantTmp !== null) Deno.removeSync(quantTmp, { recursive: true });
for (const l of lines) console.log(l);
console.log(
  `medians of ${reps} after an untimed round, modes alternating; load avg ${
    Deno.loadavg()[0].toFixed(2)
  }; ${((performance.now() - t0) / 1000).toFixed(0)} s`,
);
