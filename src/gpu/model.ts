/**
 * The Qwen3-MoE forward pass on WebGPU. Resident weights (embedding table, attention, norms,
 * routers, final norm, lm_head) are uploaded once; experts live in an ExpertPool reached through a
 * GPU-side slot table; the next token is sampled on the GPU (src/gpu/sampler.ts) into the
 * sequence's token ids, from which the next step gathers its embedding row. A decode step
 * therefore needs nothing from the CPU, and the decode loop (src/gpu/decode_loop.ts) decides how
 * many steps to encode per submission and when to read back.
 *
 * Legend: T tokens in a step, D hidden, V vocab, Hq/Hkv heads, Dh head dim, E experts, K top-k,
 * I expert intermediate, L layers, N decode steps in a batch.
 */
import type { LanguageModel, ModelConfig, ModelWeights, SessionOptions } from "../types.ts";
import type { Op, WeightRef } from "./ops_api.ts";
import type { SamplingParams } from "../sampling.ts";
import { Ops } from "./ops.ts";
import { readU32 } from "./readback.ts";
import { type Gpu, openGpu } from "./device.ts";
import { toFloat32 } from "../dtype.ts";
import { ExpertPool, fittingExpertSlots } from "./expert_pool.ts";
import { ropeTable } from "../rope.ts";
import { Residency } from "./residency.ts";
import {
  CheckpointExperts,
  ExpertBudgetError,
  ExpertCache,
  type ExpertSource,
} from "./expert_cache.ts";
import { type EvictionPolicy, LruPolicy } from "../experts/policy.ts";
import {
  align4,
  DTYPES,
  type GpuLayer,
  type RowChunk,
  uploadF32,
  uploadLayer,
  uploadVocabMatrices,
} from "./resident.ts";
import { GpuSampler, type SamplerRequest } from "./sampler.ts";
import type { Sequence } from "./sequence.ts";
import {
  type Batch,
  type BatchResult,
  type ForwardHost,
  MAX_STEPS_PER_BATCH,
  type StepStats,
} from "./host.ts";
import { ContextOverflowError, GpuSession } from "./session.ts";

export { ContextOverflowError, GpuSession };
export type { StepStats };

/** Tokens per forward step; longer prompts are prefilled in chunks of this many. */
export const DEFAULT_MAX_BATCH = 64;
/** Default context when the caller does not ask for one (the config's maximum can be huge). */
export const DEFAULT_MAX_CONTEXT = 4096;

export interface GpuModelOptions {
  gpu?: Gpu;
  maxContext?: number;
  maxBatch?: number;
  /** GPU slots for experts (default: every expert of every layer, loaded at open). */
  expertSlots?: number;
  /** Where expert records come from (default: the checkpoint's own tensors). */
  expertSource?: ExpertSource;
  /** Eviction policy of the expert cache (default LRU). */
  policy?: EvictionPolicy<number>;
  /** Load the experts that the optimistic pass flagged in later layers along with a miss. */
  prefetch?: boolean;
  /** Sessions route among resident experts only unless they ask otherwise (approximate). */
  routerMasking?: boolean;
  /**
   * The naive design, kept as a baseline for benchmarks: every step waits for each layer's
   * routing on the CPU (one readback per layer) before running its experts.
   */
  perLayerRouting?: boolean;
  /** Steps per readback sessions use unless a request says otherwise (default: adaptive). */
  stepsPerReadback?: number;
}

/** Expert uploads between queue flushes when loading all experts (bounds staging memory). */
const UPLOADS_PER_FLUSH = 16;

/** mapAsync offsets must be multiples of 8; keep staging regions generously aligned. */
const STAGING_ALIGN = 256;
/** Bytes of one Step uniform record (n_tokens, pos0, kv_len, pad). */
const STEP_RECORD_BYTES = 16;
/** Batches that may be in flight at once (submitted, not yet read): one read, one queued, one
 * being encoded. Each has its own step table region and staging buffer. */
const RING = 3;
/** The sampler's end flag when the sequence has not ended. */
const NO_END = 0xffffffff;

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Activations of one step, shared by all sessions (steps run one at a time). */
interface Activations {
  x: GPUBuffer; // [T, D] residual stream
  xn: GPUBuffer; // [T, D] normed
  q: GPUBuffer; // [T, Hq*Dh]
  k: GPUBuffer; // [T, Hkv*Dh]
  v: GPUBuffer; // [T, Hkv*Dh]
  att: GPUBuffer; // [T, Hq*Dh]
  routerLogits: GPUBuffer; // [T, E]
  idx: GPUBuffer[]; // per layer: u32 [T, K] routed experts
  weights: GPUBuffer; // [T, K]
  h: GPUBuffer; // [T*K, I]
  y: GPUBuffer; // [T*K, D]
  snap: GPUBuffer[]; // per layer: [max(T, 2N), D] residual at the layer's start (budgeted runs)
  xLast: GPUBuffer; // [1, D] last row of xn
  logits: GPUBuffer; // [T, V]
  staging: GPUBuffer; // MAP_READ: logits | routing [L, T, K] | missed [L, E]
}

/** State of a prompt between the stages of prefillByLayer (token-major, f32 unless noted). */
interface PromptBuffers {
  tokens: number;
  x: GPUBuffer; // [T, D]
  xn: GPUBuffer; // [T, D]
  idx: GPUBuffer; // u32 [T, K]
  weights: GPUBuffer; // [T, K]
  y: GPUBuffer; // [T*K, D]
}

/** What one logits readback brings: logits rows, every layer's routing, and the miss flags. */
interface Readback {
  logits: Float32Array[];
  routing: Uint32Array; // [L, maxBatch * K], rows of the step first
  missed: Uint32Array; // [L, E]
}

/** One forward inside a batch: T tokens at pos0, from layer `from` (a rerun starts later). */
interface ForwardRecord {
  T: number;
  pos0: number;
  from: number;
  /** Row of the snapshot buffers this forward writes (and, from > 0, restores) under a budget. */
  snapRow: number;
  /** Whether the forward ends with the head and the sampler (the last of a prefill, every step). */
  sample: boolean;
  /** Where its routing [L, T*K] goes in the routing log (u32 index). */
  routeAt: number;
  /** Row of the miss log [N, L*E] (decode steps under a budget), else -1. */
  missRow: number;
}

