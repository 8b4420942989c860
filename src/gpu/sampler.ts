/**
 * Next-token sampling on the GPU: the algorithm of src/sampling.ts (its CPU reference, which
 * documents it), so that decode steps can follow one another without the CPU. The kernels are
 * kernels/sample_*.wgsl, one workgroup each for the filters and the draw, each composed after
 * kernels/sample_common.wgsl (the request, the kept set, the exact arithmetic they share). They
 * compute the CPU's bits (weights and sums are integers), so they pick the CPU's token.
 *
 * Per sequence: `ids` (u32 [capacity], the sequence's tokens; the sampled token of a step goes to
 * ids[kv_len]), `params` (the request, a uniform written by writeRequest) and `state` (u32: end,
 * the sequence's length once it ended, NONE before). A step's ops (Step uniform: kv_len = len,
 * the position sampled) read logits row 0 and ids[0..len), write ids[len] and maybe state.end.
 *
 * The ops of one request, recorded in order:
 *   penalties (repetition/presence/frequency != neutral): sample_counts (one invocation per
 *     position of the capacity), sample_penalize (one per token) -> x; otherwise x = logits row 0;
 *   temperature 0: sample_argmax (one workgroup) -> ids[len], state: the greedy path, one dispatch;
 *   else: sample_topk (M and the top_k cut, one workgroup), sample_topp if top_p < 1 (one
 *     workgroup), sample_draw (min_p, temperature, the draw; one workgroup) -> ids[len], state;
 *     the cuts by radix select, a byte of the logit's order key a pass (GpuSamplerOptions).
 * Scratch (x, counts, qe, sel) belongs to the sampler and is shared by all sequences: steps run one
 * at a time.
 */
import { seedKey } from "../philox.ts";
import {
  checkSamplingParams,
  hasPenalties,
  minWeight,
  type SamplingParams,
  seedOf,
  topKActive,
  topP24,
  topPActive,
} from "../sampling.ts";
import type { Gpu } from "./device.ts";
import type { Ops } from "./ops.ts";
import type { Op } from "./ops_api.ts";
import { type BindingKind, Shaders } from "./shader.ts";

/** The prelude of every sampler kernel: kernels/sample_common.wgsl. */
const SAMPLE_PRELUDE = ["sample_common"];
/** Most EOS ids a request may give (sample_common.wgsl's Request.eos holds 2 x vec4<u32>). */
export const MAX_EOS = 8;
/** state.end of a sequence that has not ended. */
export const NONE = 0xffffffff;

/** llvmpipe ends a shader invocation after this many loop iterations in total (gallivm's
 * LP_MAX_TGSI_LOOP_ITERATIONS, as in src/gpu/ops.ts), silently. */
const LLVMPIPE_LOOP_LIMIT = 65535;
/** Invocations of the one-workgroup kernels (WG of sample_argmax/topk/topp/draw.wgsl). */
const WG_SELECT = 256;
/** Passes over an invocation's share of the vocabulary in sample_topp.wgsl, the busiest kernel
 * (sample_topk.wgsl makes as many): weights and Z, 4 radix passes (32 bisection steps in the
 * baseline), the ties, the walk of a chunk. */
const SELECT_PASSES = { radix: 7, bisection: 35 };
/** Its other loop iterations: tree reductions of log2(WG) steps (at most 35; 3 with the radix
 * select), invocation 0's scan of WG chunk sums, with the radix select its 4 walks of the 256
 * buckets, and one more per loop entered (about 80). */
const SELECT_OVERHEAD = {
  radix: 3 * Math.log2(WG_SELECT) + WG_SELECT + 4 * 256 + 80,
  bisection: 35 * Math.log2(WG_SELECT) + WG_SELECT + 80,
};
/** Workgroup size of the per-position and per-token kernels (sample_counts, sample_penalize). */
const WG_ELEMENTWISE = 64;
/** WebGPU's default maxComputeWorkgroupsPerDimension: the elementwise kernels are 1-D. */
const MAX_GROUPS_PER_DIM = 65535;
/** Size of sample_common.wgsl's struct Request: 16 scalars, then 2 x vec4<u32> of EOS ids. */
const REQUEST_BYTES = 96;
/** Sizes of sample_common.wgsl's struct Sel (M, cut key, cut index, pad) and of a sequence's
 * state (end, pad). */
const SEL_BYTES = 16;
const STATE_BYTES = 16;
/** Buffers are sized in whole 16-byte words. */
const BUFFER_ALIGN = 16;

