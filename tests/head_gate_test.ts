/**
 * The head gate (kernels/head_gate.wgsl): under an expert budget a decode step whose pass missed
 * an expert skips its lm_head, through indirect dispatch arguments the gate zeroes. The gate
 * alone (flags, sticky word), a matmul dispatched indirectly through it, and a budgeted model
 * decoding the same tokens and logits with and without it.
 */
import assert from "node:assert/strict";
import { buffer, gpu, gpuTest, ops, randomF32 } from "./kernel_harness.ts";
import { readF32, readU32 } from "../src/gpu/readback.ts";
import { stepRecord } from "../src/gpu/ops_api.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openModelDir } from "../src/model_dir.ts";
import { SMALL, writeFixture } from "../weights/fixture.ts";
import { GREEDY } from "../src/sampling.ts";
import { promptThenDecode } from "./_experts.ts";

const INDIRECT = GPUBufferUsage.STORAGE | GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_DST |
  GPUBufferUsage.COPY_SRC;

function argsBuffer(words: number[]): GPUBuffer {
  const b = gpu.device.createBuffer({ size: 64, usage: INDIRECT });
  gpu.device.queue.writeBuffer(b, 0, new Uint32Array(words));
  return b;
}

function submit(record: (pass: GPUComputePassEncoder) => void): void {
  gpu.device.queue.writeBuffer(ops.step, 0, stepRecord(1, 0));
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  record(pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
}

gpuTest(
  "headGate zeroes the dispatch arguments when a miss flag or the sticky word is set",
  async () => {
    const flags = new Uint32Array(6 * 8);
    const missed = buffer(flags);
    const base = [5, 1, 1, 7, 1, 1, 65535, 2, 1];
    const args = argsBuffer([...base, 0]);
    const gate = ops.headGate({ missed, flags: flags.length, args, argWords: base.length });
    submit((pass) => gate.record(pass, 1));
    assert.deepEqual([...await readU32(gpu, args, 0, 10)], [...base, 0], "no miss: untouched");
    flags[37] = 1;
    gpu.device.queue.writeBuffer(missed, 0, flags);
    submit((pass) => gate.record(pass, 1));
    assert.deepEqual([...await readU32(gpu, args, 0, 10)], [...Array(9).fill(0), 1], "a miss");
    // a later step of the batch: no miss of its own, but the sticky word cancels it too
    flags[37] = 0;
    gpu.device.queue.writeBuffer(missed, 0, flags);
    gpu.device.queue.writeBuffer(args, 0, new Uint32Array(base));
    submit((pass) => gate.record(pass, 1));
    assert.deepEqual([...await readU32(gpu, args, 0, 10)], [...Array(9).fill(0), 1], "sticky");
    // flags past `flags` are not read
    const wide = buffer(new Uint32Array(64).fill(1, 48));
    const args2 = argsBuffer([...base, 0]);
    const gate2 = ops.headGate({ missed: wide, flags: 48, args: args2, argWords: base.length });
    submit((pass) => gate2.record(pass, 1));
    assert.deepEqual([...await readU32(gpu, args2, 0, 10)], [...base, 0]);
    for (const b of [missed, args, wide, args2]) b.destroy();
  },
);

gpuTest(
  "a matmul dispatched through the gate's arguments runs as record() does, or not at all",
  async () => {
    const K = 64, N = 40;
    const x = buffer(randomF32(K, 1));
    const w = buffer(new Uint32Array(randomF32(N * K, 2).buffer));
    const mm = (out: GPUBuffer) =>
      ops.matmul({
        x,
        w: { buffer: w, dtype: "f32", offsetElems: 0 },
        out,
        K,
        N,
        outStride: N,
        outOffset: 0,
        accumulate: false,
      });
    const direct = buffer(N * 4), viaArgs = buffer(N * 4), skipped = buffer(new Float32Array(N));
    const missed = buffer(new Uint32Array(4));
    const [a, b, c] = [mm(direct), mm(viaArgs), mm(skipped)];
    const args = argsBuffer([...b.dispatchArgs(1), 0]);
    submit((pass) => {
      a.record(pass, 1);
      ops.headGate({ missed, flags: 4, args, argWords: 3 }).record(pass, 1);
      b.recordIndirect(pass, 1, args, 0);
    });
    assert.deepEqual(await readF32(gpu, viaArgs, 0, N), await readF32(gpu, direct, 0, N));
    const hit = buffer(new Uint32Array([0, 0, 1, 0]));
    const args2 = argsBuffer([...c.dispatchArgs(1), 0]);
    gpu.device.queue.writeBuffer(skipped, 0, new Float32Array(N).fill(-7));
    submit((pass) => {
      ops.headGate({ missed: hit, flags: 4, args: args2, argWords: 3 }).record(pass, 1);
      c.recordIndirect(pass, 1, args2, 0);
    });
    assert.ok((await readF32(gpu, skipped, 0, N)).every((v) => v === -7), "the gated matmul ran");
    for (const buf of [x, w, direct, viaArgs, skipped, missed, args, hit, args2]) buf.destroy();
  },
);

// Exact: passes miss and are redone. Masked with fewer slots a layer than top-k: routing picks
// absent experts with weight 0, whose flags are set but are no miss (the CPU knows; a gate on the
// GPU would not): such passes must keep their lm_head.
const CASES = [
  { mode: "exact", slots: SMALL.layers * SMALL.topK + 2, routerMasking: false },
  { mode: "router masking, 3 slots a layer", slots: SMALL.layers * 3, routerMasking: true },
];
for (const { mode, slots, routerMasking } of CASES) {
  gpuTest(
    `under a budget (${mode}) the gated model decodes the same tokens and logits as the ungated one`,
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "head_gate_" });
      try {
        await writeFixture(dir, SMALL);
        const opened = openModelDir(dir);
        const tokens: number[][] = [];
        const logits: Float32Array[][] = [];
        for (const headGate of [true, false]) {
          const model = await GpuModel.open(opened.weights, {
            gpu,
            maxContext: 64,
            expertSlots: slots,
            routerMasking,
            headGate,
          });
          try {
            const s = model.newSession();
            const r = await s.decode(
              { feed: [3, 14, 15, 92, 65], maxTokens: 24, sampling: GREEDY, eosIds: [] },
              () => undefined,
            );
            s.free();
            tokens.push(r.tokens);
            logits.push(await promptThenDecode(model, [3, 14, 15], [92, 65, 35]));
            if (!routerMasking) assert.ok(model.stats.reruns > 0, "the budget made steps miss");
          } finally {
            model.destroy();
          }
        }
        assert.deepEqual(tokens[0], tokens[1]);
        assert.equal(logits[0].length, logits[1].length);
        logits[0].forEach((row, i) => assert.deepEqual(row, logits[1][i], `row ${i}`));
        opened.close();
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
}