/** The readback buffers of one ring slot and where each part lives in them. */
interface Slot {
  stepTable: GPUBuffer; // [records, 4] u32 Step records, copied to the Step uniform per forward
  routeLog: GPUBuffer; // u32 [routing of every forward of the batch]
  missLog: GPUBuffer | null; // u32 [N, L*E] (budgeted models only)
  staging: GPUBuffer; // MAP_READ: end | tokens | routing | missed
  /** Capacity in forwards and in routed (token, layer, k) entries. */
  records: number;
  routeWords: number;
}

/** A Batch as the model built it. */
interface ModelBatch extends Batch {
  records: ForwardRecord[];
  slot: Slot;
  commands: GPUCommandBuffer | null;
  /** The session asked for router masking / the batch was recorded with the mask on. */
  masked: boolean;
  masking: boolean;
  /** Staging layout (bytes): end at 0, tokens at 4, routing at routeOffset, missed at missOffset. */
  routeOffset: number;
  missOffset: number;
  readBytes: number;
}

export class GpuModel implements LanguageModel, ForwardHost {
  readonly maxContext: number;
  readonly maxBatch: number;
  readonly ops: Ops;
  readonly pool: ExpertPool;
  readonly cache: ExpertCache;
  readonly sampler: GpuSampler;
  /** Every expert resident: no routing ever needs the CPU. */
  readonly allResident: boolean;
  /** Steps per readback of sessions that do not choose (undefined: adaptive). */
  readonly stepsPerReadback: number | undefined;
  /**
   * Called with every layer's final routing of every step: experts [T*K] (token-major, each
   * token's top-k in descending weight). For routing studies; costs nothing when unset.
   */
  onRouting?: (layer: number, experts: Uint32Array) => void;
  readonly stats: StepStats = {
    steps: 0,
    readbacks: 0,
    submits: 0,
    reruns: 0,
    prefillRouted: 0,
    prefillLoads: 0,
    prefetchUseful: 0,
    prefetchMissed: 0,
    expertLoads: 0,
  };
  private layers: GpuLayer[];
  private vocab: { embed: RowChunk[]; lmHead: RowChunk[] };
  private finalNorm: GPUBuffer;
  private act: Activations;
  private rope: GPUBuffer;
  private attnInputs: Op[][];
  private routerOps: Op[][];
  /** The same with router masking (route among resident experts only) before top-k. */
  private maskedRouterOps: Op[][];
  private expertOps: Op[][];
  private combineOps: Op[];
  private finalNormOp: Op;
  private headAll: Op[];
  private headLast: Op[];
  private queue: Promise<unknown> = Promise.resolve();
  private prefetch: boolean;
  private routerMaskingDefault: boolean;
  private perLayerRouting: boolean;
  /** Sequences not in use by a session, and every one ever made (freed by destroy()). */
  private freeSeqs: Sequence[] = [];
  private allSeqs: Sequence[] = [];
  private prompt: PromptBuffers | null = null;
  /** Host-side staging of one step's Step uniform, made once. */
  private stepUniform = new Uint32Array(4);
  /** Readback ring of the decode loop (made on first use) and the next slot to use. */
  private slots: Slot[] = [];
  private nextSlot = 0;
  /** Whether open() made the device (then destroy() destroys it too). */
  private ownsGpu = false;
  /** What to load under a budget, and what the cache learns from each pass. */
  private res: Residency;
  private routingOffset: number;
  private missedOffset: number;

  private constructor(
    readonly gpu: Gpu,
    readonly weights: ModelWeights,
    opts: GpuModelOptions,
  ) {
    const c = weights.config;
    const device = gpu.device;
    this.maxContext = Math.min(opts.maxContext ?? DEFAULT_MAX_CONTEXT, c.maxPositionEmbeddings);
    this.maxBatch = Math.min(opts.maxBatch ?? DEFAULT_MAX_BATCH, this.maxContext);
    this.ops = new Ops(gpu);
    this.prefetch = opts.prefetch ?? true;
    this.routerMaskingDefault = opts.routerMasking ?? false;
    this.perLayerRouting = opts.perLayerRouting ?? false;
    this.stepsPerReadback = opts.stepsPerReadback;
    const T = this.maxBatch;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh, numLayers: L } = c;
    const { numExperts: E, topK: K, moeIntermediateSize: I, vocabSize: V } = c;

    // resident weights
    this.layers = weights.layers.map((lw, l) => uploadLayer(device, lw, l));
    const finalNorm = uploadF32(device, toFloat32(weights.finalNorm), "final_norm");
    this.finalNorm = finalNorm;
    this.vocab = uploadVocabMatrices(device, weights.embed, weights.lmHead, gpu);
    this.rope = uploadF32(device, ropeTable(this.maxContext, Dh, c.ropeTheta), "rope_table");

    // experts: a pool of slots, filled up front when every expert fits, else lazily
    const total = L * E;
    const slots = Math.min(opts.expertSlots ?? total, total);
    if (slots < K) {
      throw new ExpertBudgetError(
        `${slots} expert slots cannot hold one layer's top-${K} experts; give at least ${K} ` +
          `slots (--expert-slots ${K})`,
      );
    }
    const expertDtype = DTYPES[weights.layers[0].expert(0).gate.dtype];
    this.pool = new ExpertPool(device, c, expertDtype, slots);
    this.cache = new ExpertCache(
      this.pool,
      opts.expertSource ?? new CheckpointExperts(weights),
      opts.policy ?? new LruPolicy<number>(),
    );
    this.allResident = slots === total;
    this.res = new Residency(c, this.cache, this.stats, this.prefetch, () => this.onRouting);

