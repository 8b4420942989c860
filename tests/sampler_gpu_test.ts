/**
 * GpuSampler (src/gpu/sampler.ts, kernels/sample_*.wgsl) against the CPU reference
 * (src/sampling.ts): the same token at every step, for each option alone and combined, at
 * V = 4096 and V = 151936; the sequence's end; the frequencies of its draws (chi-square).
 * Steps run as the runtime will run them: many per submission, the 16-byte Step record and the
 * step's logits row copied in with copyBufferToBuffer between compute passes.
 */
import assert from "node:assert/strict";
import { readU32 } from "../src/gpu/readback.ts";
import {
  GpuSampler,
  type GpuSamplerOptions,
  MAX_EOS,
  NONE,
  SamplerConfigError,
  samplerLoopIterations,
  type SamplerSequence,
} from "../src/gpu/sampler.ts";
import { commonSource, composeSource, kernelSource } from "../src/gpu/shader.ts";
import {
  EXP_WEIGHT_MIN_D,
  expWeight,
  GREEDY,
  mulFrac24,
  sampleNext,
  samplingDistribution,
  type SamplingParams,
} from "../src/sampling.ts";
import { buffer, gpu, gpuTest, ops, rng } from "./kernel_harness.ts";

const device = gpu.device;
/** Steps recorded per submission. */
const BATCH = 256;
/** llvmpipe's limit on loop iterations per invocation (src/gpu/ops.ts LLVMPIPE_LOOP_LIMIT). */
const LLVMPIPE_LOOP_LIMIT = 65535;

/** A sampler over `rows` (logits rows of V f32 each, kept on the GPU to copy into row 0). */
class Fixture {
  readonly V: number;
  readonly sampler: GpuSampler;
  private logits: GPUBuffer;
  private rowsBuffer: GPUBuffer;

  constructor(readonly rows: Float32Array[], opts: GpuSamplerOptions = {}) {
    this.V = rows[0].length;
    const all = new Float32Array(rows.length * this.V);
    rows.forEach((r, i) => all.set(r, i * this.V));
    this.rowsBuffer = buffer(all, "rows");
    this.logits = buffer(this.V * 4, "logits");
    this.sampler = new GpuSampler(gpu, ops, this.V, this.logits, opts);
  }

  /** Runs one step per entry (sampling position len from logits row `row`), in batches. */
  run(seq: SamplerSequence, p: SamplingParams, steps: { len: number; row: number }[]): void {
    const list = this.sampler.ops(seq, p);
    for (let b = 0; b < steps.length; b += BATCH) {
      const batch = steps.slice(b, b + BATCH);
      const records = new Uint32Array(batch.length * 4);
      batch.forEach((s, i) => records.set([1, s.len - 1, s.len, 0], i * 4));
      const recordBuffer = buffer(records, "step records");
      const encoder = device.createCommandEncoder();
      batch.forEach((s, i) => {
        encoder.copyBufferToBuffer(recordBuffer, i * 16, ops.step, 0, 16);
        encoder.copyBufferToBuffer(this.rowsBuffer, s.row * this.V * 4, this.logits, 0, this.V * 4);
        const pass = encoder.beginComputePass();
        for (const op of list) op.record(pass, 1);
        pass.end();
      });
      device.queue.submit([encoder.finish()]);
      recordBuffer.destroy();
    }
  }

  destroy(): void {
    this.sampler.destroy();
    this.logits.destroy();
    this.rowsBuffer.destroy();
  }
}

/** n rows of V logits: sums of 3 uniforms times `scale` (a few dozen tokens dominate), or rounded
 * to `quantum` (many ties). */
function logitRows(V: number, n: number, seed: number, scale: number, quantum = 0): Float32Array[] {
  const next = rng(seed);
  return Array.from({ length: n }, () =>
    Float32Array.from({ length: V }, () => {
      const v = (next() + next() + next()) * scale;
      return quantum ? Math.round(v / quantum) * quantum : v;
    }));
}

/** The `count` largest logits' ids of a row. */
function topIds(row: Float32Array, count: number): number[] {
  return Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b).slice(0, count);
}

