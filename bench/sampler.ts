/**
 * GPU time of one sampling step (src/gpu/sampler.ts) at Qwen3's vocabulary (151,936 tokens) by
 * timestamp queries, for greedy, temperature alone, top_k 40, top_p 0.95 and both (llama.cpp's
 * defaults), with the top_k / top_p cuts found by radix select (the default) and by bisection
 * over the key's 32 bits (`radixSelect: false`, the baseline), alternating; medians. Logits: sums
 * of 3 uniforms times 6 (a few dozen tokens dominate). Then the same two samplers in a whole
 * decode: two layers of Qwen3-30B-A3B shapes (32 experts, vocab 151936; written to a temporary
 * directory first, about a minute), 16 tokens after 8 at top_k 40 + top_p 0.95 (seed 7: both must
 * draw the same tokens), tokens/s alternating, medians (`--no-decode` skips it). Not a test:
 * prints tables and writes bench/out/sampler.json.
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/sampler.ts [--rounds N]
 *     [--no-decode]
 */
import { parseArgs } from "node:util";
import { openGpu } from "../src/gpu/device.ts";
import { Ops } from "../src/gpu/ops.ts";
import { GpuSampler } from "../src/gpu/sampler.ts";
import { GREEDY, type SamplingParams } from "../src/sampling.ts";
import { mulberry32 } from "../weights/fixture.ts";
import { median } from "./memcpy.ts";
import { QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";

const V = 151936;
/** Steps recorded per timed pass. */
const STEPS = 8;
const CONFIGS: [string, Partial<SamplingParams>][] = [
  ["greedy", {}],
  ["temperature 1", { temperature: 1 }],
  ["top_k 40", { temperature: 1, topK: 40 }],
  ["top_p 0.95", { temperature: 1, topP: 0.95 }],
  ["top_k 40 + top_p 0.95", { temperature: 1, topK: 40, topP: 0.95 }],
];

const { values } = parseArgs({
  options: { rounds: { type: "string", default: "7" }, "no-decode": { type: "boolean" } },
});
const rounds = Number(values.rounds);
if (!(Number.isInteger(rounds) && rounds >= 1)) throw new RangeError("--rounds N, N >= 1");
const gpu = await openGpu();
if (!gpu.features.includes("timestamp-query")) {
  throw new Error("this bench needs the adapter's timestamp-query feature");
}
const device = gpu.device;
const ops = new Ops(gpu);
const next = mulberry32(12345);
const row = Float32Array.from({ length: V }, () => (next() + next() + next()) * 6);
const logits = device.createBuffer({
  size: V * 4,
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
});
device.queue.writeBuffer(logits, 0, row);
const samplers = {
  radix: new GpuSampler(gpu, ops, V, logits),
  bisection: new GpuSampler(gpu, ops, V, logits, { radixSelect: false }),
};
const query = device.createQuerySet({ type: "timestamp", count: 2 });
const resolve = device.createBuffer({
  size: 16,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const read = device.createBuffer({
  size: 16,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});

/** Milliseconds of GPU time per step of `sampler` under `sampling`. */
async function stepMs(sampler: GpuSampler, sampling: SamplingParams): Promise<number> {
  const seq = sampler.createSequence(64);
  sampler.writeRequest(seq, { sampling, genStart: 1, maxEnd: 60, eosIds: [] });
  device.queue.writeBuffer(ops.step, 0, Uint32Array.of(1, 1, 2, 0)); // one token at position 1
  const list = sampler.ops(seq, sampling);
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass({
    timestampWrites: { querySet: query, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
  });
  for (let i = 0; i < STEPS; i++) for (const op of list) op.record(pass, 1);
  pass.end();
  enc.resolveQuerySet(query, 0, 2, resolve, 0);
  enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const [begin, end] = new BigUint64Array(read.getMappedRange().slice(0));
  read.unmap();
  sampler.destroySequence(seq);
  return Number(end - begin) / 1e6 / STEPS;
}

console.log(`adapter: ${gpu.adapterInfo.description || gpu.adapterInfo.vendor}`);
console.log(`sampling step at V = ${V}, GPU ms (median of ${rounds})`);
console.log("sampling                 bisection (before)  radix select  ratio");
const rows = [];
for (const [name, p] of CONFIGS) {
  const sampling = { ...GREEDY, ...p, seed: 7 } as SamplingParams;
  const ms: Record<string, number[]> = { radix: [], bisection: [] };
  for (let r = 0; r <= rounds; r++) {
    const order = r % 2 ? ["radix", "bisection"] as const : ["bisection", "radix"] as const;
    for (const way of order) {
      const t = await stepMs(samplers[way], sampling);
      if (r > 0) ms[way].push(t); // round 0: pipelines compile
    }
  }
  const before = median(ms.bisection), after = median(ms.radix);
  rows.push({ sampling: name, bisectionMs: before, radixMs: after });
  console.log(
    `${name.padEnd(24)} ${before.toFixed(2).padStart(17)}  ${after.toFixed(2).padStart(12)}  ` +
      `${(before / after).toFixed(2)}x`,
  );
}
const decode = values["no-decode"] ? null : await decodeRows();
await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./out/sampler.json", import.meta.url),
  JSON.stringify({ date: new Date().toISOString(), vocab: V, rows, decode }, null, 1),
);

/** Sampled decode tokens/s on the real-shape model with each sampler. */
async function decodeRows() {
  const dir = await Deno.makeTempDir({ prefix: "sampler_bench_" });
  try {
    await writeFixtureInChild(dir, { ...QWEN3_30B_A3B, experts: 32 });
    const opened = openModelDir(dir);
    try {
      const sampling = { ...GREEDY, temperature: 1, topK: 40, topP: 0.95, seed: 7 };
      const prompt = [1, 2, 3, 4, 5, 6, 7, 8];
      const models = {
        radix: await GpuModel.open(opened.weights, { gpu, maxContext: 64 }),
        bisection: await GpuModel.open(opened.weights, { gpu, maxContext: 64, radixSelect: false }),
      };
      const speed: Record<string, number[]> = { radix: [], bisection: [] };
      const tokens: Record<string, string> = {};
      for (let r = 0; r <= Math.min(rounds, 5); r++) {
        const order = r % 2 ? ["radix", "bisection"] as const : ["bisection", "radix"] as const;
        for (const way of order) {
          const s = models[way].newSession();
          const res = await s.decode(
            { feed: prompt, maxTokens: 16, sampling, eosIds: [] },
            () => undefined,
          );
          s.free();
          tokens[way] = res.tokens.join();
          if (r > 0) speed[way].push(res.stats.tokens / (res.stats.ms / 1000));
        }
      }
      for (const m of Object.values(models)) m.destroy();
      const out = {
        bisectionTokS: median(speed.bisection),
        radixTokS: median(speed.radix),
        sameTokens: tokens.radix === tokens.bisection,
      };
      console.log(
        `\nsampled decode (top_k 40 + top_p 0.95), 2 layers of Qwen3-30B-A3B shapes, 16 tokens: ` +
          `bisection ${out.bisectionTokS.toFixed(2)} tok/s, radix select ` +
          `${out.radixTokS.toFixed(2)} tok/s (${
            (out.radixTokS / out.bisectionTokS).toFixed(2)
          }x); ` +
          `same tokens: ${out.sameTokens}`,
      );
      return out;
    } finally {
      opened.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
