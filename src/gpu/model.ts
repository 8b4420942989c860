/**
 * The Qwen3-MoE forward pass on WebGPU. Resident weights (attention, norms, routers, final norm,
 * lm_head) are uploaded once; the embedding table stays in the mapped checkpoint and its rows are
 * gathered on the CPU; experts live in an ExpertPool reached through a GPU-side slot table.
 *
 * Legend: T tokens in a step, D hidden, V vocab, Hq/Hkv heads, Dh head dim, E experts, K top-k,
 * I expert intermediate.
 */
import type { LanguageModel, ModelConfig, ModelWeights, SessionOptions } from "../types.ts";
import type { Op, WeightRef } from "./ops_api.ts";
import { Ops } from "./ops.ts";
import { readU32 } from "./readback.ts";
import { type Gpu, openGpu } from "./device.ts";
import { toFloat32 } from "../dtype.ts";
import { ExpertPool, fittingExpertSlots } from "./expert_pool.ts";
import { ropeTable } from "../rope.ts";
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
  embedGather,
  type GpuLayer,
  uploadF32,
  uploadLayer,
  uploadLmHead,
} from "./resident.ts";
import { ContextOverflowError, GpuSession, type KvCache } from "./session.ts";

export { ContextOverflowError, GpuSession };

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
}

/** How often the GPU had to report back to the CPU, and what the expert cache did. */
export interface StepStats {
  steps: number;
  readbacks: number;
  /** Extra passes over layers caused by misses (0 when every routed expert was resident). */
  reruns: number;
  /** Prefill only: distinct (layer, expert) pairs routed, and experts loaded for them. */
  prefillRouted: number;
  prefillLoads: number;
  /** Speculative loads that the final routing used / loads whose layer missed without a guess. */
  prefetchUseful: number;
  prefetchMissed: number;
}

/** Expert uploads between queue flushes when loading all experts (bounds staging memory). */
const UPLOADS_PER_FLUSH = 16;

/** mapAsync offsets must be multiples of 8; keep staging regions generously aligned. */
const STAGING_ALIGN = 256;

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
  snap: GPUBuffer[]; // per layer: [T, D] residual at the layer's start (budgeted runs only)
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

/** What one readback brings: logits rows, every layer's routing, and the miss flags. */
interface Readback {
  logits: Float32Array[];
  routing: Uint32Array; // [L, maxBatch * K], rows of the step first
  missed: Uint32Array; // [L, E]
}

export class GpuModel implements LanguageModel {
  readonly maxContext: number;
  readonly maxBatch: number;
  readonly ops: Ops;
  readonly pool: ExpertPool;
  readonly cache: ExpertCache;
  /** Every expert resident: no routing ever needs the CPU. */
  readonly allResident: boolean;
  /**
   * Called with every layer's final routing of every step: experts [T*K] (token-major, each
   * token's top-k in descending weight). For routing studies; costs nothing when unset.
   */
  onRouting?: (layer: number, experts: Uint32Array) => void;
  readonly stats: StepStats = {
    steps: 0,
    readbacks: 0,
    reruns: 0,
    prefillRouted: 0,
    prefillLoads: 0,
    prefetchUseful: 0,
    prefetchMissed: 0,
  };
  private layers: GpuLayer[];
  private lmHead: { w: WeightRef; rows: number; first: number }[];
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
  private embedRow: (id: number) => Float32Array;
  private prefetch: boolean;
  private routerMaskingDefault: boolean;
  private perLayerRouting: boolean;
  /** KV caches not in use by a session, and every one ever made (freed by destroy()). */
  private freeKv: KvCache[] = [];
  private allKv: KvCache[] = [];
  private prompt: PromptBuffers | null = null;
  /** Host-side staging of one step, made once: the Step uniform and the embedding rows. */
  private stepUniform = new Uint32Array(4);
  private stepRows: Float32Array<ArrayBuffer>;
  /** Whether open() made the device (then destroy() destroys it too). */
  private ownsGpu = false;
  /** Logical time for the eviction policy, in tokens: 1/L per layer visit. */
  private clock = 0;