interface Compared {
  draws: number;
  mismatches: string[];
  distinct: number;
}

/**
 * Decodes `sequences` sequences of `steps` tokens each on the GPU (each its own seed and prompt
 * length, rows chosen per step) and checks every token against sampleNext() on the GPU's own
 * history; also that the prompt is intact and nothing past the last step was written.
 */
async function compare(
  fx: Fixture,
  p: Partial<SamplingParams>,
  sequences: number,
  steps: number,
): Promise<Compared> {
  const result: Compared = { draws: 0, mismatches: [], distinct: 0 };
  const tokens = new Set<number>();
  for (let s = 0; s < sequences; s++) {
    const sampling: SamplingParams = { ...GREEDY, ...p, seed: 1000 + 17 * s - (s % 2) * 5000 };
    const promptLength = 5 + 11 * s;
    const capacity = promptLength + steps + 3;
    // A prompt of likely tokens with repeats, so that the repetition penalty bites.
    const likely = topIds(fx.rows[0], 12);
    const prompt = Array.from({ length: promptLength }, (_, i) => likely[(i * 5) % likely.length]);
    const sentinel = 0xdeadbeef;
    const initial = new Uint32Array(capacity).fill(sentinel);
    initial.set(prompt);
    const seq = fx.sampler.createSequence(capacity);
    device.queue.writeBuffer(seq.ids, 0, initial);
    fx.sampler.writeRequest(seq, {
      sampling,
      genStart: promptLength,
      maxEnd: promptLength + steps,
      eosIds: [],
    });
    const plan = Array.from({ length: steps }, (_, n) => ({
      len: promptLength + n,
      row: (n * 7 + s) % fx.rows.length,
    }));
    fx.run(seq, sampling, plan);
    const ids = await readU32(gpu, seq.ids, 0, capacity);
    assert.deepEqual([...ids.subarray(0, promptLength)], prompt, "the prompt is untouched");
    assert.deepEqual(
      [...ids.subarray(promptLength + steps)],
      [sentinel, sentinel, sentinel],
      "nothing written past the last step",
    );
    for (const { len, row } of plan) {
      const history = { ids: ids.subarray(0, len), genStart: promptLength };
      const want = sampleNext(fx.rows[row], sampling, history);
      result.draws++;
      tokens.add(ids[len]);
      if (ids[len] !== want) {
        result.mismatches.push(`seq ${s} len ${len}: GPU ${ids[len]}, CPU ${want}`);
      }
    }
    fx.sampler.destroySequence(seq);
  }
  result.distinct = tokens.size;
  return result;
}

/** The configurations of the comparison: each option alone, then combined. */
const CONFIGS: [string, Partial<SamplingParams>][] = [
  ["greedy", { temperature: 0 }],
  ["temperature 0.7", { temperature: 0.7 }],
  ["temperature 1", { temperature: 1 }],
  ["temperature 1.5", { temperature: 1.5 }],
  ["top_k 40", { temperature: 1, topK: 40 }],
  ["top_p 0.9", { temperature: 1, topP: 0.9 }],
  ["min_p 0.05", { temperature: 1, minP: 0.05 }],
  ["repetition 1.3", { temperature: 1, repetitionPenalty: 1.3 }],
  ["presence 0.7 + frequency 0.4", {
    temperature: 0.8,
    presencePenalty: 0.7,
    frequencyPenalty: 0.4,
  }],
  ["greedy + penalties", { temperature: 0, repetitionPenalty: 1.2, frequencyPenalty: 0.3 }],
  ["all combined", {
    temperature: 0.8,
    topK: 60,
    topP: 0.85,
    minP: 0.02,
    repetitionPenalty: 1.15,
    presencePenalty: 0.3,
    frequencyPenalty: 0.2,
  }],
];