    const f32 = (n: number, label: string) =>
      device.createBuffer({
        label,
        size: align4(n * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
    this.routingOffset = alignUp(T * V * 4, STAGING_ALIGN);
    this.missedOffset = this.routingOffset + L * T * K * 4;
    const snapRows = Math.max(T, 2 * MAX_STEPS_PER_BATCH);
    this.act = {
      x: f32(T * D, "x"),
      xn: f32(T * D, "xn"),
      q: f32(T * Hq * Dh, "q"),
      k: f32(T * Hkv * Dh, "k"),
      v: f32(T * Hkv * Dh, "v"),
      att: f32(T * Hq * Dh, "att"),
      routerLogits: f32(T * E, "router_logits"),
      idx: this.layers.map((_, l) => f32(T * K, `topk_idx.${l}`)),
      weights: f32(T * K, "topk_weights"),
      h: f32(T * K * I, "experts_h"),
      y: f32(T * K * D, "experts_y"),
      snap: this.allResident ? [] : this.layers.map((_, l) => f32(snapRows * D, `snapshot.${l}`)),
      xLast: f32(D, "x_last"),
      logits: f32(T * V, "logits"),
      staging: device.createBuffer({
        label: "readback",
        size: this.missedOffset + L * E * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
    };
    this.sampler = new GpuSampler(gpu, this.ops, V, this.act.logits);
    this.attnInputs = this.layers.map((_, l) => this.prepareAttentionInputs(l));
    this.routerOps = this.layers.map((_, l) => this.prepareRouter(l, false));
    this.maskedRouterOps = this.layers.map((_, l) => this.prepareRouter(l, true));
    this.expertOps = this.layers.map((_, l) => this.prepareExperts(l));
    this.combineOps = this.layers.map(() =>
      this.ops.moeCombine({
        y: this.act.y,
        weights: this.act.weights,
        out: this.act.x,
        k: K,
        hidden: D,
      })
    );
    this.finalNormOp = this.ops.rmsnorm({
      x: this.act.x,
      weight: finalNorm,
      out: this.act.xn,
      dim: D,
      groups: 1,
      eps: c.rmsNormEps,
    });
    this.headAll = this.prepareHead(this.act.xn, V);
    this.headLast = this.prepareHead(this.act.xLast, V);
  }

  static async open(weights: ModelWeights, opts: GpuModelOptions = {}): Promise<GpuModel> {
    const ownsGpu = opts.gpu === undefined;
    const gpu = opts.gpu ?? await openGpu();
    if (opts.expertSlots === undefined) {
      const dtype = DTYPES[weights.layers[0].expert(0).gate.dtype];
      opts = { ...opts, expertSlots: await fittingExpertSlots(gpu.device, weights.config, dtype) };
    }
    const model = new GpuModel(gpu, weights, opts);
    model.ownsGpu = ownsGpu;
    if (model.allResident) await model.loadAllExperts();
    return model;
  }

  /** Uploads every expert, flushing the queue now and then so staging copies do not pile up. */
  private async loadAllExperts(): Promise<void> {
    const none = new Set<number>();
    const total = this.config.numLayers * this.config.numExperts;
    for (let key = 0; key < total; key++) {
      this.cache.load(key, 0, none);
      if ((key + 1) % UPLOADS_PER_FLUSH === 0) {
        this.gpu.device.queue.submit([]);
        await this.gpu.device.queue.onSubmittedWorkDone();
      }
    }
  }

  get config(): ModelConfig {
    return this.weights.config;
  }

  /** A sequence's buffers from the free list, or new ones (buffers and ops made once, reused). */
  acquireSequence(): Sequence {
    const free = this.freeSeqs.pop();
    if (free) return free;
    const c = this.config;
    const bytes = this.maxContext * c.numKvHeads * c.headDim * 4;
    const sampler = this.sampler.createSequence(this.maxContext + 1);
    const seq: Sequence = {
      kv: [],
      attention: [],
      sampler,
      embed: this.vocab.embed.map((chunk) =>
        this.ops.embed({
          ids: sampler.ids,
          table: chunk.w,
          first: chunk.first,
          rows: chunk.rows,
          hidden: c.hiddenSize,
          out: this.act.x,
        })
      ),
    };
    for (let l = 0; l < c.numLayers; l++) {
      const mk = (kind: string) =>
        this.gpu.device.createBuffer({
          label: `kv.${kind}.${l}`,
          size: bytes,
          usage: GPUBufferUsage.STORAGE,
        });
      const k = mk("k");
      const v = mk("v");
      seq.kv.push(k, v);
      seq.attention.push(this.prepareAttention(l, k, v));
    }
    this.allSeqs.push(seq);
    return seq;
  }

  /** Sequences allocated so far (sessions alive at once, at most). */
  get kvCachesMade(): number {
    return this.allSeqs.length;
  }

  releaseSequence(seq: Sequence): void {
    this.freeSeqs.push(seq);
  }

  /** A fresh sequence; routerMasking routes it among resident experts only (approximate). */
  newSession(opts: SessionOptions = {}): GpuSession {
    return new GpuSession(this, opts.routerMasking ?? this.routerMaskingDefault);
  }

  // ---- preparation (once) ----

  /** input norm -> q/k/v -> q/k norms -> RoPE. */
  private prepareAttentionInputs(l: number): Op[] {
    const c = this.config;
    const L = this.layers[l];
    const a = this.act;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh, rmsNormEps: eps } = c;
    const mm = (w: WeightRef, out: GPUBuffer, N: number) =>
      this.ops.matmul({
        x: a.xn,
        w,
        out,
        K: D,
        N,
        outStride: N,
        outOffset: 0,
        accumulate: false,
      });
    return [
      this.ops.rmsnorm({ x: a.x, weight: L.inputNorm, out: a.xn, dim: D, groups: 1, eps }),
      mm(L.q, a.q, Hq * Dh),
      mm(L.k, a.k, Hkv * Dh),
      mm(L.v, a.v, Hkv * Dh),
      this.ops.rmsnorm({ x: a.q, weight: L.qNorm, out: a.q, dim: Dh, groups: Hq, eps }),
      this.ops.rmsnorm({ x: a.k, weight: L.kNorm, out: a.k, dim: Dh, groups: Hkv, eps }),
      this.ops.rope({ x: a.q, table: this.rope, heads: Hq, headDim: Dh }),
      this.ops.rope({ x: a.k, table: this.rope, heads: Hkv, headDim: Dh }),
    ];
  }

  /** Per sequence: KV store and attention over that sequence's cache, then o_proj + residual. */
  private prepareAttention(l: number, kCache: GPUBuffer, vCache: GPUBuffer): Op[] {
    const c = this.config;
    const a = this.act;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh } = c;
    return [
      this.ops.kvStore({ x: a.k, cache: kCache, width: Hkv * Dh }),
      this.ops.kvStore({ x: a.v, cache: vCache, width: Hkv * Dh }),
      this.ops.attention({
        q: a.q,
        kCache,
        vCache,
        out: a.att,
        numHeads: Hq,
        numKvHeads: Hkv,
        headDim: Dh,
        scale: 1 / Math.sqrt(Dh),
      }),
      // o_proj, added into the residual stream
      this.ops.matmul({
        x: a.att,
        w: this.layers[l].o,
        out: a.x,
        K: Hq * Dh,
        N: D,
        outStride: D,
        outOffset: 0,
        accumulate: true,
      }),
    ];
  }

  /** post-attention norm -> router logits -> (mask) -> softmax, top-k, renormalise. */
  private prepareRouter(l: number, masked: boolean): Op[] {
    const c = this.config;
    const a = this.act;
    const { hiddenSize: D, numExperts: E, topK: K } = c;
    return [
      this.ops.rmsnorm({
        x: a.x,
        weight: this.layers[l].postNorm,
        out: a.xn,
        dim: D,
        groups: 1,
        eps: c.rmsNormEps,
      }),
      this.ops.matmul({
        x: a.xn,
        w: this.layers[l].router,
        out: a.routerLogits,
        K: D,
        N: E,
        outStride: E,
        outOffset: 0,
        accumulate: false,
      }),
      ...(masked
        ? [this.ops.routerMask({
          logits: a.routerLogits,
          slots: this.pool.slotTable,
          slotBase: l * E,
          numExperts: E,
          minResident: this.res.layerQuota,
        })]
        : []),
      this.ops.topk({
        logits: a.routerLogits,
        idx: a.idx[l],
        weights: a.weights,
        numExperts: E,
        k: K,
        normTopk: c.normTopkProb,
      }),
    ];
  }

  /** SwiGLU experts for every (token, choice) whose expert is resident, one op per pool. */
  private prepareExperts(l: number): Op[] {
    const c = this.config;
    const a = this.act;
    const common = {
      idx: a.idx[l],
      slots: this.pool.slotTable,
      slotBase: l * c.numExperts,
      poolDtype: this.pool.dtype,
      slotElems: this.pool.slotElems,
      k: c.topK,
      hidden: c.hiddenSize,
      inter: c.moeIntermediateSize,
    };
    const ops: Op[] = [];
    for (const p of this.pool.pools) {
      ops.push(this.ops.expertsGateUp({
        ...common,
        x: a.xn,
        missed: this.pool.missed,
        pool: p.buffer,
        poolFirstSlot: p.firstSlot,
        poolSlots: p.slots,
        h: a.h,
      }));
    }
    for (const p of this.pool.pools) {
      ops.push(this.ops.expertsDown({
        ...common,
        h: a.h,
        pool: p.buffer,
        poolFirstSlot: p.firstSlot,
        poolSlots: p.slots,
        y: a.y,
      }));
    }
    return ops;
  }

  /** lm_head over the rows of x, chunk by chunk into logits [T, V]. */
  private prepareHead(x: GPUBuffer, V: number): Op[] {
    return this.vocab.lmHead.map((chunk) =>
      this.ops.matmul({
        x,
        w: chunk.w,
        out: this.act.logits,
        K: this.config.hiddenSize,
        N: chunk.rows,
        outStride: V,
        outOffset: chunk.first,
        accumulate: false,
      })
    );
  }

  // ---- recording ----

  /**
   * Sets whether the pass being recorded routes among resident experts only: the session asked
   * for router masking and the cache is full (free slots are filled by normal loads first, so the
   * mask never leaves budget unused).
   */
  private startPass(masked: boolean): void {
    this.res.masking = masked && this.cache.isFull;
  }

  private router(l: number): Op[] {
    return this.res.masking ? this.maskedRouterOps[l] : this.routerOps[l];
  }

  /**
   * Layers [from, to): attention, router, experts, combine. Under a budget each layer first
   * snapshots the residual x into row `snapRow` of its snapshot buffer (a rerun restarts there).
   */
  private encodeLayers(
    enc: GPUCommandEncoder,
    seq: Sequence,
    from: number,
    to: number,
    T: number,
    snapRow = 0,
  ): void {
    const rowBytes = T * this.config.hiddenSize * 4;
    let pass: GPUComputePassEncoder | null = null;
    for (let l = from; l < to; l++) {
      if (!this.allResident) {
        pass?.end();
        enc.copyBufferToBuffer(this.act.x, 0, this.act.snap[l], snapRow * rowBytes, rowBytes);
        pass = null;
      }
      pass ??= enc.beginComputePass();
      for (const op of this.attnInputs[l]) op.record(pass, T);
      for (const op of seq.attention[l]) op.record(pass, T);
      for (const op of this.router(l)) op.record(pass, T);
      for (const op of this.expertOps[l]) op.record(pass, T);
      this.combineOps[l].record(pass, T);
    }
    pass?.end();
  }

  /** Final norm and lm_head into logits: every row, or only the last (into row 0). */
  private encodeLogits(enc: GPUCommandEncoder, T: number, lastOnly: boolean): void {
    const D = this.config.hiddenSize;
    let pass = enc.beginComputePass();
    this.finalNormOp.record(pass, T);
    if (lastOnly && T > 1) {
      pass.end();
      enc.copyBufferToBuffer(this.act.xn, (T - 1) * D * 4, this.act.xLast, 0, D * 4);
      pass = enc.beginComputePass();
      for (const op of this.headLast) op.record(pass, 1);
    } else {
      for (const op of this.headAll) op.record(pass, T);
    }
    pass.end();
  }

  /** Final norm and lm_head, then the logits rows copied for readback. */
  private encodeHead(enc: GPUCommandEncoder, T: number, lastOnly: boolean): number {
    this.encodeLogits(enc, T, lastOnly);
    const rows = lastOnly ? 1 : T;
    enc.copyBufferToBuffer(
      this.act.logits,
      0,
      this.act.staging,
      0,
      rows * this.config.vocabSize * 4,
    );
    return rows;
  }

  /** Copies every layer's routing and the miss flags next to the logits in the staging buffer. */
  private encodeRouting(enc: GPUCommandEncoder, T: number): void {
    const c = this.config;
    const perLayer = this.maxBatch * c.topK * 4;
    for (let l = 0; l < c.numLayers; l++) {
      enc.copyBufferToBuffer(
        this.act.idx[l],
        0,
        this.act.staging,
        this.routingOffset + l * perLayer,
        T * c.topK * 4,
      );
    }
    enc.copyBufferToBuffer(
      this.pool.missed,
      0,
      this.act.staging,
      this.missedOffset,
      c.numLayers * c.numExperts * 4,
    );
  }

  /** Submits, then maps the staging buffer once: the step's single GPU -> CPU round trip. */
  private async submitAndRead(enc: GPUCommandEncoder, logitRows: number): Promise<Readback> {
    const c = this.config;
    this.gpu.device.queue.submit([enc.finish()]);
    this.stats.submits++;
    const staging = this.act.staging;
    await staging.mapAsync(GPUMapMode.READ);
    this.stats.readbacks++;
    try {
      const V = c.vocabSize;
      const flat = new Float32Array(staging.getMappedRange(0, logitRows * V * 4));
      const logits: Float32Array[] = [];
      for (let r = 0; r < logitRows; r++) logits.push(flat.slice(r * V, (r + 1) * V));
      const routing = new Uint32Array(
        staging.getMappedRange(this.routingOffset, this.missedOffset - this.routingOffset),
      ).slice();
      const missed = new Uint32Array(
        staging.getMappedRange(this.missedOffset, c.numLayers * c.numExperts * 4),
      ).slice();
      return { logits, routing, missed };
    } finally {
      staging.unmap();
    }
  }

  // ---- one step ----

  /** The Step uniform for T tokens at positions pos0.. (ops_api.ts), written through the queue. */
  private writeStep(T: number, pos0: number): void {
    const u = this.stepUniform;
    u[0] = T;
    u[1] = pos0;
    u[2] = pos0 + T;
    this.gpu.device.queue.writeBuffer(this.ops.step, 0, u);
  }

  /** The sequence's token ids at positions pos0.. (the embedding gather reads them there). */
  private writeIds(seq: Sequence, ids: number[], pos0: number): void {
    this.gpu.device.queue.writeBuffer(seq.sampler.ids, pos0 * 4, Uint32Array.from(ids));
  }

  /** Embedding rows of ids[pos0 .. pos0 + T) into x (the Step uniform must be set). */
  private encodeEmbed(enc: GPUCommandEncoder, seq: Sequence, T: number): void {
    const pass = enc.beginComputePass();
    for (const op of seq.embed) op.record(pass, T);
    pass.end();
  }

  /** Runs steps one at a time (activations are shared between sessions). */
  exclusive<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Logits of ids at positions pos0.. (all rows, or only the last). Prompts longer than maxBatch
   * go in chunks; under a budget prompts go layer by layer (prefillByLayer).
   */
  async forward(
    seq: Sequence,
    masked: boolean,
    ids: number[],
    pos0: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]> {
    this.writeIds(seq, ids, pos0);
    if (this.layerwise(ids.length)) {
      await this.prefillByLayer(seq, masked, ids.length, pos0);
      return await this.headRows(ids.length, lastOnly);
    }
    const rows: Float32Array[] = [];
    const B = this.maxBatch;
    for (let i = 0; i < ids.length; i += B) {
      const n = Math.min(B, ids.length - i);
      const last = i + B >= ids.length;
      const r = await this.step(seq, masked, n, pos0 + i, lastOnly && last);
      if (!lastOnly || last) rows.push(...r);
    }
    return rows;
  }

  /**
   * Runs T tokens (ids already written) at positions pos0.. through every layer and returns
   * logits rows (all T, or only the last). With every expert resident this is one submission and
   * one readback. With a budget, decode runs optimistically with the slots it has and reruns from
   * the first layer that routed to an absent expert.
   */
  private async step(
    seq: Sequence,
    masked: boolean,
    T: number,
    pos0: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]> {
    const c = this.config;
    const device = this.gpu.device;
    this.stats.steps++;
    this.writeStep(T, pos0);
    if (this.allResident) {
      this.startPass(masked);
      const enc = device.createCommandEncoder({ label: "forward" });
      this.encodeEmbed(enc, seq, T);
      this.encodeLayers(enc, seq, 0, c.numLayers, T);
      const rows = this.encodeHead(enc, T, lastOnly);
      this.encodeRouting(enc, T);
      const r = await this.submitAndRead(enc, rows);
      this.res.countHits(r.routing, this.maxBatch, 0, c.numLayers, T);
      return r.logits;
    }
    return this.decodeOptimistic(seq, masked, T, lastOnly);
  }

  /** The optimistic decode of forward(): reruns from the first missed layer until none misses. */
  private async decodeOptimistic(
    seq: Sequence,
    masked: boolean,
    T: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]> {
    const c = this.config;
    const L = c.numLayers;
    const device = this.gpu.device;
    const stride = this.maxBatch;
    let from = 0;
    /** Layers below this are final and counted. */
    let counted = 0;
    this.res.guessed = new Set<number>();
    for (;;) {
      const enc = device.createCommandEncoder({ label: "decode" });
      if (from > 0) {
        // the residual stream as it entered layer `from` (the failed pass went on from there)
        enc.copyBufferToBuffer(this.act.snap[from], 0, this.act.x, 0, T * c.hiddenSize * 4);
      } else {
        this.encodeEmbed(enc, seq, T);
      }
      enc.clearBuffer(this.pool.missed);
      this.startPass(masked);
      this.encodeLayers(enc, seq, from, L, T);
      const rows = this.encodeHead(enc, T, lastOnly);
      this.encodeRouting(enc, T);
      const r = await this.submitAndRead(enc, rows);
      const l0 = this.res.firstMissedLayer(r.missed, from);
      if (l0 < 0) {
        this.res.countHits(r.routing, stride, counted, L, T);
        this.res.scoreGuesses(r.routing, stride, counted, L, T);
        return r.logits;
      }
      this.res.loadForMiss(r.routing, r.missed, stride, counted, l0, from, T);
      counted = l0 + 1;
      from = l0;
    }
  }

  /** With router masking, each layer's share of the expert slots (see Residency). */
  get layerQuota(): number {
    return this.res.layerQuota;
  }

  /** Whether a forward of T tokens goes layer by layer over the whole prompt (routing read
   * back per layer): prefill under a budget, and every step of the perLayerRouting baseline. */
  layerwise(T: number): boolean {
    return this.perLayerRouting || (!this.allResident && T > 1);
  }

  /**
   * Prefill under a budget (and every step with perLayerRouting), layer by layer over the whole
   * prompt (ids already written at pos0..), so each routed expert is loaded once per layer per
   * prompt whatever the budget. The prompt runs in chunks of maxBatch tokens whose state
   * (residual, normed input, routing, weights, expert outputs) waits in prompt-sized buffers
   * between stages:
   * 0. every chunk: embedding rows into the residual;
   * 1. every chunk: attention and router of layer l; then one readback of the layer's routing;
   * 2. the routed experts in groups that fit the slots; every chunk runs the group's pairs
   *    (pairs whose expert is absent are skipped, so its y fills up group by group);
   * 3. every chunk: the weighted sum into the residual.
   * The final residual stays in the prompt buffers (headRows or sampleAfterPrompt read it).
   */
  private async prefillByLayer(
    seq: Sequence,
    masked: boolean,
    T: number,
    pos0: number,
  ): Promise<void> {
    const c = this.config;
    const { hiddenSize: D, topK: K } = c;
    const chunks = this.chunks(T);
    const p = this.promptBuffers(T);
    this.stats.steps++;
    const a = this.act;
    const run = this.chunkRunner(pos0);
    for (const ch of chunks) run(ch, [], seq.embed, [[a.x, p.x, D]]);
    for (let l = 0; l < c.numLayers; l++) {
      this.startPass(masked);
      // 1. attention + router, chunk by chunk
      for (const ch of chunks) {
        run(ch, [[p.x, a.x, D]], [
          ...this.attnInputs[l],
          ...seq.attention[l],
          ...this.router(l),
        ], [[a.x, p.x, D], [a.xn, p.xn, D], [a.idx[l], p.idx, K], [a.weights, p.weights, K]]);
      }
      const idx = await readU32(this.gpu, p.idx, 0, T * K);
      this.stats.readbacks++;
      this.onRouting?.(l, idx);
      const now = this.res.tick();
      // 2. experts, group by group
      for (const group of this.res.prefillGroups(l, idx)) {
        this.res.loadGroup(l, group, now);
        for (const ch of chunks) {
          run(ch, [[p.xn, a.xn, D], [p.idx, a.idx[l], K], [p.y, a.y, K * D]], this.expertOps[l], [
            [a.y, p.y, K * D],
          ]);
        }
      }
      // 3. weighted sum into the residual
      for (const ch of chunks) {
        run(ch, [[p.x, a.x, D], [p.y, a.y, K * D], [p.weights, a.weights, K]], [
          this.combineOps[l],
        ], [[a.x, p.x, D]]);
      }
    }
  }

  /** The prompt's chunks of at most maxBatch tokens. */
  private chunks(T: number): { t0: number; n: number }[] {
    const chunks: { t0: number; n: number }[] = [];
    for (let t0 = 0; t0 < T; t0 += this.maxBatch) {
      chunks.push({ t0, n: Math.min(this.maxBatch, T - t0) });
    }
    return chunks;
  }

  /** One submission for a chunk of the prompt: Step uniform, copies in, ops, copies out. */
  private chunkRunner(pos0: number) {
    const device = this.gpu.device;
    return (
      ch: { t0: number; n: number },
      ins: [GPUBuffer, GPUBuffer, number][],
      ops: Op[],
      outs: [GPUBuffer, GPUBuffer, number][],
    ) => {
      this.writeStep(ch.n, pos0 + ch.t0);
      const enc = device.createCommandEncoder();
      for (const [from, to, width] of ins) {
        enc.copyBufferToBuffer(from, ch.t0 * width * 4, to, 0, ch.n * width * 4);
      }
      if (ops.length > 0) {
        const pass = enc.beginComputePass();
        for (const op of ops) op.record(pass, ch.n);
        pass.end();
      }
      for (const [from, to, width] of outs) {
        enc.copyBufferToBuffer(from, 0, to, ch.t0 * width * 4, ch.n * width * 4);
      }
      device.queue.submit([enc.finish()]);
      this.stats.submits++;
    };
  }

  /** Logits rows (every row, or the last) of the prompt prefillByLayer left in its buffers. */
  private async headRows(T: number, lastOnly: boolean): Promise<Float32Array[]> {
    const D = this.config.hiddenSize;
    const p = this.prompt!;
    const chunks = this.chunks(T);
    const run = this.chunkRunner(0);
    const rows: Float32Array[] = [];
    for (const ch of lastOnly ? chunks.slice(-1) : chunks) {
      run(ch, [[p.x, this.act.x, D]], [], []);
      const enc = this.gpu.device.createCommandEncoder({ label: "prefill.head" });
      const n = this.encodeHead(enc, ch.n, lastOnly);
      rows.push(...(await this.submitAndRead(enc, n)).logits);
    }
    return rows;
  }

  private destroyPromptBuffers(): void {
    const p = this.prompt;
    if (p) { for (const b of [p.x, p.xn, p.idx, p.weights, p.y]) b.destroy(); }
    this.prompt = null;
  }

  /** Prompt-sized buffers of prefillByLayer, grown on demand and kept. */
  private promptBuffers(T: number): PromptBuffers {
    if (this.prompt && this.prompt.tokens >= T) return this.prompt;
    this.destroyPromptBuffers();
    const { hiddenSize: D, topK: K } = this.config;
    const tokens = Math.max(T, this.maxBatch);
    const mk = (n: number, label: string) =>
      this.gpu.device.createBuffer({
        label: `prompt.${label}`,
        size: align4(n * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
    this.prompt = {
      tokens,
      x: mk(tokens * D, "x"),
      xn: mk(tokens * D, "xn"),
      idx: mk(tokens * K, "idx"),
      weights: mk(tokens * K, "weights"),
      y: mk(tokens * K * D, "y"),
    };
    return this.prompt;
  }

  // ---- the decode loop's batches (src/gpu/host.ts) ----

  setRequest(seq: Sequence, req: SamplerRequest): void {
    this.sampler.writeRequest(seq.sampler, req);
  }

  /** A ring slot with room for `records` forwards routing `routeWords` (token, layer, k) entries. */
  private slotFor(records: number, routeWords: number): Slot {
    const i = this.nextSlot;
    this.nextSlot = (this.nextSlot + 1) % RING;
    const old = this.slots[i];
    if (old && old.records >= records && old.routeWords >= routeWords) return old;
    if (old) {
      for (const b of [old.stepTable, old.routeLog, old.missLog, old.staging]) b?.destroy();
    }
    const c = this.config;
    const device = this.gpu.device;
    records = Math.max(records, old?.records ?? 0, MAX_STEPS_PER_BATCH);
    routeWords = Math.max(routeWords, old?.routeWords ?? 0);
    const LE = c.numLayers * c.numExperts;
    const missWords = this.allResident ? 0 : MAX_STEPS_PER_BATCH * LE;
    const slot: Slot = {
      records,
      routeWords,
      stepTable: device.createBuffer({
        label: `steps.${i}`,
        size: records * STEP_RECORD_BYTES,
        usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      }),
      routeLog: device.createBuffer({
        label: `routing_log.${i}`,
        size: align4(routeWords * 4),
        usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      }),
      missLog: missWords === 0 ? null : device.createBuffer({
        label: `miss_log.${i}`,
        size: missWords * 4,
        usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      }),
      staging: device.createBuffer({
        label: `batch_readback.${i}`,
        size: alignUp(4 * (records + 2), STAGING_ALIGN) + alignUp(routeWords * 4, STAGING_ALIGN) +
          missWords * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
    };
    this.slots[i] = slot;
    return slot;
  }

  /**
   * Encodes the forwards of a batch, each one: its Step record into the Step uniform, embedding
   * (or, for a rerun, the snapshot of its first layer), layers, then for sampling forwards the
   * head and the sampler; its routing (and under a budget its miss flags) into the logs. Then the
   * readback copies: end flag, sampled tokens, routing, misses.
   */
  private encodeBatch(
    seq: Sequence,
    masked: boolean,
    records: ForwardRecord[],
    first: number,
    count: number,
    steps: number,
    sampling: SamplingParams,
  ): ModelBatch {
    const c = this.config;
    const { hiddenSize: D, numLayers: L, topK: K, numExperts: E } = c;
    const device = this.gpu.device;
    const routeWords = records.reduce((n, r) => n + r.T * L * K, 0);
    const slot = this.slotFor(records.length, routeWords);
    const table = new Uint32Array(records.length * 4);
    records.forEach((r, i) => table.set([r.T, r.pos0, r.pos0 + r.T, 0], i * 4));
    device.queue.writeBuffer(slot.stepTable, 0, table);
    this.startPass(masked);
    const masking = this.res.masking;
    const samplerOps = this.sampler.ops(seq.sampler, sampling);
    const enc = device.createCommandEncoder({ label: "batch" });
    records.forEach((r, i) => {
      enc.copyBufferToBuffer(slot.stepTable, i * STEP_RECORD_BYTES, this.ops.step, 0, 16);
      if (r.from === 0) {
        this.encodeEmbed(enc, seq, r.T);
      } else if (r.from < L) {
        // a rerun: the residual as it entered layer `from` in the failed pass
        const rowBytes = r.T * D * 4;
        enc.copyBufferToBuffer(
          this.act.snap[r.from],
          r.snapRow * rowBytes,
          this.act.x,
          0,
          rowBytes,
        );
      } // (from === L: x already holds the residual, only the head runs)
      if (r.missRow >= 0) enc.clearBuffer(this.pool.missed);
      this.encodeLayers(enc, seq, r.from, L, r.T, r.snapRow);
      if (r.sample) {
        this.encodeLogits(enc, r.T, true);
        const pass = enc.beginComputePass();
        for (const op of samplerOps) op.record(pass, 1);
        pass.end();
      }
      for (let l = 0; l < L; l++) {
        const n = r.T * K;
        enc.copyBufferToBuffer(this.act.idx[l], 0, slot.routeLog, (r.routeAt + l * n) * 4, n * 4);
      }
      if (r.missRow >= 0) {
        enc.copyBufferToBuffer(
          this.pool.missed,
          0,
          slot.missLog!,
          r.missRow * L * E * 4,
          L * E * 4,
        );
      }
    });
    // readback: end flag | tokens | routing | missed
    const routeOffset = alignUp(4 * (count + 1), STAGING_ALIGN);
    const missOffset = routeOffset + alignUp(routeWords * 4, STAGING_ALIGN);
    const missRows = records.filter((r) => r.missRow >= 0).length;
    enc.copyBufferToBuffer(seq.sampler.state, 0, slot.staging, 0, 4);
    enc.copyBufferToBuffer(seq.sampler.ids, first * 4, slot.staging, 4, count * 4);
    enc.copyBufferToBuffer(slot.routeLog, 0, slot.staging, routeOffset, routeWords * 4);
    if (missRows > 0) {
      enc.copyBufferToBuffer(slot.missLog!, 0, slot.staging, missOffset, missRows * L * E * 4);
    }
    return {
      seq,
      first,
      count,
      steps,
      records,
      slot,
      masked,
      masking,
      commands: enc.finish(),
      routeOffset,
      missOffset,
      readBytes: missOffset + missRows * L * E * 4,
    };
  }

  async prefill(
    seq: Sequence,
    masked: boolean,
    ids: number[],
    pos0: number,
    sampling: SamplingParams,
  ): Promise<Batch> {
    const T = ids.length;
    const { numLayers: L, topK: K } = this.config;
    this.writeIds(seq, ids, pos0);
    let records: ForwardRecord[];
    if (this.layerwise(T)) {
      // layer by layer, then a forward of no layer: the last chunk's head and the sampler
      await this.prefillByLayer(seq, masked, T, pos0);
      const last = this.chunks(T).at(-1)!;
      const p = this.prompt!;
      this.chunkRunner(pos0)(last, [[p.x, this.act.x, this.config.hiddenSize]], [], []);
      records = [{
        T: last.n,
        pos0: pos0 + last.t0,
        from: L,
        snapRow: 0,
        sample: true,
        routeAt: 0,
        missRow: -1,
      }];
    } else {
      records = [];
      let routeAt = 0;
      const half = this.snapHalf();
      for (const ch of this.chunks(T)) {
        records.push({
          T: ch.n,
          pos0: pos0 + ch.t0,
          from: 0,
          snapRow: half,
          sample: ch.t0 + ch.n === T,
          routeAt,
          // (a budgeted model prefills one token this way: as a decode step, misses checked)
          missRow: this.allResident ? -1 : 0,
        });
        routeAt += ch.n * L * K;
      }
      this.stats.steps += records.length;
    }
    const b = this.encodeBatch(seq, masked, records, pos0 + T, 1, 0, sampling);
    this.submit(b);
    return b;
  }

  /**
   * First snapshot row of a batch being encoded: the half of the snapshot buffers that the last
   * submitted batch does not use, so a batch submitted behind one being read cannot overwrite the
   * rows a repair of that one restarts from.
   */
  private snapHalf(): number {
    return this.lastHalf === 0 ? MAX_STEPS_PER_BATCH : 0;
  }
  /** First snapshot row of the last submitted batch. */
  private lastHalf = 0;

  encodeSteps(
    seq: Sequence,
    masked: boolean,
    pos0: number,
    n: number,
    sampling: SamplingParams,
  ): Batch {
    if (n < 1 || n > MAX_STEPS_PER_BATCH) {
      throw new RangeError(`a batch has 1..${MAX_STEPS_PER_BATCH} steps, not ${n}`);
    }
    const { numLayers: L, topK: K } = this.config;
    const records: ForwardRecord[] = [];
    const half = this.snapHalf();
    for (let i = 0; i < n; i++) {
      records.push({
        T: 1,
        pos0: pos0 + i,
        from: 0,
        snapRow: half + i,
        sample: true,
        routeAt: i * L * K,
        missRow: this.allResident ? -1 : i,
      });
    }
    return this.encodeBatch(seq, masked, records, pos0 + 1, n, n, sampling);
  }

  submit(batch: Batch): void {
    const b = batch as ModelBatch;
    if (b.commands === null) throw new Error("batch submitted twice");
    this.gpu.device.queue.submit([b.commands]);
    this.lastHalf = b.records[0].snapRow < MAX_STEPS_PER_BATCH ? 0 : MAX_STEPS_PER_BATCH;
    b.commands = null;
    this.stats.submits++;
    this.stats.steps += b.steps;
  }

  async read(batch: Batch, meanwhile?: () => void): Promise<BatchResult> {
    const b = batch as ModelBatch;
    const { numLayers: L, topK: K, numExperts: E } = this.config;
    const staging = b.slot.staging;
    const mapped = staging.mapAsync(GPUMapMode.READ, 0, b.readBytes);
    meanwhile?.();
    await mapped;
    this.stats.readbacks++;
    let words: Uint32Array;
    try {
      words = new Uint32Array(staging.getMappedRange(0, b.readBytes)).slice();
    } finally {
      staging.unmap();
    }
    const end = words[0] === NO_END ? -1 : words[0];
    const tokens = Array.from(words.subarray(1, 1 + b.count));
    const route = words.subarray(b.routeOffset / 4);
    const miss = words.subarray(b.missOffset / 4);
    // the expert cache learns each forward's routing, up to the first real miss
    this.res.masking = b.masking;
    let invalidAt = -1;
    for (const [i, r] of b.records.entries()) {
      const routing = route.subarray(r.routeAt, r.routeAt + L * r.T * K);
      const l0 = r.missRow < 0 ? -1 : this.res.firstMissedLayer(miss, r.from, r.missRow * L * E);
      if (l0 < 0) {
        this.res.countHits(routing, r.T, r.from, L, r.T);
        this.res.scoreGuesses(routing, r.T, r.from, L, r.T);
        this.res.guessed = new Set();
        continue;
      }
      invalidAt = i;
      this.pendingMiss = {
        routing: routing.slice(),
        missed: miss.slice(r.missRow * L * E, (r.missRow + 1) * L * E),
        l0,
        from: r.from,
        record: r,
      };
      break;
    }
    return { tokens, end, invalidAt };
  }

  /** The miss read() found, kept for repair(). */
  private pendingMiss: {
    routing: Uint32Array;
    missed: Uint32Array;
    l0: number;
    from: number;
    record: ForwardRecord;
  } | null = null;

  repair(batch: Batch, result: BatchResult, sampling: SamplingParams): Batch {
    const b = batch as ModelBatch;
    const m = this.pendingMiss;
    if (m === null || result.invalidAt < 0) throw new Error("repair() without a miss to repair");
    this.pendingMiss = null;
    this.res.masking = b.masking;
    this.res.loadForMiss(m.routing, m.missed, 1, m.from, m.l0, m.from, 1);
    const r = m.record;
    const rerun: ForwardRecord = { ...r, from: m.l0, routeAt: 0, missRow: 0 };
    // the dropped steps ran on invalid tokens and may have set the end flag
    this.gpu.device.queue.writeBuffer(b.seq.sampler.state, 0, Uint32Array.of(NO_END));
    const out = this.encodeBatch(b.seq, b.masked, [rerun], r.pos0 + 1, 1, 0, sampling);
    this.submit(out);
    return out;
  }

  /** Frees every GPU buffer the model made (sessions free their own KV caches). */
  destroy(): void {
    this.pool.destroy();
    const a = this.act;
    const lm = this.vocab.lmHead.map((c) => c.w.buffer);
    const embed = this.vocab.embed.map((c) => c.w.buffer).filter((b) => !lm.includes(b));
    const buffers: GPUBuffer[] = [
      this.rope,
      this.finalNorm,
      ...lm,
      ...embed,
      ...this.layers.flatMap((l) => [
        l.inputNorm,
        l.q.buffer,
        l.k.buffer,
        l.v.buffer,
        l.o.buffer,
        l.qNorm,
        l.kNorm,
        l.postNorm,
        l.router.buffer,
      ]),
      a.x,
      a.xn,
      a.q,
      a.k,
      a.v,
      a.att,
      a.routerLogits,
      ...a.idx,
      a.weights,
      a.h,
      a.y,
      ...a.snap,
      a.xLast,
      a.logits,
      a.staging,
      ...this.slots.flatMap((s) => [s.stepTable, s.routeLog, s.staging]),
      ...this.slots.flatMap((s) => s.missLog ? [s.missLog] : []),
    ];
    for (const b of buffers) b.destroy();
    for (const seq of this.allSeqs) {
      for (const b of seq.kv) b.destroy();
      this.sampler.destroySequence(seq.sampler);
    }
    this.sampler.destroy();
    this.destroyPromptBuffers();
    this.ops.destroy();
    // a device this model opened goes with it (llvmpipe devices left to process exit each keep
    // threads alive until teardown)
    if (this.ownsGpu) this.gpu.device.destroy();
  }
}
