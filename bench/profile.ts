/**
 * Where a forward step's time goes: every dispatch of a prefill (or of decode steps) timed by the
 * GPU's own timestamps, summed by kernel, next to the wall time of the whole call. Needs the
 * adapter's `timestamp-query` feature (llvmpipe offers it).
 *
 * How: compute passes are recorded into a stand-in while the model encodes; when the stand-in
 * ends, each of its dispatches is replayed into the real encoder as its own pass with timestamp
 * writes at its beginning and end (same order, same pipelines and bind groups, so the same work;
 * the passes' own cost is in the wall time, not in the kernels' sums). Not a test.
 *
 *   ./bin/deno run --config deno.test.json -A --unstable-webgpu bench/profile.ts
 *     [--model default|real] [--tokens 512] [--decode 0] [--reps 2] [--dir D] [--batch N]
 *
 * `--model real`: two layers of Qwen3-30B-A3B shapes (32 experts; vocab 151936), written to a
 * temporary directory first (about a minute). `--dir D`: a model directory instead. `--batch N`:
 * then N sequences (8-token prompts) decode `--decode` tokens each at once, batched.
 */
import { parseArgs } from "node:util";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import { openSideBySide } from "./side_by_side.ts";
import { mulberry32 } from "../weights/fixture.ts";
import { QWEN3_30B_A3B, writeFixtureInChild } from "./decode.ts";
import { GREEDY } from "../src/sampling.ts";

/** Queries per query set (WebGPU's limit) and sets: 16 x 2048 timed dispatches between collects. */
const SET_QUERIES = 4096;
const MAX_QUERIES = 16 * SET_QUERIES;

/** The op being recorded (its name, set by the patched PreparedOp.record), for the labels. */
let currentOp = "";

/** Makes every prepared op name itself while it records (ops.ts's PreparedOp, reached through an
 * instance: it is not exported). */
function nameOps(anyOp: object): void {
  // deno-lint-ignore no-explicit-any
  const proto = Object.getPrototypeOf(anyOp) as any;
  for (const method of ["record", "recordIndirect"]) {
    const orig = proto[method];
    proto[method] = function (this: { name: string }, ...args: unknown[]) {
      currentOp = this.name;
      try {
        return orig.apply(this, args);
      } finally {
        currentOp = "";
      }
    };
  }
}

interface Timed {
  /** The op's name and its pipeline's label, shortened to the kernel and its constants. */
  kernel: string;
}

type Command =
  | { kind: "pipeline"; pipeline: GPUComputePipeline }
  | { kind: "bind"; index: number; group: GPUBindGroup | null; offsets?: number[] }
  | { kind: "dispatch"; x: number; y?: number; z?: number; op: string }
  | { kind: "indirect"; buffer: GPUBuffer; offset: number; op: string };

/** Shortens a pipeline label ("prelude+kernel|weights|bindings|{constants}") to what tells
 * kernels apart. */
function shortLabel(label: string): string {
  const [modules, weights, , constants] = label.split("|");
  const kernel = modules.split("+").pop()!;
  const c = constants && constants !== "{}" ? ` ${constants.replaceAll('"', "")}` : "";
  return `${kernel}${weights ? `[${weights}]` : ""}${c}`;
}