gpuTest(
  "GpuSampler draws the CPU's token at every step (V = 4096, 2000 draws per option)",
  async () => {
    const fx = new Fixture(logitRows(4096, 8, 11, 2.5));
    const lines: string[] = [];
    let total = 0;
    try {
      for (const [name, p] of CONFIGS) {
        const r = await compare(fx, p, 4, 500);
        total += r.draws;
        lines.push(
          `${name}: ${r.draws} draws, ${r.distinct} distinct tokens, ${r.mismatches.length} mismatches`,
        );
        assert.equal(r.draws, 2000);
        assert.deepEqual(r.mismatches.slice(0, 5), [], name);
        if (p.temperature !== 0) assert.ok(r.distinct > 20, `${name}: draws vary (${r.distinct})`);
      }
    } finally {
      fx.destroy();
    }
    console.log(`V = 4096, ${total} draws\n  ${lines.join("\n  ")}`);
  },
);

gpuTest(
  "GpuSampler agrees with the CPU where logits tie (quantised rows, top_k/top_p cuts)",
  async () => {
    // Rounded to 1/4: hundreds of tokens share each value, so the top_k and top_p cuts fall inside
    // runs of equal logits and are decided by index.
    const fx = new Fixture(logitRows(4096, 8, 12, 2.5, 0.25));
    const lines: string[] = [];
    try {
      for (
        const [name, p] of [
          ["top_k 50", { temperature: 1, topK: 50 }],
          ["top_k 300 + top_p 0.7", { temperature: 1.2, topK: 300, topP: 0.7 }],
          ["top_p 0.5 + penalties", { temperature: 1, topP: 0.5, repetitionPenalty: 1.5 }],
          ["greedy", { temperature: 0 }],
        ] as [string, Partial<SamplingParams>][]
      ) {
        const r = await compare(fx, p, 4, 500);
        lines.push(
          `${name}: ${r.draws} draws, ${r.distinct} distinct, ${r.mismatches.length} mismatches`,
        );
        assert.deepEqual(r.mismatches.slice(0, 5), [], name);
      }
    } finally {
      fx.destroy();
    }
    console.log(`V = 4096 quantised\n  ${lines.join("\n  ")}`);
  },
);

gpuTest(
  "GpuSampler's radix select and its bisection baseline agree with the CPU at the cuts' extremes",
  async () => {
    // the smallest and largest cuts (top_k 1 and V - 1, top_p near 0 and 1), on rows with and
    // without runs of equal logits
    const configs: [string, Partial<SamplingParams>][] = [
      ["top_k 1", { temperature: 1, topK: 1 }],
      ["top_k V-1", { temperature: 1, topK: 4095 }],
      ["top_p 1e-6", { temperature: 1, topP: 1e-6 }],
      ["top_p 0.999999", { temperature: 1, topP: 0.999999 }],
      ["top_k 2 + top_p 0.3", { temperature: 2, topK: 2, topP: 0.3 }],
    ];
    const lines: string[] = [];
    for (const radixSelect of [true, false]) {
      for (const quantum of [0, 0.25]) {
        const fx = new Fixture(logitRows(4096, 4, 13, 2.5, quantum), { radixSelect });
        try {
          for (const [name, p] of configs) {
            const r = await compare(fx, p, 2, 100);
            const label = `${radixSelect ? "radix" : "bisection"}, quantum ${quantum}, ${name}`;
            lines.push(
              `${label}: ${r.draws} draws, ${r.distinct} distinct, ${r.mismatches.length}`,
            );
            assert.deepEqual(r.mismatches.slice(0, 5), [], label);
          }
        } finally {
          fx.destroy();
        }
      }
    }
    console.log(
      `V = 4096, cuts at their extremes (draws, distinct, mismatches)\n  ${lines.join("\n  ")}`,
    );
  },
);

