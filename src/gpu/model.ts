/**
 * The Qwen3-MoE forward pass on WebGPU. Resident weights (attention, norms, routers, final norm,
 * lm_head) are uploaded once; the embedding table stays in the mapped checkpoint and its rows are
 * gathered on the CPU; experts live in an ExpertPool reached through a GPU-side slot table.
 *
 * Legend: T tokens in a step, D hidden, V vocab, Hq/Hkv heads, Dh head dim, E experts, K top-k,
 * I expert intermediate.
 */
import type {
  LanguageModel,
  LayerWeights,
  ModelConfig,
  ModelWeights,
  Session,
  TensorView,
} from "../types.ts";
import type { Op, OpsApi, WeightDType, WeightRef } from "./ops_api.ts";
import { Ops } from "./ops.ts";
import { type Gpu, openGpu } from "./device.ts";
import { readF32 } from "./readback.ts";
import { toFloat32 } from "../dtype.ts";
import { ABSENT, ExpertPool } from "./expert_pool.ts";
import { ropeTable } from "../rope.ts";

/** Tokens per forward step; longer prompts are prefilled in chunks of this many. */
export const DEFAULT_MAX_BATCH = 64;
/** Default context when the caller does not ask for one (the config's maximum can be huge). */
export const DEFAULT_MAX_CONTEXT = 4096;

export class ContextOverflowError extends Error {
  override name = "ContextOverflowError";
}

export interface GpuModelOptions {
  gpu?: Gpu;
  maxContext?: number;
  maxBatch?: number;
  /**
   * Experts to place in GPU slots at load: by default every expert of every layer. Issue-3's
   * cache replaces this with a budget and lazy uploads.
   */
  expertSlots?: number;
}

const DTYPES: Record<TensorView["dtype"], WeightDType> = { F32: "f32", BF16: "bf16", F16: "f16" };