/** A sampler or request the kernels cannot handle. */
export class SamplerConfigError extends Error {
  override name = "SamplerConfigError";
  constructor(detail: string) {
    super(`GpuSampler: ${detail}`);
  }
}

/** One request of a sequence. */
export interface SamplerRequest {
  /** The request's sampling parameters (seed set unless temperature is 0). */
  sampling: SamplingParams;
  /** Position of the request's first generated token (the prompt is ids[0..genStart)). */
  genStart: number;
  /** The sequence ends once position maxEnd - 1 holds a sampled token (at most the capacity). */
  maxEnd: number;
  /** Ids that end the sequence when sampled (at most MAX_EOS). */
  eosIds: number[];
}

/** A sequence's GPU buffers. */
export interface SamplerSequence {
  /** u32 [capacity]: the tokens (STORAGE | COPY_SRC | COPY_DST), a buffer of the sequence's own or
   * its range of a shared one (idsOffset bytes in). */
  readonly ids: GPUBuffer;
  readonly idsOffset: number;
  /** Whether createSequence made `ids` (then destroySequence destroys it). */
  readonly ownsIds: boolean;
  /** The request's parameters (a uniform, written by writeRequest). */
  readonly params: GPUBuffer;
  /** u32 [4]: end (the sequence's length once it ended, NONE before), then unused. */
  readonly state: GPUBuffer;
  readonly capacity: number;
}

/** A prepared single dispatch: recording allocates nothing. */
class Dispatch implements Op {
  constructor(
    readonly name: string,
    private pipeline: GPUComputePipeline,
    private bindGroup: GPUBindGroup,
    private groups: number,
  ) {}

  record(pass: GPUComputePassEncoder): void {
    pass.setPipeline(this.pipeline);
    pass.setBindGroup(0, this.bindGroup);
    pass.dispatchWorkgroups(this.groups);
  }
}

/** An upper bound on the loop iterations of one invocation of any sampler kernel at `vocab`
 * tokens (5,542 at 151936; the bisection baseline's 21,406): llvmpipe stops an invocation
 * silently past LLVMPIPE_LOOP_LIMIT. */
export function samplerLoopIterations(vocab: number, radixSelect = true): number {
  const way = radixSelect ? "radix" : "bisection";
  return SELECT_PASSES[way] * Math.ceil(vocab / WG_SELECT) + SELECT_OVERHEAD[way];
}

/** The binding of a sequence's ids: its capacity from its offset. */
function idsOf(seq: SamplerSequence): GPUBufferBinding {
  return { buffer: seq.ids, offset: seq.idsOffset, size: aligned(seq.capacity * 4) };
}