gpuTest(
  "GpuSampler at V = 151936 stays within llvmpipe's loop limit and agrees with the CPU",
  async () => {
    const V = 151936;
    const bound = samplerLoopIterations(V);
    console.log(
      `V = ${V}: at most ${bound} loop iterations per invocation (limit ${LLVMPIPE_LOOP_LIMIT})`,
    );
    assert.ok(bound < LLVMPIPE_LOOP_LIMIT / 2);
    // The likely tokens sit at the end of the vocabulary (a kernel that stopped early would miss
    // them), in runs of equal logits (the ties go by index).
    const rows = logitRows(V, 3, 13, 1, 0.5);
    for (const row of rows) {
      for (let i = V - 300; i < V; i++) row[i] += 6 + (i % 7) * 0.5;
    }
    const fx = new Fixture(rows);
    const lines: string[] = [];
    try {
      for (
        const [name, p] of [
          ["greedy + penalties", { temperature: 0, repetitionPenalty: 1.3, presencePenalty: 1 }],
          ["top_k 100", { temperature: 1, topK: 100 }],
          ["top_p 0.8", { temperature: 0.9, topP: 0.8 }],
          ["all combined", {
            temperature: 1.1,
            topK: 200,
            topP: 0.9,
            minP: 0.01,
            repetitionPenalty: 1.2,
            presencePenalty: 0.2,
            frequencyPenalty: 0.3,
          }],
        ] as [string, Partial<SamplingParams>][]
      ) {
        const r = await compare(fx, p, 2, 12);
        lines.push(
          `${name}: ${r.draws} draws, ${r.distinct} distinct, ${r.mismatches.length} mismatches`,
        );
        assert.deepEqual(r.mismatches, [], name);
      }
    } finally {
      fx.destroy();
    }
    console.log(`  ${lines.join("\n  ")}`);
  },
);

/** Runs `steps` steps from len = start on a fresh request and returns (ids, state.end). */
async function decode(
  fx: Fixture,
  sampling: SamplingParams,
  prompt: number[],
  maxEnd: number,
  eosIds: number[],
  steps: number,
  capacity = maxEnd + 4,
): Promise<{ ids: Uint32Array; end: number }> {
  const seq = fx.sampler.createSequence(capacity);
  const initial = new Uint32Array(capacity).fill(0xdeadbeef);
  initial.set(prompt);
  device.queue.writeBuffer(seq.ids, 0, initial);
  fx.sampler.writeRequest(seq, { sampling, genStart: prompt.length, maxEnd, eosIds });
  fx.run(
    seq,
    sampling,
    Array.from({ length: steps }, (_, n) => ({ len: prompt.length + n, row: 0 })),
  );
  const ids = await readU32(gpu, seq.ids, 0, capacity);
  const [end] = await readU32(gpu, seq.state, 0, 1);
  fx.sampler.destroySequence(seq);
  return { ids, end };
}

gpuTest(
  "GpuSampler sets state.end once, at an EOS id or at maxEnd, and keeps the prompt",
  async () => {
    const V = 300;
    const row = new Float32Array(V).fill(-1);
    row[42] = 10; // greedy: always 42; at temperature 1, p = 0.995
    const fx = new Fixture([row]);
    try {
      const prompt = [7, 8, 9, 10];
      // EOS at the first step: end = 5; later steps sample on but leave end alone.
      let r = await decode(fx, GREEDY, prompt, 12, [5, 42], 6);
      assert.equal(r.end, 5);
      assert.deepEqual([...r.ids.subarray(0, 10)], [...prompt, 42, 42, 42, 42, 42, 42]);
      assert.equal(r.ids[10], 0xdeadbeef);
      // Every one of MAX_EOS ids counts (the last one here).
      const eight = [1, 2, 3, 4, 5, 6, 11, 42];
      assert.equal(eight.length, MAX_EOS);
      r = await decode(fx, GREEDY, prompt, 12, eight, 2);
      assert.equal(r.end, 5);
      // No EOS: the sequence ends when position maxEnd - 1 = 8 holds a token.
      r = await decode(fx, GREEDY, prompt, 9, [41], 5);
      assert.equal(r.end, 9);
      assert.deepEqual([...r.ids.subarray(4, 10)], [42, 42, 42, 42, 42, 0xdeadbeef]);
      r = await decode(fx, GREEDY, prompt, 9, [41], 4);
      assert.equal(r.end, NONE, "not yet ended");
      // Penalties make 42 fall after its first use (presence 10): the EOS comes from the draw path.
      const penalised = { ...GREEDY, temperature: 1, seed: 3, presencePenalty: 10 };
      r = await decode(fx, penalised, prompt, 40, [42], 30);
      assert.equal(r.end, 5, "42 still dominates the first draw");
      const next = r.ids[5];
      assert.notEqual(next, 42);
      r = await decode(fx, penalised, prompt, 40, [next], 30);
      assert.equal(r.end, 6, "an EOS id from sample_draw ends the sequence");
      // writeRequest resets the end of a reused sequence.
      const seq = fx.sampler.createSequence(16);
      fx.sampler.writeRequest(seq, { sampling: GREEDY, genStart: 1, maxEnd: 2, eosIds: [] });
      fx.run(seq, GREEDY, [{ len: 1, row: 0 }]);
      assert.equal((await readU32(gpu, seq.state, 0, 1))[0], 2);
      fx.sampler.writeRequest(seq, { sampling: GREEDY, genStart: 2, maxEnd: 8, eosIds: [] });
      assert.equal((await readU32(gpu, seq.state, 0, 1))[0], NONE);
      fx.sampler.destroySequence(seq);
    } finally {
      fx.destroy();
    }
  },
);