  private tick(): number {
    this.clock += 1 / this.config.numLayers;
    return this.clock;
  }
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
    this.stepRows = new Float32Array(this.maxBatch * c.hiddenSize);
    this.prefetch = opts.prefetch ?? true;
    this.routerMaskingDefault = opts.routerMasking ?? false;
    this.perLayerRouting = opts.perLayerRouting ?? false;
    const T = this.maxBatch;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh, numLayers: L } = c;
    const { numExperts: E, topK: K, moeIntermediateSize: I, vocabSize: V } = c;

    // resident weights
    this.layers = weights.layers.map((lw, l) => uploadLayer(device, lw, l));
    const finalNorm = uploadF32(device, toFloat32(weights.finalNorm), "final_norm");
    this.finalNorm = finalNorm;
    this.lmHead = uploadLmHead(device, weights.lmHead, gpu);
    this.rope = uploadF32(device, ropeTable(this.maxContext, Dh, c.ropeTheta), "rope_table");
    this.embedRow = embedGather(weights.embed);

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

    const f32 = (n: number, label: string) =>
      device.createBuffer({
        label,
        size: align4(n * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
    this.routingOffset = alignUp(T * V * 4, STAGING_ALIGN);
    this.missedOffset = this.routingOffset + L * T * K * 4;
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
      snap: this.allResident ? [] : this.layers.map((_, l) => f32(T * D, `snapshot.${l}`)),
      xLast: f32(D, "x_last"),
      logits: f32(T * V, "logits"),
      staging: device.createBuffer({
        label: "readback",
        size: this.missedOffset + L * E * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
    };
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

  /** A KV cache from the free list, or a new one (buffers and ops made once, reused). */
  acquireKv(): KvCache {
    const free = this.freeKv.pop();
    if (free) return free;
    const c = this.config;
    const bytes = this.maxContext * c.numKvHeads * c.headDim * 4;
    const kv: KvCache = { buffers: [], attention: [] };
    for (let l = 0; l < c.numLayers; l++) {
      const mk = (kind: string) =>
        this.gpu.device.createBuffer({
          label: `kv.${kind}.${l}`,
          size: bytes,
          usage: GPUBufferUsage.STORAGE,
        });
      const k = mk("k");
      const v = mk("v");
      kv.buffers.push(k, v);
      kv.attention.push(this.prepareAttention(l, k, v));
    }
    this.allKv.push(kv);
    return kv;
  }

  /** KV caches allocated so far (sessions alive at once, at most). */
  get kvCachesMade(): number {
    return this.allKv.length;
  }

  releaseKv(kv: KvCache): void {
    this.freeKv.push(kv);
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

  /** Per-session: KV store and attention over that session's cache, then o_proj + residual. */
  prepareAttention(l: number, kCache: GPUBuffer, vCache: GPUBuffer): Op[] {
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
          minResident: this.layerQuota,
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
    return this.lmHead.map((chunk) =>
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
   * Whether the pass being recorded routes among resident experts only: the session asked for
   * router masking and the cache is full (free slots are filled by normal loads first, so the
   * mask never leaves budget unused).
   */
  private masking = false;

  private startPass(session: GpuSession): void {
    this.masking = session.routerMasking && this.cache.isFull;
  }

  private router(l: number): Op[] {
    return this.masking ? this.maskedRouterOps[l] : this.routerOps[l];
  }

  /** Layers [from, to): attention, router, experts, combine; snapshots x first when budgeted. */
  private encodeLayers(
    enc: GPUCommandEncoder,
    session: GpuSession,
    from: number,
    to: number,
    T: number,
  ): void {
    const rowBytes = T * this.config.hiddenSize * 4;
    let pass: GPUComputePassEncoder | null = null;
    for (let l = from; l < to; l++) {
      if (!this.allResident) {
        pass?.end();
        enc.copyBufferToBuffer(this.act.x, 0, this.act.snap[l], 0, rowBytes);
        pass = null;
      }
      pass ??= enc.beginComputePass();
      for (const op of this.attnInputs[l]) op.record(pass, T);
      for (const op of session.attention[l]) op.record(pass, T);
      for (const op of this.router(l)) op.record(pass, T);
      for (const op of this.expertOps[l]) op.record(pass, T);
      this.combineOps[l].record(pass, T);
    }
    pass?.end();
  }

  /** Final norm and lm_head (all rows, or only the last), then copy results for readback. */
  private encodeHead(enc: GPUCommandEncoder, T: number, lastOnly: boolean): number {
    const D = this.config.hiddenSize;
    let pass = enc.beginComputePass();
    this.finalNormOp.record(pass, T);
    if (lastOnly) {
      pass.end();
      enc.copyBufferToBuffer(this.act.xn, (T - 1) * D * 4, this.act.xLast, 0, D * 4);
      pass = enc.beginComputePass();
      for (const op of this.headLast) op.record(pass, 1);
    } else {
      for (const op of this.headAll) op.record(pass, T);
    }
    pass.end();
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

  /** The Step uniform for T tokens at positions pos0.. (ops_api.ts). */
  private writeStep(T: number, pos0: number): void {
    const u = this.stepUniform;
    u[0] = T;
    u[1] = pos0;
    u[2] = pos0 + T;
    this.gpu.device.queue.writeBuffer(this.ops.step, 0, u);
  }

  /** Embedding rows of ids, gathered on the CPU from the mapped table into `rows`, then to
   * `target` [T, D] on the GPU. */
  private writeEmbeddings(
    ids: number[],
    target: GPUBuffer,
    rows: Float32Array<ArrayBuffer>,
  ): void {
    const D = this.config.hiddenSize;
    for (let t = 0; t < ids.length; t++) rows.set(this.embedRow(ids[t]), t * D);
    this.gpu.device.queue.writeBuffer(target, 0, rows);
  }

  /** Runs steps one at a time (activations are shared between sessions). */
  exclusive<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Runs T = ids.length tokens at positions pos0.. through every layer and returns logits rows
   * (all T, or only the last). With every expert resident this is one submission and one
   * readback. With a budget, decode runs optimistically with the slots it has and reruns from
   * the first layer that routed to an absent expert; prefill goes layer by layer, loading each
   * routed expert once per layer.
   */
  async step(
    session: GpuSession,
    ids: number[],
    pos0: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]> {
    const c = this.config;
    const T = ids.length;
    const device = this.gpu.device;
    const D = c.hiddenSize;
    this.stats.steps++;
    this.writeStep(T, pos0);
    this.writeEmbeddings(ids, this.act.x, this.stepRows.subarray(0, T * D));

    if (this.allResident) {
      this.startPass(session);
      const enc = device.createCommandEncoder({ label: "forward" });
      this.encodeLayers(enc, session, 0, c.numLayers, T);
      const rows = this.encodeHead(enc, T, lastOnly);
      this.encodeRouting(enc, T);
      const r = await this.submitAndRead(enc, rows);
      this.countHits(r.routing, 0, c.numLayers, T);
      return r.logits;
    }
    return this.decodeOptimistic(session, T, lastOnly);
  }

  /** Distinct expert keys routed at layer l for the T rows of `routing`. */
  private routedKeys(routing: Uint32Array, l: number, T: number): number[] {
    const { numExperts: E, topK: K } = this.config;
    const base = l * this.maxBatch * K;
    const keys = new Set<number>();
    for (let i = 0; i < T * K; i++) keys.add(l * E + routing[base + i]);
    return [...keys];
  }

  /** Layers [from, to) ran with all their experts resident: hits for the policy and metrics. */
  /** Hands a layer's final routing (experts [T*K], token-major) to onRouting. */
  private emitRouting(routing: Uint32Array, l: number, T: number): void {
    if (!this.onRouting) return;
    const base = l * this.maxBatch * this.config.topK;
    this.onRouting(l, routing.slice(base, base + T * this.config.topK));
  }

  private countHits(routing: Uint32Array, from: number, to: number, T: number): void {
    for (let l = from; l < to; l++) {
      this.emitRouting(routing, l, T);
      // (with router masking, absent experts picked with weight 0 are not uses)
      const keys = this.routedKeys(routing, l, T).filter((k) => this.cache.isResident(k));
      this.cache.metrics.hits += keys.length;
      this.cache.touch(keys, this.tick());
    }
  }

  private async decodeOptimistic(
    session: GpuSession,
    T: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]> {
    const c = this.config;
    const { numLayers: L, numExperts: E } = c;
    const device = this.gpu.device;
    let from = 0;
    /** Layers below this are final and counted. */
    let counted = 0;
    let guessed = new Set<number>();
    let rerun = false;
    for (;;) {
      const enc = device.createCommandEncoder({ label: "decode" });
      if (rerun) {
        // the residual stream as it entered layer `from` (the failed pass went on from there)
        enc.copyBufferToBuffer(this.act.snap[from], 0, this.act.x, 0, T * c.hiddenSize * 4);
      }
      enc.clearBuffer(this.pool.missed);
      this.startPass(session);
      this.encodeLayers(enc, session, from, L, T);
      const rows = this.encodeHead(enc, T, lastOnly);
      this.encodeRouting(enc, T);
      const r = await this.submitAndRead(enc, rows);
      const l0 = this.firstMissedLayer(r.missed, from);
      if (l0 < 0) {
        this.countHits(r.routing, counted, L, T);
        this.scoreGuesses(guessed, r.routing, counted, L, T);
        return r.logits;
      }
      // layers before l0 are final
      this.countHits(r.routing, counted, l0, T);
      this.scoreGuesses(guessed, r.routing, counted, l0, T);
      // layer l0 saw its true input: load exactly what it routed to
      this.emitRouting(r.routing, l0, T);
      const routed = this.routedKeys(r.routing, l0, T);
      const protect = this.protectedKeys(routed, l0);
      const now = this.tick();
      for (const key of routed) {
        if (this.cache.isResident(key)) {
          this.cache.metrics.hits++;
          if (guessed.delete(key)) this.stats.prefetchUseful++;
          continue;
        }
        this.cache.metrics.misses++;
        if (guessed.has(key)) this.stats.prefetchUseful++;
        else if (l0 > 0 || from > 0) this.stats.prefetchMissed++;
        if (!this.cache.load(key, now, protect)) {
          throw new ExpertBudgetError(`no slot free for layer ${l0}'s experts`);
        }
      }
      this.cache.touch(routed, now);
      // later layers ran on an approximate input: their flagged experts are good guesses
      guessed = new Set();
      if (this.prefetch && !this.masking) {
        for (let l = l0 + 1; l < L; l++) {
          for (const key of this.routedKeys(r.routing, l, T)) {
            if (this.cache.isResident(key)) protect.add(key);
          }
        }
        for (let l = l0 + 1; l < L; l++) {
          for (let e = 0; e < E; e++) {
            const key = l * E + e;
            if (!r.missed[key]) continue;
            if (!this.cache.load(key, now, protect, true)) break;
            protect.add(key);
            guessed.add(key);
          }
        }
      }
      counted = l0 + 1;
      from = l0;
      rerun = true;
      this.stats.reruns++;
    }
  }

  /**
   * The first layer from `from` on whose missed flags mean a real miss: any flag in exact mode;
   * with router masking only in a layer below its share of slots (elsewhere the flags come from
   * absent experts picked with weight 0, which add nothing).
   */
  private firstMissedLayer(missed: Uint32Array, from: number): number {
    const { numLayers: L, numExperts: E } = this.config;
    for (let l = from; l < L; l++) {
      if (this.masking && this.cache.residentIn(l).size >= this.layerQuota) continue;
      for (let e = 0; e < E; e++) if (missed[l * E + e]) return l;
    }
    return -1;
  }

  /** With router masking, each layer's share of the slots: a layer with fewer resident experts
   * routes exactly and loads (evicting from layers above their share), one with at least this
   * many routes among its resident experts. */
  get layerQuota(): number {
    return Math.max(1, Math.floor(this.cache.capacity / this.config.numLayers));
  }

  /** With router masking: up to layerQuota resident experts of each layer but l, kept so that
   * loads for l evict from layers above their share (empty when they and `need` more slots do
   * not fit together). */
  private lastOfOtherLayers(l: number, need: number): number[] {
    if (!this.masking) return [];
    const keep: number[] = [];
    for (let other = 0; other < this.config.numLayers; other++) {
      if (other === l) continue;
      let n = 0;
      for (const k of this.cache.residentIn(other)) {
        if (n++ === this.layerQuota) break;
        keep.push(k);
      }
    }
    return keep.length + need <= this.cache.capacity ? keep : [];
  }

  /** Keys a load for layer l must not evict: l's routed experts (and see lastOfOtherLayers). */
  private protectedKeys(routed: number[], l: number): Set<number> {
    return new Set([...routed, ...this.lastOfOtherLayers(l, routed.length)]);
  }

  /** Prefetch accounting: which guessed keys the final routing of layers [from, to) used. */
  private scoreGuesses(
    guessed: Set<number>,
    routing: Uint32Array,
    from: number,
    to: number,
    T: number,
  ): void {
    if (guessed.size === 0) return;
    for (let l = from; l < to; l++) {
      for (const key of this.routedKeys(routing, l, T)) {
        if (guessed.delete(key)) this.stats.prefetchUseful++;
      }
    }
  }

  /** Whether a forward of T tokens goes layer by layer over the whole prompt (routing read
   * back per layer): prefill under a budget, and every step of the perLayerRouting baseline. */
  layerwise(T: number): boolean {
    return this.perLayerRouting || (!this.allResident && T > 1);
  }

  /**
   * Prefill under a budget (and every step with perLayerRouting), layer by layer over the whole
   * prompt, so each routed expert is loaded once per layer per prompt whatever the budget. The
   * prompt runs in chunks of maxBatch tokens whose state (residual, normed input, routing,
   * weights, expert outputs) waits in prompt-sized buffers between stages:
   * 1. every chunk: attention and router of layer l; then one readback of the layer's routing;
   * 2. the routed experts in groups that fit the slots; every chunk runs the group's pairs
   *    (pairs whose expert is absent are skipped, so its y fills up group by group);
   * 3. every chunk: the weighted sum into the residual.
   * Then the final norm and lm_head (last row, or every row chunk by chunk).
   */
  async prefillByLayer(
    session: GpuSession,
    ids: number[],
    pos0: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]> {
    const c = this.config;
    const device = this.gpu.device;
    const { hiddenSize: D, topK: K, numExperts: E } = c;
    const B = this.maxBatch;
    const T = ids.length;
    const chunks: { t0: number; n: number }[] = [];
    for (let t0 = 0; t0 < T; t0 += B) chunks.push({ t0, n: Math.min(B, T - t0) });
    const p = this.promptBuffers(T);
    this.writeEmbeddings(ids, p.x, new Float32Array(T * D));
    this.stats.steps++;
    const a = this.act;
    /** One submission for chunk ch: step uniform, copies in, ops, copies out. */
    const run = (
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
      const pass = enc.beginComputePass();
      for (const op of ops) op.record(pass, ch.n);
      pass.end();
      for (const [from, to, width] of outs) {
        enc.copyBufferToBuffer(from, 0, to, ch.t0 * width * 4, ch.n * width * 4);
      }
      device.queue.submit([enc.finish()]);
    };
    for (let l = 0; l < c.numLayers; l++) {
      this.startPass(session);
      // 1. attention + router, chunk by chunk
      for (const ch of chunks) {
        run(ch, [[p.x, a.x, D]], [
          ...this.attnInputs[l],
          ...session.attention[l],
          ...this.router(l),
        ], [[a.x, p.x, D], [a.xn, p.xn, D], [a.idx[l], p.idx, K], [a.weights, p.weights, K]]);
      }
      const idx = await readU32(this.gpu, p.idx, 0, T * K);
      this.stats.readbacks++;
      this.onRouting?.(l, idx);
      let keys = [...new Set(idx)].map((e) => l * E + e);
      if (this.masking && this.cache.residentIn(l).size >= this.layerQuota) {
        // routed among resident experts; absent picks carry weight 0 and need no load
        keys = keys.filter((k) => this.cache.isResident(k));
      }
      // resident experts first: they need no load
      keys.sort((x, y) => Number(this.cache.isResident(y)) - Number(this.cache.isResident(x)));
      this.stats.prefillRouted += keys.length;
      const now = this.tick();
      const groupSize = this.cache.capacity - this.lastOfOtherLayers(l, 1).length;
      // 2. experts, group by group
      for (let g = 0; g < keys.length; g += groupSize) {
        const group = keys.slice(g, g + groupSize);
        const protect = this.protectedKeys(group, l);
        for (const key of group) {
          if (this.cache.isResident(key)) {
            this.cache.metrics.hits++;
            continue;
          }
          this.cache.metrics.misses++;
          this.stats.prefillLoads++;
          if (!this.cache.load(key, now, protect)) {
            throw new ExpertBudgetError(`no slot free for layer ${l}'s experts`);
          }
        }
        this.cache.touch(group, now);
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
    // final norm and lm_head
    const rows: Float32Array[] = [];
    for (const ch of lastOnly ? chunks.slice(-1) : chunks) {
      run(ch, [[p.x, a.x, D]], [], []);
      const enc = device.createCommandEncoder({ label: "prefill.head" });
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

  /** Frees every GPU buffer the model made (sessions free their own KV caches). */
  destroy(): void {
    this.pool.destroy();
    const a = this.act;
    const buffers: GPUBuffer[] = [
      this.rope,
      this.finalNorm,
      ...this.lmHead.map((c) => c.w.buffer),
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
    ];
    for (const b of buffers) b.destroy();
    for (const kv of this.allKv) for (const b of kv.buffers) b.destroy();
    this.destroyPromptBuffers();
    this.ops.destroy();
    // a device this model opened goes with it (llvmpipe devices left to process exit each keep
    // threads alive until teardown)
    if (this.ownsGpu) this.gpu.device.destroy();
  }
}