function aligned(bytes: number): number {
  return Math.max(BUFFER_ALIGN, Math.ceil(bytes / BUFFER_ALIGN) * BUFFER_ALIGN);
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/** The bytes of sample_common.wgsl's struct Request. */
function requestBytes(vocab: number, capacity: number, req: SamplerRequest): ArrayBuffer {
  const p = req.sampling;
  const [seedLo, seedHi] = seedKey(seedOf(p));
  const bytes = new ArrayBuffer(REQUEST_BYTES);
  const u = new Uint32Array(bytes);
  const f = new Float32Array(bytes);
  u.set([
    vocab,
    capacity,
    req.genStart,
    req.maxEnd,
    topKActive(p, vocab) ? p.topK : 0,
    topP24(p),
    seedLo,
    seedHi,
    req.eosIds.length,
    minWeight(p),
  ]);
  const rep = Math.fround(p.repetitionPenalty);
  // Float32Array stores round to f32: the values src/sampling.ts computes with.
  f.set([
    p.temperature > 0 ? 1 / p.temperature : 0,
    rep,
    1 / rep,
    p.presencePenalty,
    p.frequencyPenalty,
    0, // zero
  ], 10);
  u.set(req.eosIds, 16);
  return bytes;
}

/** Kernel choices of a GpuSampler (benchmarks and tests select the baseline). */
export interface GpuSamplerOptions {
  /** The top_k and top_p cuts by radix select, a byte of the key a pass (default true; false:
   * bisection over its 32 bits, the baseline: about 3x the loop iterations). Same cuts either
   * way. */
  radixSelect?: boolean;
}

export class GpuSampler {
  private device: GPUDevice;
  private shaders: Shaders;
  /** Logits row 0, the first vocab f32 of the logits buffer. */
  private logitsRow: GPUBufferBinding;
  /** Scratch shared by all sequences: penalised logits, token counts, top_p weights, the cut. */
  private x: GPUBuffer;
  private counts: GPUBuffer;
  private qe: GPUBuffer;
  private sel: GPUBuffer;
  /** Each live sequence's prepared ops, by option set. */
  private prepared = new Map<SamplerSequence, Map<string, Op[]>>();

  /** Whether the top_k and top_p cuts are found by radix select (GpuSamplerOptions). */
  private radixSelect: boolean;

  constructor(
    gpu: Gpu,
    private stepOps: Ops,
    readonly vocab: number,
    logits: GPUBuffer,
    opts: GpuSamplerOptions = {},
  ) {
    this.radixSelect = opts.radixSelect ?? true;
    if (!(Number.isInteger(vocab) && vocab >= 2)) {
      throw new SamplerConfigError(`vocab must be an integer >= 2, got ${vocab}`);
    }
    if (Math.ceil(vocab / WG_ELEMENTWISE) > MAX_GROUPS_PER_DIM) {
      throw new SamplerConfigError(`vocab ${vocab} exceeds ${MAX_GROUPS_PER_DIM * WG_ELEMENTWISE}`);
    }
    const llvmpipe = /llvmpipe/i.test(gpu.adapterInfo.description ?? "");
    const iterations = samplerLoopIterations(vocab, this.radixSelect);
    if (llvmpipe && iterations > LLVMPIPE_LOOP_LIMIT) {
      throw new SamplerConfigError(
        `vocab ${vocab} needs ${iterations} loop iterations per invocation, ` +
          `past llvmpipe's limit of ${LLVMPIPE_LOOP_LIMIT}`,
      );
    }
    if (logits.size < vocab * 4) {
      throw new SamplerConfigError(`logits buffer (${logits.size} B) holds less than one row`);
    }
    this.device = gpu.device;
    this.shaders = new Shaders(this.device);
    this.logitsRow = { buffer: logits, offset: 0, size: vocab * 4 };
    const scratch = (label: string, bytes: number) =>
      this.device.createBuffer({
        label: `sampler.${label}`,
        size: aligned(bytes),
        usage: GPUBufferUsage.STORAGE,
      });
    this.x = scratch("x", vocab * 4);
    this.counts = scratch("counts", vocab * 4); // zero, as sample_counts needs
    this.qe = scratch("qe", vocab * 4);
    this.sel = scratch("sel", SEL_BYTES);
  }

  /** A sequence of at most `capacity` tokens (prompt included); state.end = NONE. Its ids are a
   * buffer of its own, or `ids` (capacity u32 of a shared buffer at a 256-byte aligned offset). */
  createSequence(
    capacity: number,
    ids?: { buffer: GPUBuffer; offset: number },
  ): SamplerSequence {
    if (!(Number.isInteger(capacity) && capacity >= 1)) {
      throw new SamplerConfigError(`capacity must be an integer >= 1, got ${capacity}`);
    }
    if (Math.ceil(capacity / WG_ELEMENTWISE) > MAX_GROUPS_PER_DIM) {
      throw new SamplerConfigError(
        `capacity ${capacity} exceeds ${MAX_GROUPS_PER_DIM * WG_ELEMENTWISE}`,
      );
    }
    const own = ids === undefined;
    const idsBuffer = ids?.buffer ?? this.device.createBuffer({
      label: "sampler.ids",
      size: aligned(capacity * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const params = this.device.createBuffer({
      label: "sampler.params",
      size: REQUEST_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    const state = this.device.createBuffer({
      label: "sampler.state",
      size: STATE_BYTES,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      mappedAtCreation: true,
    });
    new Uint32Array(state.getMappedRange())[0] = NONE;
    state.unmap();
    const seq = {
      ids: idsBuffer,
      idsOffset: ids?.offset ?? 0,
      ownsIds: own,
      params,
      state,
      capacity,
    };
    this.prepared.set(seq, new Map());
    return seq;
  }

  /** Frees a sequence's buffers and its prepared ops. */
  destroySequence(seq: SamplerSequence): void {
    if (seq.ownsIds) seq.ids.destroy();
    seq.params.destroy();
    seq.state.destroy();
    this.prepared.delete(seq);
  }

  /** Starts a request on a sequence: writes its parameters and state.end = NONE (queue writes,
   * ordered before the next submission). The sequence's ids hold its prompt. */
  writeRequest(seq: SamplerSequence, req: SamplerRequest): void {
    checkSamplingParams(req.sampling);
    if (req.eosIds.length > MAX_EOS) {
      throw new SamplerConfigError(
        `${req.eosIds.length} EOS ids given, at most ${MAX_EOS} are supported`,
      );
    }
    const badEos = req.eosIds.find((id) => !isU32(id));
    if (badEos !== undefined) throw new SamplerConfigError(`EOS id ${badEos} is not a u32`);
    if (
      !(Number.isInteger(req.genStart) && Number.isInteger(req.maxEnd) && req.genStart >= 0 &&
        req.genStart < req.maxEnd && req.maxEnd <= seq.capacity)
    ) {
      throw new SamplerConfigError(
        `need 0 <= genStart (${req.genStart}) < maxEnd (${req.maxEnd}) <= capacity ` +
          `(${seq.capacity})`,
      );
    }
    const queue = this.device.queue;
    queue.writeBuffer(seq.params, 0, requestBytes(this.vocab, seq.capacity, req));
    queue.writeBuffer(seq.state, 0, Uint32Array.of(NONE));
  }

  /** The ops of one step of `seq` under `sampling` (the parameters given to writeRequest: they
   * decide which kernels run), to record in order in one compute pass. Prepared once per
   * sequence and option set. */
  ops(seq: SamplerSequence, sampling: SamplingParams): Op[] {
    const cache = this.prepared.get(seq);
    if (!cache) throw new SamplerConfigError("the sequence was destroyed or is not this sampler's");
    const greedy = sampling.temperature === 0;
    const penalties = hasPenalties(sampling);
    const topK = !greedy && topKActive(sampling, this.vocab);
    const topP = !greedy && topPActive(sampling);
    const key = `${greedy}|${penalties}|${topK}|${topP}`;
    let list = cache.get(key);
    if (!list) {
      list = this.prepare(seq, greedy, penalties, topP);
      cache.set(key, list);
    }
    return list;
  }

  private prepare(
    seq: SamplerSequence,
    greedy: boolean,
    penalties: boolean,
    topP: boolean,
  ): Op[] {
    const V = this.vocab;
    const list: Op[] = [];
    const x: GPUBuffer | GPUBufferBinding = penalties ? this.x : this.logitsRow;
    if (penalties) {
      list.push(
        this.dispatch(
          "sample_counts",
          ["read", "rw"],
          seq,
          [idsOf(seq), this.counts],
          Math.ceil(seq.capacity / WG_ELEMENTWISE),
        ),
        this.dispatch(
          "sample_penalize",
          ["read", "rw", "rw"],
          seq,
          [this.logitsRow, this.counts, this.x],
          Math.ceil(V / WG_ELEMENTWISE),
        ),
      );
    }
    if (greedy) {
      list.push(
        this.dispatch("sample_argmax", ["read", "rw", "rw"], seq, [x, idsOf(seq), seq.state]),
      );
      return list;
    }
    list.push(this.dispatch("sample_topk", ["read", "rw"], seq, [x, this.sel]));
    if (topP) {
      list.push(this.dispatch("sample_topp", ["read", "rw", "rw"], seq, [x, this.sel, this.qe]));
    }
    list.push(
      this.dispatch("sample_draw", ["read", "read", "rw", "rw"], seq, [
        x,
        this.sel,
        idsOf(seq),
        seq.state,
      ]),
    );
    return list;
  }

  /** A dispatch of kernels/<kernel>.wgsl (after SAMPLE_PRELUDE) bound to [step, seq.params,
   * ...buffers]. */
  private dispatch(
    kernel: string,
    storage: BindingKind[],
    seq: SamplerSequence,
    buffers: (GPUBuffer | GPUBufferBinding)[],
    groups = 1,
  ): Op {
    const bindings: BindingKind[] = ["uniform", "uniform", ...storage];
    const bindGroup = this.device.createBindGroup({
      label: kernel,
      layout: this.shaders.layout(bindings),
      entries: [this.stepOps.step, seq.params, ...buffers].map((b, binding) => ({
        binding,
        resource: b instanceof GPUBuffer ? { buffer: b } : b,
      })),
    });
    const radix = kernel === "sample_topk" || kernel === "sample_topp";
    const pipeline = this.shaders.pipeline({
      kernel,
      bindings,
      prelude: SAMPLE_PRELUDE,
      ...(radix ? { constants: { RADIX: this.radixSelect ? 1 : 0 } } : {}),
    });
    return new Dispatch(kernel, pipeline, bindGroup, groups);
  }

  /** Frees the scratch and every sequence not yet destroyed; nothing may be recorded after. */
  destroy(): void {
    for (const seq of [...this.prepared.keys()]) this.destroySequence(seq);
    for (const b of [this.x, this.counts, this.qe, this.sel]) b.destroy();
  }
}