gpuTest("GpuSampler.writeRequest() refuses what the kernels cannot do, naming it", () => {
  const fx = new Fixture([new Float32Array(16)]);
  try {
    const seq = fx.sampler.createSequence(8);
    const ok = { sampling: GREEDY, genStart: 2, maxEnd: 8, eosIds: [] };
    fx.sampler.writeRequest(seq, ok);
    const nine = Array.from({ length: MAX_EOS + 1 }, (_, i) => i);
    assert.throws(() => fx.sampler.writeRequest(seq, { ...ok, eosIds: nine }), /9 EOS ids/);
    assert.throws(() => fx.sampler.writeRequest(seq, { ...ok, maxEnd: 9 }), SamplerConfigError);
    assert.throws(() => fx.sampler.writeRequest(seq, { ...ok, genStart: 8 }), SamplerConfigError);
    const unseeded = { ...GREEDY, temperature: 1 };
    assert.throws(() => fx.sampler.writeRequest(seq, { ...ok, sampling: unseeded }), RangeError);
    assert.throws(() => new GpuSampler(gpu, ops, 1, buffer(16)), SamplerConfigError);
    assert.throws(() => new GpuSampler(gpu, ops, 64, buffer(16)), /less than one row/);
  } finally {
    fx.destroy();
  }
  return Promise.resolve();
});

gpuTest("GpuSampler.ops() is one dispatch for plain greedy and is prepared once", () => {
  const fx = new Fixture([new Float32Array(16)]);
  try {
    const seq = fx.sampler.createSequence(8);
    const greedy = fx.sampler.ops(seq, GREEDY);
    assert.deepEqual(greedy.map((op) => op.name), ["sample_argmax"]);
    assert.equal(fx.sampler.ops(seq, GREEDY), greedy, "cached");
    const all = { ...GREEDY, temperature: 1, topK: 4, topP: 0.5, minP: 0.1, repetitionPenalty: 2 };
    assert.deepEqual(
      fx.sampler.ops(seq, all).map((op) => op.name),
      ["sample_counts", "sample_penalize", "sample_topk", "sample_topp", "sample_draw"],
    );
    assert.deepEqual(
      fx.sampler.ops(seq, { ...GREEDY, temperature: 1 }).map((op) => op.name),
      ["sample_topk", "sample_draw"],
    );
  } finally {
    fx.destroy();
  }
  return Promise.resolve();
});

/** The sampler's kernels, kernels/<name>.wgsl. */
const SAMPLER_KERNELS = [
  "sample_argmax",
  "sample_counts",
  "sample_draw",
  "sample_penalize",
  "sample_topk",
  "sample_topp",
];

Deno.test("composeSource() puts the prelude between common.wgsl and the kernel", () => {
  for (const kernel of SAMPLER_KERNELS) {
    const code = composeSource(kernel, undefined, ["sample_common"]);
    const at = (text: string) => {
      const i = code.indexOf(text);
      assert.ok(i >= 0 && i === code.lastIndexOf(text), `${kernel}: one ${text}`);
      return i;
    };
    assert.ok(at("struct Step {") < at("struct Request {"), kernel);
    assert.ok(at("struct Request {") < at("@compute"), kernel);
  }
});