/** Installs the stand-in passes on GPUCommandEncoder; returns what reads the timestamps. */
function installProfiler(device: GPUDevice) {
  const sets: GPUQuerySet[] = [];
  const setOf = (i: number) =>
    sets[i] ??= device.createQuerySet({ type: "timestamp", count: SET_QUERIES });
  const resolve = device.createBuffer({
    size: MAX_QUERIES * 8,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({
    size: MAX_QUERIES * 8,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  let next = 0;
  /** What each query pair timed, by its first query's index / 2. */
  const timed = new Map<number, Timed>();
  /** Each encoder's query ranges (global indices, within one set each), resolved at finish. */
  const pending = new WeakMap<GPUCommandEncoder, { first: number; count: number }[]>();
  const begin = GPUCommandEncoder.prototype.beginComputePass;
  const finish = GPUCommandEncoder.prototype.finish;

  GPUCommandEncoder.prototype.beginComputePass = function (
    this: GPUCommandEncoder,
    desc?: GPUComputePassDescriptor,
  ): GPUComputePassEncoder {
    if (desc?.timestampWrites) return begin.call(this, desc);
    return standIn(this);
  };

  /** A pass that records its commands, then replays each dispatch in its own timed pass. */
  function standIn(enc: GPUCommandEncoder): GPUComputePassEncoder {
    const commands: Command[] = [];
    const stand = {
      setPipeline(pipeline: GPUComputePipeline) {
        commands.push({ kind: "pipeline", pipeline });
      },
      setBindGroup(index: number, group: GPUBindGroup | null, offsets?: number[]) {
        commands.push({ kind: "bind", index, group, offsets });
      },
      dispatchWorkgroups(x: number, y?: number, z?: number) {
        commands.push({ kind: "dispatch", x, y, z, op: currentOp });
      },
      dispatchWorkgroupsIndirect(buffer: GPUBuffer, offset: number) {
        commands.push({ kind: "indirect", buffer, offset, op: currentOp });
      },
      end() {
        let pipeline: GPUComputePipeline | null = null;
        const groups = new Map<number, { group: GPUBindGroup | null; offsets?: number[] }>();
        for (const c of commands) {
          if (c.kind === "pipeline") pipeline = c.pipeline;
          else if (c.kind === "bind") groups.set(c.index, c);
          else {
            // an encoder resolves its own ranges, each from a 256-byte boundary (32 queries) and
            // within one query set
            const ranges = pending.get(enc) ?? [];
            pending.set(enc, ranges);
            let range = ranges[ranges.length - 1];
            const setIndex = (q: number) => Math.floor(q / SET_QUERIES);
            if (
              range === undefined || range.first + range.count !== next ||
              setIndex(next) !== setIndex(range.first)
            ) {
              next = Math.ceil(next / 32) * 32;
              range = { first: next, count: 0 };
              ranges.push(range);
            }
            if (next + 2 > MAX_QUERIES) throw new Error("profile: more dispatches than queries");
            const q = next;
            next += 2;
            range.count += 2;
            const pass = begin.call(enc, {
              timestampWrites: {
                querySet: setOf(Math.floor(q / SET_QUERIES)),
                beginningOfPassWriteIndex: q % SET_QUERIES,
                endOfPassWriteIndex: q % SET_QUERIES + 1,
              },
            });
            pass.setPipeline(pipeline!);
            for (const [i, g] of groups) pass.setBindGroup(i, g.group, g.offsets ?? []);
            if (c.kind === "dispatch") pass.dispatchWorkgroups(c.x, c.y, c.z);
            else pass.dispatchWorkgroupsIndirect(c.buffer, c.offset);
            pass.end();
            timed.set(q / 2, { kernel: `${c.op} ${shortLabel(pipeline!.label)}` });
          }
        }
      },
    };
    return stand as unknown as GPUComputePassEncoder;
  }

  GPUCommandEncoder.prototype.finish = function (
    this: GPUCommandEncoder,
    desc?: GPUCommandBufferDescriptor,
  ): GPUCommandBuffer {
    for (const r of pending.get(this) ?? []) {
      const set = setOf(Math.floor(r.first / SET_QUERIES));
      this.resolveQuerySet(set, r.first % SET_QUERIES, r.count, resolve, r.first * 8);
    }
    return finish.call(this, desc);
  };

  return {
    /** Kernel times (ms) of everything timed since the last call, by kernel. */
    async collect(): Promise<Map<string, { ms: number; calls: number }>> {
      const n = next;
      const enc = device.createCommandEncoder();
      if (n > 0) enc.copyBufferToBuffer(resolve, 0, read, 0, n * 8);
      device.queue.submit([enc.finish()]);
      const out = new Map<string, { ms: number; calls: number }>();
      if (n === 0) return out;
      await read.mapAsync(GPUMapMode.READ, 0, n * 8);
      const ts = new BigUint64Array(read.getMappedRange(0, n * 8).slice(0));
      read.unmap();
      for (const [i, t] of timed) {
        const k = t.kernel;
        const e = out.get(k) ?? { ms: 0, calls: 0 };
        e.ms += Number(ts[2 * i + 1] - ts[2 * i]) / 1e6;
        e.calls++;
        out.set(k, e);
      }
      next = 0;
      timed.clear();
      return out;
    },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string", default: "default" },
      tokens: { type: "string", default: "512" },
      decode: { type: "string", default: "0" },
      reps: { type: "string", default: "2" },
      dir: { type: "string" },
      batch: { type: "string", default: "0" },
    },
    strict: true,
  });
  const tokens = Number(values.tokens);
  const decode = Number(values.decode);
  const reps = Number(values.reps);
  const batch = Number(values.batch);
  if (values.model !== "default" && values.model !== "real") {
    throw new RangeError("--model: default or real");
  }
  let dir = values.dir ?? DEFAULT_MODEL_DIR;
  let tmp: string | null = null;
  if (values.model === "real" && values.dir === undefined) {
    tmp = await Deno.makeTempDir({ prefix: "moe-profile-" });
    dir = `${tmp}/real`;
    console.error("writing the real-shape fixture ...");
    await writeFixtureInChild(dir, { ...QWEN3_30B_A3B, experts: 32 });
  }
  try {
    const side = await openSideBySide(dir, [{
      maxContext: tokens + decode + 1,
      ...(batch > 1 ? { maxSequences: batch } : {}),
    }]);
    try {
      const gpu = side.gpu;
      if (!gpu.features.includes("timestamp-query")) {
        throw new Error("the adapter does not offer timestamp-query");
      }
      const model = side.models[0];
      const c = side.opened.weights.config;
      const rand = mulberry32(tokens);
      const prompt = Array.from({ length: tokens }, () => Math.floor(rand() * c.vocabSize));
      // an untimed run compiles the pipelines
      const warm = model.newSession();
      await warm.forward(prompt, { lastOnly: true });
      warm.free();
      // deno-lint-ignore no-explicit-any
      nameOps((model as any).outputOps[0]);
      const prof = installProfiler(gpu.device);
      for (let rep = 0; rep < reps; rep++) {
        const s = model.newSession();
        const t0 = performance.now();
        const logits = await s.forward(prompt, { lastOnly: true });
        const prefillMs = performance.now() - t0;
        report(`prefill ${tokens} tokens`, prefillMs, await prof.collect());
        if (decode > 0) {
          let id = argmax(logits[logits.length - 1]);
          const t1 = performance.now();
          for (let i = 0; i < decode; i++) {
            const l = await s.forward([id], { lastOnly: true });
            id = argmax(l[0]);
          }
          report(`${decode} decode steps`, performance.now() - t1, await prof.collect());
        }
        s.free();
        if (batch > 0) {
          // `batch` sequences of 8-token prompts decoding at once through the batched loop
          const sessions = Array.from({ length: batch }, () => model.newSession());
          const t2 = performance.now();
          const results = await Promise.all(sessions.map((b, i) =>
            b.decode(
              {
                feed: prompt.slice(i * 8, i * 8 + 8),
                maxTokens: Math.max(decode, 1),
                sampling: GREEDY,
                eosIds: [],
              },
              () => undefined,
            )
          ));
          for (const b of sessions) b.free();
          const n = results.reduce((a, r) => a + r.stats.tokens, 0);
          report(
            `${batch} sequences decoding together (prompts prefilled together), ${n} tokens`,
            performance.now() - t2,
            await prof.collect(),
          );
        }
      }
    } finally {
      side.close();
    }
  } finally {
    if (tmp) Deno.removeSync(tmp, { recursive: true });
  }
}

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

function report(
  what: string,
  wallMs: number,
  byKernel: Map<string, { ms: number; calls: number }>,
) {
  const rows = [...byKernel].sort((a, b) => b[1].ms - a[1].ms);
  const sum = rows.reduce((s, [, e]) => s + e.ms, 0);
  console.log(
    `\n${what}: wall ${wallMs.toFixed(1)} ms, kernels ${sum.toFixed(1)} ms (${
      (100 * sum / wallMs).toFixed(1)
    }% of wall; the rest: encoding, submits, readbacks, the split passes)`,
  );
  console.log("| kernel | calls | ms | share |\n| --- | --- | --- | --- |");
  for (const [k, e] of rows) {
    console.log(`| ${k} | ${e.calls} | ${e.ms.toFixed(2)} | ${(100 * e.ms / sum).toFixed(1)}% |`);
  }
}

if (import.meta.main) await main();