/** Upload a checkpoint matrix as-is (packed in u32) for the matmul kernels. */
function uploadMatrix(device: GPUDevice, t: TensorView, label: string): WeightRef {
  const buffer = device.createBuffer({
    label,
    size: align4(t.bytes.byteLength),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, t.bytes as Uint8Array<ArrayBuffer>);
  return { buffer, dtype: DTYPES[t.dtype], offsetElems: 0 };
}

/** Upload a norm weight converted to f32 (norm kernels take f32 weights). */
function uploadF32(device: GPUDevice, data: Float32Array<ArrayBuffer>, label: string): GPUBuffer {
  const buffer = device.createBuffer({
    label,
    size: align4(data.byteLength),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, data);
  return buffer;
}

function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

interface GpuLayer {
  inputNorm: GPUBuffer;
  q: WeightRef;
  k: WeightRef;
  v: WeightRef;
  o: WeightRef;
  qNorm: GPUBuffer;
  kNorm: GPUBuffer;
  postNorm: GPUBuffer;
  router: WeightRef;
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
  idx: GPUBuffer; // u32 [T, K]
  weights: GPUBuffer; // [T, K]
  h: GPUBuffer; // [T*K, I]
  y: GPUBuffer; // [T*K, D]
  xLast: GPUBuffer; // [1, D] last row of xn
  logits: GPUBuffer; // [T, V]
}

export class GpuModel implements LanguageModel {
  readonly maxContext: number;
  readonly maxBatch: number;
  readonly ops: OpsApi;
  readonly pool: ExpertPool;
  private layers: GpuLayer[];
  private finalNorm: GPUBuffer;
  private lmHead: { w: WeightRef; rows: number; first: number }[];
  private act: Activations;
  private rope: GPUBuffer;
  /** Ops recorded before attention / after attention of each layer, and the head. */
  private preAttention: Op[][];
  private postAttention: Op[][];
  private headAll: Op[];
  private headLast: Op[];
  private finalNormOp: Op;
  private queue: Promise<unknown> = Promise.resolve();
  private embedRow: (id: number) => Float32Array;

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
    const T = this.maxBatch;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh } = c;
    const { numExperts: E, topK: K, moeIntermediateSize: I, vocabSize: V } = c;

    // resident weights
    this.layers = weights.layers.map((lw, l) => uploadLayer(device, lw, l));
    this.finalNorm = uploadF32(device, toFloat32(weights.finalNorm), "final_norm");
    this.lmHead = uploadLmHead(device, weights.lmHead, gpu);
    this.rope = uploadF32(device, ropeTable(this.maxContext, Dh, c.ropeTheta), "rope_table");
    this.embedRow = embedGather(weights.embed);

    // experts: every one resident unless a slot count is given
    const expertDtype = DTYPES[weights.layers[0].expert(0).gate.dtype];
    const total = c.numLayers * E;
    const slots = Math.min(opts.expertSlots ?? total, total);
    this.pool = new ExpertPool(device, c, expertDtype, slots);
    if (slots === total) {
      for (let l = 0; l < c.numLayers; l++) {
        for (let e = 0; e < E; e++) {
          const slot = l * E + e;
          this.pool.uploadExpert(slot, weights.layers[l].expert(e));
          this.pool.assign(l, e, slot);
        }
      }
    }

    const f32 = (n: number, label: string) =>
      device.createBuffer({
        label,
        size: align4(n * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
    this.act = {
      x: f32(T * D, "x"),
      xn: f32(T * D, "xn"),
      q: f32(T * Hq * Dh, "q"),
      k: f32(T * Hkv * Dh, "k"),
      v: f32(T * Hkv * Dh, "v"),
      att: f32(T * Hq * Dh, "att"),
      routerLogits: f32(T * E, "router_logits"),
      idx: f32(T * K, "topk_idx"),
      weights: f32(T * K, "topk_weights"),
      h: f32(T * K * I, "experts_h"),
      y: f32(T * K * D, "experts_y"),
      xLast: f32(D, "x_last"),
      logits: f32(T * V, "logits"),
    };
    this.preAttention = this.layers.map((_, l) => this.prepareAttentionInputs(l));
    this.postAttention = this.layers.map((_, l) => this.prepareMoe(l));
    this.finalNormOp = this.ops.rmsnorm({
      x: this.act.x,
      weight: this.finalNorm,
      out: this.act.xn,
      dim: D,
      groups: 1,
      eps: c.rmsNormEps,
    });
    this.headAll = this.prepareHead(this.act.xn, V);
    this.headLast = this.prepareHead(this.act.xLast, V);
  }

  static async open(weights: ModelWeights, opts: GpuModelOptions = {}): Promise<GpuModel> {
    const gpu = opts.gpu ?? await openGpu();
    return new GpuModel(gpu, weights, opts);
  }

  get config(): ModelConfig {
    return this.weights.config;
  }

  newSession(): GpuSession {
    return new GpuSession(this);
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

  /** post-attention norm -> router -> top-k -> experts -> weighted sum into the residual. */
  private prepareMoe(l: number): Op[] {
    const c = this.config;
    const L = this.layers[l];
    const a = this.act;
    const { hiddenSize: D, numExperts: E, topK: K, moeIntermediateSize: I } = c;
    const ops: Op[] = [
      this.ops.rmsnorm({
        x: a.x,
        weight: L.postNorm,
        out: a.xn,
        dim: D,
        groups: 1,
        eps: c.rmsNormEps,
      }),
      this.ops.matmul({
        x: a.xn,
        w: L.router,
        out: a.routerLogits,
        K: D,
        N: E,
        outStride: E,
        outOffset: 0,
        accumulate: false,
      }),
      this.ops.topk({
        logits: a.routerLogits,
        idx: a.idx,
        weights: a.weights,
        numExperts: E,
        k: K,
        normTopk: c.normTopkProb,
      }),
    ];
    const common = {
      idx: a.idx,
      slots: this.pool.slotTable,
      slotBase: l * E,
      poolDtype: this.pool.dtype,
      slotElems: this.pool.slotElems,
      k: K,
      hidden: D,
      inter: I,
    };
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
    ops.push(this.ops.moeCombine({ y: a.y, weights: a.weights, out: a.x, k: K, hidden: D }));
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

  // ---- one step ----

  /** Runs steps one at a time (activations are shared between sessions). */
  exclusive<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Runs T = ids.length tokens at positions pos0.. through every layer and returns logits rows
   * (all T, or only the last).
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
    const { hiddenSize: D, vocabSize: V } = c;
    device.queue.writeBuffer(this.ops.step, 0, new Uint32Array([T, pos0, pos0 + T, 0]));
    // embeddings: rows gathered on the CPU from the mapped table
    const x = new Float32Array(T * D);
    for (let t = 0; t < T; t++) x.set(this.embedRow(ids[t]), t * D);
    device.queue.writeBuffer(this.act.x, 0, x);

    const enc = device.createCommandEncoder({ label: "forward" });
    let pass = enc.beginComputePass();
    for (let l = 0; l < c.numLayers; l++) {
      for (const op of this.preAttention[l]) op.record(pass, T);
      for (const op of session.attention[l]) op.record(pass, T);
      for (const op of this.postAttention[l]) op.record(pass, T);
    }
    // final norm
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
    device.queue.submit([enc.finish()]);
    const rows = lastOnly ? 1 : T;
    const flat = await readF32(this.gpu, this.act.logits, 0, rows * V);
    const out: Float32Array[] = [];
    for (let r = 0; r < rows; r++) out.push(flat.slice(r * V, (r + 1) * V));
    return out;
  }

  /** Whether any routed expert of the last steps was absent (never with all experts resident). */
  get absentSlots(): number {
    return this.pool.table.reduce((n, s) => n + (s === ABSENT ? 1 : 0), 0);
  }

  destroy(): void {
    this.pool.destroy();
  }
}

export class GpuSession implements Session {
  private len = 0;
  readonly attention: Op[][];
  private caches: GPUBuffer[] = [];

  constructor(private model: GpuModel) {
    const c = model.config;
    const device = model.gpu.device;
    const bytes = model.maxContext * c.numKvHeads * c.headDim * 4;
    this.attention = [];
    for (let l = 0; l < c.numLayers; l++) {
      const mk = (kind: string) =>
        device.createBuffer({
          label: `kv.${kind}.${l}`,
          size: bytes,
          usage: GPUBufferUsage.STORAGE,
        });
      const k = mk("k");
      const v = mk("v");
      this.caches.push(k, v);
      this.attention.push(model.prepareAttention(l, k, v));
    }
  }

  get length(): number {
    return this.len;
  }

  forward(ids: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array[]> {
    return this.model.exclusive(async () => {
      if (ids.length === 0) throw new RangeError("forward() needs at least one token");
      if (this.len + ids.length > this.model.maxContext) {
        throw new ContextOverflowError(
          `${this.len + ids.length} tokens exceed the context of ${this.model.maxContext}`,
        );
      }
      const V = this.model.config.vocabSize;
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new RangeError(`token id ${id} is outside the vocabulary [0, ${V})`);
        }
      }
      const rows: Float32Array[] = [];
      const B = this.model.maxBatch;
      for (let i = 0; i < ids.length; i += B) {
        const chunk = ids.slice(i, i + B);
        const last = i + B >= ids.length;
        const r = await this.model.step(this, chunk, this.len, !!opts.lastOnly && last);
        this.len += chunk.length;
        if (!opts.lastOnly) rows.push(...r);
        else if (last) rows.push(...r);
      }
      return rows;
    });
  }

  truncate(length: number): void {
    if (length < 0 || length > this.len) throw new RangeError(`cannot truncate to ${length}`);
    this.len = length;
  }

  free(): void {
    for (const b of this.caches) b.destroy();
    this.caches = [];
  }
}

function uploadLayer(device: GPUDevice, lw: LayerWeights, l: number): GpuLayer {
  const p = `layers.${l}`;
  return {
    inputNorm: uploadF32(device, toFloat32(lw.inputNorm), `${p}.input_norm`),
    q: uploadMatrix(device, lw.q, `${p}.q`),
    k: uploadMatrix(device, lw.k, `${p}.k`),
    v: uploadMatrix(device, lw.v, `${p}.v`),
    o: uploadMatrix(device, lw.o, `${p}.o`),
    qNorm: uploadF32(device, toFloat32(lw.qNorm), `${p}.q_norm`),
    kNorm: uploadF32(device, toFloat32(lw.kNorm), `${p}.k_norm`),
    postNorm: uploadF32(device, toFloat32(lw.postAttentionNorm), `${p}.post_norm`),
    router: uploadMatrix(device, lw.router, `${p}.router`),
  };
}

/** lm_head [V, D] in row chunks that each fit one storage binding. */
function uploadLmHead(
  device: GPUDevice,
  t: TensorView,
  gpu: Gpu,
): { w: WeightRef; rows: number; first: number }[] {
  const [V, D] = t.shape;
  const rowBytes = t.bytes.byteLength / V;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  // whole rows per chunk, an even count so bf16 chunks start on a u32
  const perChunk = Math.max(2, Math.floor(limit / rowBytes / 2) * 2);
  const chunks = [];
  for (let first = 0; first < V; first += perChunk) {
    const rows = Math.min(perChunk, V - first);
    const view: TensorView = {
      ...t,
      shape: [rows, D],
      bytes: t.bytes.subarray(first * rowBytes, (first + rows) * rowBytes),
    };
    chunks.push({ w: uploadMatrix(device, view, `lm_head.${first}`), rows, first });
  }
  return chunks;
}

/** Embedding rows [D] as f32, read from the mapped table on demand. */
function embedGather(t: TensorView): (id: number) => Float32Array {
  const [, D] = t.shape;
  const rowBytes = t.bytes.byteLength / t.shape[0];
  return (id) =>
    toFloat32({
      ...t,
      shape: [1, D],
      bytes: t.bytes.subarray(id * rowBytes, (id + 1) * rowBytes),
    });
}