/** Pearson's statistic of observed counts against probabilities. */
function chiSquare(counts: number[], probs: number[], n: number): number {
  return counts.reduce((s, c, i) => s + (c - n * probs[i]) ** 2 / (n * probs[i]), 0);
}

gpuTest("GpuSampler's draws follow the distribution (chi-square, 20000 draws)", async () => {
  // p proportional to 1..10 (logits ln i); 0.999 quantiles of chi-square (standard tables):
  // 27.877 for 9 degrees of freedom, 18.467 for 4.
  const V = 10;
  const row = Float32Array.from({ length: V }, (_, i) => Math.log(i + 1));
  const fx = new Fixture([row]);
  const N = 20_000;
  const lines: string[] = [];
  try {
    for (
      const [name, p, quantile] of [
        ["temperature 1", { ...GREEDY, temperature: 1, seed: 2024 }, 27.877],
        [
          "top_k 6 + top_p 0.8",
          { ...GREEDY, temperature: 1, topK: 6, topP: 0.8, seed: -7 },
          18.467,
        ],
      ] as [string, SamplingParams, number][]
    ) {
      const { ids: support, probs } = samplingDistribution(row, p, { ids: [0], genStart: 1 });
      const seq = fx.sampler.createSequence(N + 1);
      fx.sampler.writeRequest(seq, { sampling: p, genStart: 1, maxEnd: N + 1, eosIds: [] });
      fx.run(seq, p, Array.from({ length: N }, (_, n) => ({ len: 1 + n, row: 0 })));
      const drawn = await readU32(gpu, seq.ids, 4, N);
      fx.sampler.destroySequence(seq);
      const counts = new Array(V).fill(0);
      for (const t of drawn) counts[t]++;
      for (let t = 0; t < V; t++) {
        if (!support.includes(t)) assert.equal(counts[t], 0, `${name}: token ${t} is filtered out`);
      }
      const stat = chiSquare(support.map((t) => counts[t]), [...probs], N);
      lines.push(
        `${name}: ${N} draws over ${support.length} tokens, chi-square ${stat.toFixed(2)} ` +
          `(df ${support.length - 1}, 0.999 quantile ${quantile})`,
      );
      assert.ok(stat < quantile, lines.at(-1));
      // The same draws as the CPU's (the counter is n = len - 1).
      for (let n = 0; n < N; n += 97) {
        assert.equal(drawn[n], sampleNext(row, p, { ids: new Array(1 + n).fill(0), genStart: 1 }));
      }
    }
  } finally {
    fx.destroy();
  }
  console.log(lines.join("\n"));
});

/** A test kernel `main` after the sampler kernels' preludes (common.wgsl, sample_common.wgsl, as
 * src/gpu/sampler.ts composes them), with WG = 64 as sample_common.wgsl needs. */
function withSamplePrelude(main: string): string {
  return [commonSource(), kernelSource("sample_common")].join("\n") + "\nconst WG: u32 = 64u;\n" +
    main;
}

/** Runs `main` (bindings: 1 = req (zero), 2 = input words, 3 = output words) over n invocations
 * and returns the output. */
async function runExact(main: string, input: Uint32Array, outWords: number): Promise<Uint32Array> {
  const module = device.createShaderModule({ code: withSamplePrelude(main) });
  const types: GPUBufferBindingType[] = ["uniform", "read-only-storage", "storage"];
  const layout = device.createBindGroupLayout({
    entries: types.map((type, i) => ({
      binding: i + 1,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type },
    })),
  });
  const pipeline = device.createComputePipeline({
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: "main" },
  });
  const req = device.createBuffer({
    size: 96,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const inBuffer = buffer(input, "exact.in");
  const out = buffer(outWords * 4, "exact.out");
  const bindGroup = device.createBindGroup({
    layout,
    entries: [req, inBuffer, out].map((b, i) => ({ binding: i + 1, resource: { buffer: b } })),
  });
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(Math.ceil(input.length / 64)); // WG
  pass.end();
  device.queue.submit([encoder.finish()]);
  const result = await readU32(gpu, out, 0, outWords);
  for (const b of [req, inBuffer, out]) b.destroy();
  return result;
}

gpuTest(
  "the kernels' exp_weight() gives expWeight()'s bits (2^20 inputs in [-23, 0])",
  async () => {
    const n = 1 << 20;
    const d = new Float32Array(n);
    const next = rng(77);
    // Half in [-1, 0] (the fraction bits), half over the whole range and past its end.
    for (let i = 0; i < n; i++) d[i] = (next() - 1) * (i % 2 ? 11.5 : 0.5);
    const edges = [
      0,
      -0,
      -1e-30,
      -1e-9,
      -(2 ** -26),
      -Math.LN2,
      -1,
      -21.5,
      -21.99999,
      -22,
      -22.00001,
    ];
    d.set([...edges, -Infinity, NaN]);
    const main = `
@group(0) @binding(2) var<storage, read> d: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < arrayLength(&d)) {
    out[i] = exp_weight(d[i]);
  }
}`;
    const out = await runExact(main, new Uint32Array(d.buffer), n);
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const q = expWeight(d[i]);
      if (out[i] !== q) assert.fail(`exp_weight(${d[i]}): GPU ${out[i]}, CPU ${q}`);
      if (d[i] > EXP_WEIGHT_MIN_D) worst = Math.max(worst, Math.abs(q - Math.exp(d[i]) * 2 ** 31));
    }
    assert.equal(expWeight(0), 2 ** 31, "the top token weighs 2^31");
    assert.ok(worst < 64, `|expWeight(d) - exp(d) * 2^31| up to ${worst}`);
    console.log(`${n} inputs: identical; |expWeight(d) - exp(d) * 2^31| <= ${worst.toFixed(1)}`);
  },
);

gpuTest("the kernels' mul_frac24() is floor/ceil(a * b / 2^24), exactly", async () => {
  const n = 1 << 16;
  const input = new Uint32Array(3 * n);
  const next = rng(5);
  const cases: [number, bigint][] = [];
  for (let i = 0; i < n; i++) {
    const a = i < 4 ? [0, 1, 2 ** 24, 2 ** 24 - 1][i] : Math.floor((next() + 1) / 2 * 2 ** 24);
    const b = i < 8 ? [0n, 1n, (1n << 50n) - 1n, 1n << 24n][i % 4] : BigInt(
          Math.floor((next() + 1) / 2 * 2 ** 24),
        ) * (1n << 26n) + BigInt(Math.floor((next() + 1) / 2 * 2 ** 26));
    cases.push([a, b]);
    input.set([a, Number(b & 0xffffffffn), Number(b >> 32n)], 3 * i);
  }
  const main = `
@group(0) @binding(2) var<storage, read> abc: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (3u * i < arrayLength(&abc)) {
    let b = vec2<u32>(abc[3u * i + 1u], abc[3u * i + 2u]);
    let down = mul_frac24(abc[3u * i], b, false);
    let up = mul_frac24(abc[3u * i], b, true);
    out[4u * i] = down.x;
    out[4u * i + 1u] = down.y;
    out[4u * i + 2u] = up.x;
    out[4u * i + 3u] = up.y;
  }
}`;
  const out = await runExact(main, input, 4 * n);
  cases.forEach(([a, b], i) => {
    const product = BigInt(a) * b;
    const down = product >> 24n;
    const up = down + ((product & 0xffffffn) === 0n ? 0n : 1n);
    const gpuDown = BigInt(out[4 * i]) + (BigInt(out[4 * i + 1]) << 32n);
    const gpuUp = BigInt(out[4 * i + 2]) + (BigInt(out[4 * i + 3]) << 32n);
    assert.equal(gpuDown, down, `floor(${a} * ${b} / 2^24)`);
    assert.equal(gpuUp, up, `ceil(${a} * ${b} / 2^24)`);
    if (b < 1n << 50n) {
      assert.equal(mulFrac24(a, Number(b), false), Number(down), `CPU floor ${a} ${b}`);
      assert.equal(mulFrac24(a, Number(b), true), Number(up), `CPU ceil ${a} ${b}`);
    }
  });
});
