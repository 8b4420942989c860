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
import type {
  ExpertSetMode,
  LanguageModel,
  ModelConfig,
  ModelWeights,
  SessionOptions,
} from "../types.ts";
import {
  type BufferWeight,
  type IndirectOp,
  MAX_STEP_TOKENS,
  type Op,
  stepRecord,
  type WeightRef,
} from "./ops_api.ts";
import { fittingSlabs, KvPool, kvSlabBytes } from "./kv_pool.ts";
import type { SamplingParams } from "../sampling.ts";
import { Ops, STEP_BYTES } from "./ops.ts";
import { readU32 } from "./readback.ts";
import { Pregating } from "./pregating.ts";
import { type Gpu, openGpu } from "./device.ts";
import { toFloat32 } from "../dtype.ts";
import {
  ExpertPool,
  type ExpertPoolOptions,
  fittingExpertSlots,
  modelExpertLayouts,
} from "./expert_pool.ts";
import { ropeTable } from "../rope.ts";
import { ExpertScheduler } from "./expert_scheduler.ts";
import type { ExpertSets } from "./expert_sets.ts";
import {
  CheckpointExperts,
  ExpertBudgetError,
  ExpertCache,
  type ExpertSource,
} from "./expert_cache.ts";
import { type EvictionPolicy, LruPolicy } from "../experts/policy.ts";
import {
  align4,
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
  emptyStepStats,
  type LaneStep,
  MAX_STEPS_PER_BATCH,
  type StepStats,
} from "./host.ts";
import { ContextOverflowError, GpuSession, type SessionHost } from "./session.ts";
import { DecodeLoop } from "./decode_loop.ts";

export { ContextOverflowError, GpuSession };
export type { StepStats };

/** Tokens per forward step; longer prompts are prefilled in chunks of this many. */
export const DEFAULT_MAX_BATCH = 128;
/** Tokens per step the default never goes below for the attention's sake (the old default). */
const MIN_DEFAULT_BATCH = 64;
/** Default context when the caller does not ask for one (the config's maximum can be huge). */
export const DEFAULT_MAX_CONTEXT = 4096;
/** KV slabs when the caller does not say: a few sessions at once (the server sizes its own). */
export const DEFAULT_MAX_SEQUENCES = 4;

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
  /** Under a budget a decode step loads at most as many experts as it routes: guesses only while
   * its hits exceed its wrong and unscored guesses (default true; false: the baseline, every
   * flagged expert loaded at a miss). */
  loadCap?: boolean;
  /** Sessions route among resident experts only unless they ask otherwise (approximate). */
  routerMasking?: boolean;
  /** How sessions that do not ask choose their experts (default "lru"; src/gpu/expert_sets.ts). */
  expertSet?: ExpertSetMode;
  /**
   * The naive design, kept as a baseline for benchmarks: every step waits for each layer's
   * routing on the CPU (one readback per layer) before running its experts.
   */
  perLayerRouting?: boolean;
  /** Steps per readback sessions use unless a request says otherwise (default: adaptive). */
  stepsPerReadback?: number;
  /** The decode loop before miss-aware pipelining, kept for benchmarks: encode the next batch
   * before each readback even while most steps miss (its work is then discarded). */
  alwaysPipeline?: boolean;
  /** Predict each next layers' experts in the pass (src/gpu/pregating.ts; measurements). */
  pregating?: boolean;
  /** Experts each pre-gating prediction names (default the model's top-k; more: higher recall,
   * lower precision). */
  pregatingTopK?: number;
  /** Under a budget, skip a decode step's lm_head on the GPU when the step (or an earlier step of
   * its batch) missed an expert: its logits would be thrown away (default true; false: the
   * baseline, every step computes its lm_head). */
  headGate?: boolean;
  /** KV slabs: sequences that can run (and be batched) at once (default 4; fewer when the device
   * cannot allocate them, or kvCacheMib does not hold them). */
  maxSequences?: number;
  /** GPU memory for KV caches in MiB: caps maxSequences. */
  kvCacheMib?: number;
  /**
   * How expert kernels reach the pool buffers: "grouped" (default) binds a group of pool buffers
   * per dispatch and keeps each layer's experts in its own group(s), so a layer dispatches each
   * expert stage once whatever the pool count; "per-pool" is the baseline kept for benchmarks:
   * every layer dispatches both stages once per pool buffer, experts placed anywhere.
   */
  expertDispatch?: "grouped" | "per-pool";
  /** Caps each expert pool buffer's bytes below the device's binding limit (benchmarks and tests:
   * many pool buffers on a device that allows few). */
  expertBindingLimit?: number;
  /** Pool buffers one expert dispatch binds (default: as many as the device's storage-buffer
   * limit leaves; tests and benchmarks force fewer to get several groups per layer). */
  expertPoolBindings?: number;
  /** Expert uploads through this many staging buffers kept mapped (ExpertPoolOptions
   * .stagingBuffers; default STAGING_BUFFERS); 0: queue.writeBuffer only, the baseline. */
  expertStagingBuffers?: number;
  /** Prefill tiles (OpsOptions.wideTiles, default true; false: the kernels issue's baseline):
   * matmul tiles of 16 tokens in steps of 32 tokens or more, expert tiles of 8 pairs from 8 pairs
   * per expert on average. */
  wideTiles?: boolean;
  /** Tiled expert kernels' tiles interleaved through the grid (OpsOptions.interleavedTiles,
   * default true; false: tile-major, the baseline, which llvmpipe runs on one thread). */
  interleavedTiles?: boolean;
  /** Attention passes with several positions / head-dim chunks per lane (OpsOptions.attentionBlocks,
   * default true; false: one each, the baseline). */
  attentionBlocks?: boolean;
  /** The q/k heads' norm and RoPE with one lane per row (OpsOptions.laneNorms, default on
   * llvmpipe; false: a workgroup per row, the baseline and other adapters' default).
   * Bit-identical either way. */
  laneNorms?: boolean;
  /** Decode matmuls in matvec.wgsl, a workgroup per 8 rows (OpsOptions.coalescedMatvec, default on
   * adapters other than llvmpipe; false: matmul.wgsl, the kernels issue's baseline). */
  coalescedMatvec?: boolean;
  /** Prefill matmuls in matmul_tiled.wgsl, slices staged in workgroup memory
   * (OpsOptions.workgroupTiles, default on adapters other than llvmpipe; false: matmul.wgsl's
   * tiles in a lane, the kernels issue's baseline). */
  workgroupTiles?: boolean;
  /** Workgroup sizes of the row-sharing kernels (OpsOptions.sharedSizes; default by adapter). */
  sharedSizes?: "gpu" | "llvmpipe";
  /** Bytes of scores for the three-pass attention (OpsOptions.attentionScratchBytes; default 80
   * MiB on llvmpipe, 0 elsewhere: one pass). */
  attentionScratchBytes?: number;
  /** Prefill attention flash-style in tiles of tokens (OpsOptions.attentionTiles; default false:
   * the one-pass or three-pass kernels). */
  attentionTiles?: boolean;
  /** Rows8 chunks read by the dtype's own chunk loader (OpsOptions.chunkLoaders, default true;
   * false: the generic one, the baseline). Bit-identical either way. */
  chunkLoaders?: boolean;
  /** Resident rows8 matrices (projections, routers, an untied lm_head) in read-only storage
   * textures (OpsOptions.textureWeights; default on llvmpipe, where matmul reads them faster;
   * false: storage buffers, the baseline and other adapters' default). Bit-identical. */
  textureWeights?: boolean;
  /** Expert pools as weight textures where the experts' dtype and shapes allow it (float parts on
   * 16-byte words; ExpertPoolOptions.textures; default: as textureWeights, so on llvmpipe; false:
   * buffers, the baseline). Bit-identical. */
  textureExperts?: boolean;
  /** The sampler's top_k / top_p cuts by radix select (GpuSamplerOptions.radixSelect, default
   * true; false: bisection, the baseline). The same tokens either way. */
  radixSelect?: boolean;
  /** Private arrays of each pipeline sized to what it uses (OpsOptions.exactArrays, default true;
   * false: the kernels' declared maxima, the baseline). Bit-identical either way. */
  exactArrays?: boolean;
  /** The matmul tile that pads fewer tokens a step (OpsOptions.paddedTiles, default true; false:
   * 16-token tiles from 32 tokens a step, the baseline). Bit-identical either way. */
  paddedTiles?: boolean;
  /** q, k and v projections as one matmul over their stacked rows, where their dtypes agree
   * (default true; false: three matmuls, the baseline): two dispatches fewer a layer. */
  fusedQkv?: boolean;
  /** Resident f16/bf16 matrices (projections, routers, an untied lm_head) in the rows8 layout
   * (WeightRef.layout: an invocation's 8 rows read as one stream; default true; false: row-major,
   * the kernels issue's baseline). */
  rows8Weights?: boolean;
  /** A lastOnly prompt longer than maxBatch runs its chunks before the last without the head and,
   * all experts resident, submits them without waiting for their readbacks (default true; false:
   * the baseline, which ran the lm_head over every row of those chunks, read the logits back only
   * to drop them, and waited for each chunk's readback before the next). */
  headlessChunks?: boolean;
  /** A batched prefill (prefillTogether) chunk that ends several prompts runs the lm_head on those
   * prompts' last rows only (default true; false: the baseline, the head over every row of the
   * chunk). Same logits rows either way. */
  compactHead?: boolean;
}

/** The expert pool's layout options for a model's options. */
function poolOptions(opts: GpuModelOptions, textures = false): ExpertPoolOptions {
  const perPool = opts.expertDispatch === "per-pool";
  return {
    bindingLimit: opts.expertBindingLimit,
    poolBindings: perPool ? 1 : opts.expertPoolBindings,
    stagingBuffers: opts.expertStagingBuffers,
    affinity: !perPool,
    textures,
  };
}

/** Expert uploads between queue flushes when loading all experts (bounds staging memory). */
const UPLOADS_PER_FLUSH = 16;

/** mapAsync offsets must be multiples of 8; keep staging regions generously aligned. */
const STAGING_ALIGN = 256;
/** Regions of the snapshot buffers (MAX_STEPS_PER_BATCH rows each) that batches in flight hold
 * (under a budget): one being read, its repair, the one queued behind, a joiner's prefill. */
const SNAP_REGIONS = 6;
/** Rows of the snapshot buffers used by batches, then forward()'s from this row. */
const FORWARD_SNAP_ROW = SNAP_REGIONS * MAX_STEPS_PER_BATCH;
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
  snap: GPUBuffer[]; // per layer: [2 halves of batches' rows | forward()'s T, D] residual at the
  // layer's start (budgeted runs)
  xRows: GPUBuffer; // [T, D] the rows of xn the head runs on when not all (the last, or sampled)
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

/** One forward inside a batch: T tokens (Step.tokens), from layer `from` (a rerun starts later). */
interface ForwardRecord {
  T: number;
  /** (slab, position) of each row. */
  tokens: [number, number][];
  from: number;
  /** First row of the snapshot buffers this forward writes (and, from > 0, restores) under a
   * budget. */
  snapRow: number;
  /** Rows sampled after the head: logits row, the batch lane it samples for, the position it
   * fills. Empty for prefill chunks before the last. */
  samples: { row: number; lane: number; pos: number }[];
  /** The head runs on the last row only (a prompt chunk: its logits go to row 0). */
  lastOnly: boolean;
  /** The head runs on these rows only, row i's logits into row i (a chunk ending several prompts;
   * its samples' rows are then 0..); not with lastOnly. */
  headRows?: number[];
  /** Where its routing [L, T*K] goes in the routing log (u32 index). */
  routeAt: number;
  /** Row of the miss log [N, L*E] (decode steps under a budget), else -1. */
  missRow: number;
  /** Repairs a step that missed (its scheduler accounting goes on). */
  rerun?: boolean;
}

/** A sequence's part of a batch. */
interface BatchLane {
  seq: Sequence;
  first: number;
  count: number;
  sampling: SamplingParams;
}

/** The buffers of one batch in flight, reused by later batches once it was read. */
interface Slot {
  stepTable: GPUBuffer; // forward records (STEP_BYTES each), then sampler records (16 B each)
  routeLog: GPUBuffer; // u32 [routing of every forward of the batch]
  missLog: GPUBuffer | null; // u32 [N, L*E] (budgeted models only)
  staging: GPUBuffer; // MAP_READ: lane ends | lane tokens | routing | missed
}

/** A miss read() found, kept with its batch for repair(). */
interface PendingMiss {
  routing: Uint32Array;
  missed: Uint32Array;
  l0: number;
  record: ForwardRecord;
  step: number;
}

/** A Batch as the model built it. */
interface ModelBatch extends Batch {
  lanes: BatchLane[];
  records: ForwardRecord[];
  slot: Slot;
  commands: GPUCommandBuffer | null;
  /** The session asked for router masking / the batch was recorded with the mask on. */
  masked: boolean;
  masking: boolean;
  /** Staging layout (u32 index): lane b's end at b, its tokens at tokensAt[b]; routing and misses
   * at routeAt/missAt. */
  tokensAt: number[];
  routeAt: number;
  missAt: number;
  readBytes: number;
  miss: PendingMiss | null;
  /** Whether its slot went back to the free list (read or discarded). */
  released: boolean;
  /** Whether its snapshot region went back (read without a miss, repaired, or discarded). */
  regionFreed: boolean;
}

/** One pass of a forward under a budget, as GpuModel.onPass reports it. */
export interface PassReport {
  /** The first layer the pass computed (0, or the layer a repair reran from). */
  from: number;
  /** Its first layer that routed to an absent expert (-1: none; the step is done). */
  firstMissed: number;
  /** Every layer's routing [L][stride * K] (layers before `from` not recomputed; after
   * firstMissed computed on an approximate input). */
  routing: Uint32Array;
  stride: number;
  T: number;
}

export class GpuModel implements LanguageModel, SessionHost {
  /** Decides which sequences step together, when to read back, where each ends. */
  readonly loop: DecodeLoop = new DecodeLoop(this);
  readonly maxContext: number;
  readonly maxBatch: number;
  /** Whether a lastOnly prompt's chunks before the last skip the head (GpuModelOptions). */
  private headlessChunks: boolean;
  /** Whether a batched prefill's chunk runs the head on its sampled rows only (GpuModelOptions). */
  private compactHead: boolean;
  /** Routing staging of a prompt's early chunks (submitEarlyChunk), made as prompts need them. */
  private chunkStaging: GPUBuffer[] = [];
  readonly ops: Ops;
  readonly pool: ExpertPool;
  readonly cache: ExpertCache;
  readonly sampler: GpuSampler;
  /** Every expert resident: no routing ever needs the CPU. */
  readonly allResident: boolean;
  /** Steps per readback of sessions that do not choose (undefined: adaptive). */
  readonly stepsPerReadback: number | undefined;
  readonly alwaysPipeline: boolean;
  /** Pre-gating predictions of every forward (null unless GpuModelOptions.pregating). */
  readonly pregating: Pregating | null;
  /**
   * Called with every layer's final routing of every step: experts [T*K] (token-major, each
   * token's top-k in descending weight). For routing studies; costs nothing when unset.
   */
  onRouting?: (layer: number, experts: Uint32Array) => void;
  /**
   * Awaited after every pass of a single sequence's forward under a budget (before a miss is
   * loaded, while the pre-gating buffers still hold this pass's predictions): where the pass
   * started, its first missed layer (-1: none) and its routing [L][stride * K]. For studies of
   * the repairs (bench/miss_guesses.ts); costs nothing when unset.
   */
  onPass?: (pass: PassReport) => Promise<void> | void;

  /** Further guesses at a miss, for studies (ExpertScheduler.extraGuesses; null: none). */
  set extraGuesses(f: ((firstMissed: number) => number[]) | null) {
    this.sched.extraGuesses = f;
  }
  readonly stats: StepStats = emptyStepStats();
  private layers: GpuLayer[];
  private vocab: { embed: RowChunk<BufferWeight>[]; lmHead: RowChunk[] };
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
  private headAll: IndirectOp[];
  /** The lm_head over act.xRows: the rows of a step picked for it (the last, or those sampled). */
  private headPicked: IndirectOp[];
  /** Under a budget (unless GpuModelOptions.headGate is false): the lm_head chunks' indirect
   * dispatch arguments ([x, y, z] each) then a sticky word, and the op that zeroes them when the
   * step or an earlier one of its batch missed (kernels/head_gate.wgsl). */
  private headGate:
    | { args: GPUBuffer; src: GPUBuffer; words: number; op: Op; srcFor: string }
    | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private prefetch: boolean;
  private routerMaskingDefault: boolean;
  private expertSetDefault: ExpertSetMode;
  private perLayerRouting: boolean;
  /** KV memory: one slab per running sequence (and cached prefixes in free ones). */
  private kv: KvPool;
  /** The sampler's view of each slab, made on first use. */
  private seqs: Sequence[] = [];
  /** Embedding gather (one op per table chunk) and o_proj per layer. */
  private embedOps: Op[];
  private outputOps: Op[];
  /** The logits row being sampled (the sampler reads row 0 of it; each lane's row is copied). */
  private sampleRow: GPUBuffer;
  private prompt: PromptBuffers | null = null;
  /** Readback buffers of the decode loop's batches: every one made, and those no batch awaiting
   * its readback uses. */
  private slots: Slot[] = [];
  private freeSlots: Slot[] = [];
  /** Whether open() made the device (then destroy() destroys it too). */
  private ownsGpu = false;
  /** What to load under a budget, and what the cache learns from each pass. */
  /** Every decision about experts under a budget (src/gpu/expert_scheduler.ts). */
  private sched: ExpertScheduler;
  private routingOffset: number;
  private missedOffset: number;

  private constructor(
    readonly gpu: Gpu,
    readonly weights: ModelWeights,
    opts: GpuModelOptions,
  ) {
    const c = weights.config;
    const device = gpu.device;
    const predictK = opts.pregatingTopK ?? c.topK;
    if (!Number.isInteger(predictK) || predictK < c.topK || predictK > c.numExperts) {
      throw new RangeError(
        `pregatingTopK: between top-k (${c.topK}) and all ${c.numExperts} experts, got ${predictK}`,
      );
    }
    this.maxContext = Math.min(opts.maxContext ?? DEFAULT_MAX_CONTEXT, c.maxPositionEmbeddings);
    this.ops = new Ops(gpu, {
      wideTiles: opts.wideTiles,
      interleavedTiles: opts.interleavedTiles,
      attentionBlocks: opts.attentionBlocks,
      laneNorms: opts.laneNorms,
      exactArrays: opts.exactArrays,
      paddedTiles: opts.paddedTiles,
      coalescedMatvec: opts.coalescedMatvec,
      workgroupTiles: opts.workgroupTiles,
      sharedSizes: opts.sharedSizes,
      attentionScratchBytes: opts.attentionScratchBytes,
      attentionTiles: opts.attentionTiles,
      chunkLoaders: opts.chunkLoaders,
      textureWeights: opts.textureWeights,
    });
    // The logits of a step's tokens are one storage binding: no more tokens than it holds rows.
    // Without a maxBatch, where the ops take three attention passes (llvmpipe), no more than they
    // take at this context either (steps past it run the one-pass kernel, several times slower
    // there), unless that is below MIN_DEFAULT_BATCH.
    const logitRows = Math.floor(device.limits.maxStorageBufferBindingSize / (c.vocabSize * 4));
    const passTokens = this.ops.attentionPassTokens(c.numHeads, this.maxContext);
    const attentionRows = this.ops.threePassAttention
      ? Math.max(MIN_DEFAULT_BATCH, passTokens)
      : DEFAULT_MAX_BATCH;
    this.maxBatch = Math.max(
      1,
      Math.min(
        opts.maxBatch ?? Math.min(DEFAULT_MAX_BATCH, attentionRows),
        this.maxContext,
        MAX_STEP_TOKENS,
        logitRows,
      ),
    );
    this.prefetch = opts.prefetch ?? true;
    this.routerMaskingDefault = opts.routerMasking ?? false;
    this.expertSetDefault = opts.expertSet ?? "lru";
    this.perLayerRouting = opts.perLayerRouting ?? false;
    this.stepsPerReadback = opts.stepsPerReadback;
    this.alwaysPipeline = opts.alwaysPipeline ?? false;
    const T = this.maxBatch;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh, numLayers: L } = c;
    const { numExperts: E, topK: K, moeIntermediateSize: I, vocabSize: V } = c;

    // resident weights
    this.headlessChunks = opts.headlessChunks ?? true;
    this.compactHead = opts.compactHead ?? true;
    const rows8 = opts.rows8Weights ?? true;
    const stackQkv = opts.fusedQkv ?? true;
    const textures = rows8 && this.ops.textureWeights;
    this.layers = weights.layers.map((lw, l) =>
      uploadLayer(device, lw, l, rows8, stackQkv, textures)
    );
    const finalNorm = uploadF32(device, toFloat32(weights.finalNorm), "final_norm");
    this.finalNorm = finalNorm;
    this.vocab = uploadVocabMatrices(device, weights.embed, weights.lmHead, gpu, rows8, textures);
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
    const poolTextures = opts.textureExperts ?? this.ops.textureWeights;
    this.pool = new ExpertPool(
      device,
      c,
      modelExpertLayouts(weights),
      slots,
      poolOptions(opts, poolTextures),
    );
    this.cache = new ExpertCache(
      this.pool,
      opts.expertSource ?? new CheckpointExperts(weights),
      opts.policy ?? new LruPolicy<number>(),
    );
    this.allResident = slots === total;
    this.sched = new ExpertScheduler(c, this.cache, this.stats, {
      prefetch: this.prefetch,
      allResident: this.allResident,
      perLayerRouting: this.perLayerRouting,
      loadCap: opts.loadCap ?? true,
    }, () => this.onRouting);

    const f32 = (n: number, label: string) =>
      device.createBuffer({
        label,
        size: align4(n * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
    this.routingOffset = alignUp(T * V * 4, STAGING_ALIGN);
    this.missedOffset = this.routingOffset + L * T * K * 4;
    const snapRows = FORWARD_SNAP_ROW + T;
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
      xRows: f32(T * D, "x_rows"),
      logits: f32(T * V, "logits"),
      staging: device.createBuffer({
        label: "readback",
        size: this.missedOffset + L * E * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
    };
    this.sampleRow = f32(V, "sample_row");
    this.sampler = new GpuSampler(gpu, this.ops, V, this.sampleRow, {
      radixSelect: opts.radixSelect,
    });
    const bindingLimit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
    this.kv = new KvPool(
      device,
      c,
      this.maxContext,
      opts.maxSequences ?? DEFAULT_MAX_SEQUENCES,
      bindingLimit,
      (_l, k, v, first, n) => this.prepareAttention(k, v, first, n),
    );
    this.embedOps = this.vocab.embed.map((chunk) =>
      this.ops.embed({
        ids: this.kv.ids,
        idsStride: this.kv.idsStride,
        table: chunk.w,
        first: chunk.first,
        rows: chunk.rows,
        hidden: D,
        out: this.act.x,
      })
    );
    this.outputOps = this.layers.map((_, l) => this.prepareOutput(l));
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
    this.pregating = opts.pregating
      ? new Pregating(gpu, this.ops, c, this.layers, this.act.x, T, opts.pregatingTopK)
      : null;
    this.finalNormOp = this.ops.rmsnorm({
      x: this.act.x,
      weight: finalNorm,
      out: this.act.xn,
      dim: D,
      groups: 1,
      eps: c.rmsNormEps,
    });
    this.headAll = this.prepareHead(this.act.xn, V);
    this.headPicked = this.prepareHead(this.act.xRows, V);
    if (!this.allResident && opts.headGate !== false) {
      const words = 3 * this.headAll.length;
      const args = device.createBuffer({
        label: "head.dispatch_args",
        size: (words + 1) * 4,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_DST,
      });
      // forward()'s passes write their arguments here (batches keep theirs in the step table)
      const src = device.createBuffer({
        label: "head.dispatch_args_src",
        size: Math.max(16, words * 4),
        usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      const flags = c.numLayers * c.numExperts;
      const op = this.ops.headGate({ missed: this.pool.missed, flags, args, argWords: words });
      this.headGate = { args, src, words, op, srcFor: "" };
    }
  }

  static async open(weights: ModelWeights, opts: GpuModelOptions = {}): Promise<GpuModel> {
    const ownsGpu = opts.gpu === undefined;
    const gpu = opts.gpu ?? await openGpu();
    if (opts.expertSlots === undefined) {
      const layouts = modelExpertLayouts(weights);
      opts = {
        ...opts,
        expertSlots: await fittingExpertSlots(
          gpu.device,
          weights.config,
          layouts,
          poolOptions(opts),
        ),
      };
    }
    // KV slabs: as many as asked, within the MiB budget, that the device can allocate
    const c = weights.config;
    const positions = Math.min(opts.maxContext ?? DEFAULT_MAX_CONTEXT, c.maxPositionEmbeddings);
    let wanted = opts.maxSequences ?? DEFAULT_MAX_SEQUENCES;
    if (opts.kvCacheMib !== undefined) {
      const fit = Math.floor((opts.kvCacheMib * 2 ** 20) / kvSlabBytes(c, positions));
      if (fit < 1) {
        throw new RangeError(
          `--kv-cache-mib ${opts.kvCacheMib} holds no sequence: one needs ` +
            `${(kvSlabBytes(c, positions) / 2 ** 20).toFixed(1)} MiB at context ${positions}`,
        );
      }
      wanted = Math.min(wanted, fit);
    }
    const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
    opts = {
      ...opts,
      maxSequences: await fittingSlabs(gpu.device, c, positions, wanted, limit),
    };
    const model = new GpuModel(gpu, weights, opts);
    model.ownsGpu = ownsGpu;
    try {
      if (model.allResident) await model.loadAllExperts();
      await model.cache.settle();
      await gpu.settle();
    } catch (e) {
      model.destroy();
      throw e;
    }
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

  /**
   * A KV slab for a sequence whose tokens will start with `prompt`: the free slab whose cached
   * tokens share the longest prefix with it (prefix reuse: `reuse` positions are already
   * computed), else the least recently used one. Throws KvPoolFullError when all are taken.
   */
  acquireSequence(prompt: readonly number[] = []): { seq: Sequence; reuse: number } {
    const { slab, reuse } = this.kv.acquire(prompt);
    let seq = this.seqs[slab];
    if (!seq) {
      const sampler = this.sampler.createSequence(this.maxContext + 1, {
        buffer: this.kv.ids,
        offset: slab * this.kv.idsStride * 4,
      });
      seq = this.seqs[slab] = { slab, sampler };
    }
    return { seq, reuse };
  }

  /** Gives a slab back; `cached` are the tokens whose KV rows it holds (kept for reuse). */
  releaseSequence(seq: Sequence, cached: readonly number[]): void {
    this.sets.close(seq.slab);
    this.kv.release(seq.slab, cached);
  }

  useExpertSet(seq: Sequence, mode: ExpertSetMode, masked: boolean): void {
    this.sets.open(seq.slab, mode, masked);
  }

  /** KV slab groups whose buffers exist (sequences alive at once need at most this many). */
  get kvCachesMade(): number {
    return this.kv.groupsMade;
  }

  /** KV slabs: the most sequences that can run at once. */
  get maxSequences(): number {
    return this.kv.slabs;
  }

  /** Slabs no sequence owns now. */
  get freeSequences(): number {
    return this.kv.free;
  }

  /** A fresh sequence; routerMasking routes it among resident experts only (approximate). With
   * `prefix`, a slab holding the longest cached prefix of those tokens is taken and the session
   * starts at that length (its first forward or decode feeds the rest). expertSet: see
   * SessionOptions and src/gpu/expert_sets.ts. */
  newSession(opts: SessionOptions = {}): GpuSession {
    return new GpuSession(
      this,
      opts.routerMasking ?? this.routerMaskingDefault,
      opts.prefix,
      opts.expertSet ?? this.expertSetDefault,
    );
  }

  // ---- preparation (once) ----

  /** input norm -> q/k/v -> q/k norms and RoPE (one op). */
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
    const [Nq, Nkv] = [Hq * Dh, Hkv * Dh];
    const projections = "qkv" in L.attnIn
      ? [this.ops.matmul({
        x: a.xn,
        w: L.attnIn.qkv,
        out: a.q,
        K: D,
        N: Nq + 2 * Nkv,
        outStride: Nq,
        outOffset: 0,
        accumulate: false,
        split: { k: Nq, v: Nq + Nkv, kOut: a.k, vOut: a.v },
      })]
      : [mm(L.attnIn.q, a.q, Nq), mm(L.attnIn.k, a.k, Nkv), mm(L.attnIn.v, a.v, Nkv)];
    return [
      this.ops.rmsnorm({ x: a.x, weight: L.inputNorm, out: a.xn, dim: D, groups: 1, eps }),
      ...projections,
      this.ops.headNormRope({
        q: a.q,
        k: a.k,
        qNorm: L.qNorm,
        kNorm: L.kNorm,
        table: this.rope,
        numHeads: Hq,
        numKvHeads: Hkv,
        headDim: Dh,
        eps,
      }),
    ];
  }

  /** Per KV buffer group: the step's K and V rows of its slabs into the caches, and those tokens'
   * attention over their own sequences. */
  private prepareAttention(
    kCache: GPUBuffer,
    vCache: GPUBuffer,
    firstSlab: number,
    slabs: number,
  ): Op[] {
    const c = this.config;
    const a = this.act;
    const { numHeads: Hq, numKvHeads: Hkv, headDim: Dh } = c;
    const group = { firstSlab, slabs };
    return [
      this.ops.kvStore({ k: a.k, v: a.v, kCache, vCache, width: Hkv * Dh, ...group }),
      this.ops.attention({
        q: a.q,
        kCache,
        vCache,
        out: a.att,
        numHeads: Hq,
        numKvHeads: Hkv,
        headDim: Dh,
        scale: 1 / Math.sqrt(Dh),
        ...group,
      }),
    ];
  }

  /** o_proj of the attention output, added into the residual stream. */
  private prepareOutput(l: number): Op {
    const { hiddenSize: D, numHeads: Hq, headDim: Dh } = this.config;
    return this.ops.matmul({
      x: this.act.att,
      w: this.layers[l].o,
      out: this.act.x,
      K: Hq * Dh,
      N: D,
      outStride: D,
      outOffset: 0,
      accumulate: true,
    });
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
          minResident: this.sched.layerQuota(l),
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

  /** SwiGLU experts for every (token, choice) whose expert is resident: one op per stage for
   * each group of pool buffers the layer's experts may live in (one, unless the baseline
   * "per-pool" dispatch is chosen or a layer's experts span several groups). */
  private prepareExperts(l: number): Op[] {
    const c = this.config;
    const a = this.act;
    const layout = this.pool.layouts[l];
    const common = {
      idx: a.idx[l],
      slots: this.pool.slotTable,
      slotBase: l * c.numExperts,
      k: c.topK,
      hidden: c.hiddenSize,
      inter: c.moeIntermediateSize,
      numExperts: c.numExperts,
    };
    // one binding count for every group, so groups of different sizes share the pipelines
    const bindings = Math.max(...this.pool.groups.map((g) => g.pools.length));
    const groups = this.pool.layerGroups(l).map((g) => ({
      pools: g.pools.map((p) => p.buffer ?? p.texture),
      firstSlot: g.firstSlot,
      slots: g.slots,
      slotsPerPool: this.pool.slotsPerPool,
      bindings,
    }));
    // the first op groups the layer's pairs by expert (prefill); the others reuse that grouping
    return [
      ...groups.map((group, i) =>
        this.ops.expertsGateUp({
          ...common,
          group,
          groupPairs: i === 0,
          poolDtype: layout.gateDtype,
          slotElems: layout.gateSlotElems,
          partOffset: 0,
          x: a.xn,
          missed: this.pool.missed,
          h: a.h,
        })
      ),
      ...groups.map((group) =>
        this.ops.expertsDown({
          ...common,
          group,
          groupPairs: false,
          poolDtype: layout.downDtype,
          slotElems: layout.downSlotElems,
          partOffset: layout.downOffsetElems,
          h: a.h,
          y: a.y,
        })
      ),
    ];
  }

  /** lm_head over the rows of x, chunk by chunk into logits [T, V]. */
  private prepareHead(x: GPUBuffer, V: number): IndirectOp[] {
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

  /** Context expert sets of the sequences that asked for one, and the pinned set (the
   * scheduler's). */
  get sets(): ExpertSets {
    return this.sched.sets;
  }

  private startPass(masked: boolean): void {
    this.sched.startPass(masked);
  }

  private router(l: number): Op[] {
    return this.sched.masking ? this.maskedRouterOps[l] : this.routerOps[l];
  }

  /**
   * Layers [from, to): attention, router, experts, combine. Under a budget each layer first
   * snapshots the residual x into row `snapRow` of its snapshot buffer (a rerun restarts there).
   */
  private encodeLayers(
    enc: GPUCommandEncoder,
    slabs: readonly number[],
    from: number,
    to: number,
    T: number,
    snapRow = 0,
  ): void {
    const D = this.config.hiddenSize;
    const groups = this.kv.groupsOf(slabs);
    let pass: GPUComputePassEncoder | null = null;
    for (let l = from; l < to; l++) {
      if (!this.allResident) {
        pass?.end();
        enc.copyBufferToBuffer(this.act.x, 0, this.act.snap[l], snapRow * D * 4, T * D * 4);
        pass = null;
      }
      pass ??= enc.beginComputePass();
      for (const op of this.attnInputs[l]) op.record(pass, T);
      for (const g of groups) for (const op of g.ops[l]) op.record(pass, T);
      this.outputOps[l].record(pass, T);
      for (const op of this.router(l)) op.record(pass, T);
      for (const op of this.expertOps[l]) op.record(pass, T);
      this.combineOps[l].record(pass, T);
      if (this.pregating) { for (const op of this.pregating.ops[l]) op.record(pass, T); }
    }
    pass?.end();
  }

  /**
   * Final norm and lm_head into act.logits: every row, only the last (into row 0), or the rows
   * `picked` (row i's logits into row i). `gate`: the step's lm_head dispatch arguments
   * (headArgs()) at that offset of that buffer; they are copied into place and the head gate may
   * zero them, so that a step that missed (its logits would be thrown away) skips the lm_head.
   */
  private encodeLogits(
    enc: GPUCommandEncoder,
    T: number,
    lastOnly: boolean,
    gate?: { from: GPUBuffer; offset: number },
    picked?: readonly number[],
  ): void {
    const D = this.config.hiddenSize;
    let pass = enc.beginComputePass();
    this.finalNormOp.record(pass, T);
    // rows the head runs on alone, copied to act.xRows: the picked ones, or the last
    const n = picked ? picked.length : lastOnly && T > 1 ? 1 : 0;
    if (n > 0) {
      pass.end();
      for (let i = 0; i < n; i++) {
        const r = picked ? picked[i] : T - 1;
        enc.copyBufferToBuffer(this.act.xn, r * D * 4, this.act.xRows, i * D * 4, D * 4);
      }
      pass = enc.beginComputePass();
    }
    const [ops, t] = n > 0 ? [this.headPicked, n] : [this.headAll, T];
    this.stats.headRows += t;
    const hg = this.headGate;
    if (gate !== undefined && hg !== null) {
      pass.end();
      enc.copyBufferToBuffer(gate.from, gate.offset, hg.args, 0, hg.words * 4);
      pass = enc.beginComputePass();
      hg.op.record(pass, 1);
      ops.forEach((op, i) => op.recordIndirect(pass, t, hg.args, i * 12));
    } else {
      for (const op of ops) op.record(pass, t);
    }
    pass.end();
  }

  /** The lm_head dispatch arguments of a step of T tokens (what encodeLogits' gate copies). */
  private headArgs(T: number, lastOnly: boolean): number[] {
    const [ops, t] = lastOnly && T > 1 ? [this.headPicked, 1] : [this.headAll, T];
    return ops.flatMap((op) => op.dispatchArgs(t));
  }

  /** Final norm and lm_head, then the logits rows copied for readback. `gated`: a pass under a
   * budget whose logits are thrown away if it missed (the head gate may skip the lm_head). */
  private encodeHead(enc: GPUCommandEncoder, T: number, lastOnly: boolean, gated = false): number {
    const hg = gated ? this.headGate : null;
    if (hg !== null) {
      // the arguments depend on the step's shape only: uploaded when it changes
      const shape = `${T}:${lastOnly && T > 1}`;
      if (hg.srcFor !== shape) {
        this.gpu.device.queue.writeBuffer(hg.src, 0, new Uint32Array(this.headArgs(T, lastOnly)));
        hg.srcFor = shape;
      }
      enc.clearBuffer(hg.args, hg.words * 4, 4); // the sticky word: one pass, its own flags
    }
    this.encodeLogits(enc, T, lastOnly, hg !== null ? { from: hg.src, offset: 0 } : undefined);
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
    this.gpu.check();
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
  private writeStep(T: number, pos0: number, slab: number): void {
    this.gpu.device.queue.writeBuffer(this.ops.step, 0, stepRecord(T, pos0, slab));
  }

  /** The sequence's token ids at positions pos0.. (the embedding gather reads them there). */
  private writeIds(seq: Sequence, ids: number[], pos0: number): void {
    const at = seq.sampler.idsOffset + pos0 * 4;
    this.gpu.device.queue.writeBuffer(seq.sampler.ids, at, Uint32Array.from(ids));
  }

  /** Embedding rows of ids[pos0 .. pos0 + T) into x (the Step uniform must be set). */
  private encodeEmbed(enc: GPUCommandEncoder, T: number): void {
    const pass = enc.beginComputePass();
    for (const op of this.embedOps) op.record(pass, T);
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
    // a prefill that chooses a context set runs exactly, layer by layer (its routing read back)
    const choosing = this.sets.pending(seq.slab);
    if (this.layerwise(ids.length) || choosing) {
      await this.prefillByLayer(seq, masked && !choosing, ids.length, pos0);
      return await this.headRows(ids.length, lastOnly);
    }
    const rows: Float32Array[] = [];
    const B = this.maxBatch;
    // Chunks before the last of a lastOnly prompt need no logits: no head, and (all resident)
    // their routing comes back through staging of their own, mapped without waiting, so every
    // chunk is submitted at once and the prompt waits for one readback instead of one a chunk.
    const early: Promise<Uint32Array>[] = [];
    try {
      for (let i = 0; i < ids.length; i += B) {
        const n = Math.min(B, ids.length - i);
        const last = i + B >= ids.length;
        if (lastOnly && !last && this.headlessChunks && this.allResident) {
          early.push(this.submitEarlyChunk(seq, masked, n, pos0 + i, early.length));
          continue;
        }
        const head = !lastOnly ? "all" : last ? "last" : this.headlessChunks ? "none" : "all";
        const r = await this.step(seq, masked, n, pos0 + i, head, early);
        if (!lastOnly || last) rows.push(...r);
      }
    } finally {
      await Promise.allSettled(early); // (a failed step leaves no mapping pending)
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
    head: "all" | "last" | "none",
    early: Promise<Uint32Array>[] = [],
  ): Promise<Float32Array[]> {
    const lastOnly = head !== "all";
    const c = this.config;
    const device = this.gpu.device;
    this.stats.steps++;
    this.writeStep(T, pos0, seq.slab);
    if (this.allResident) {
      this.startPass(masked);
      const enc = device.createCommandEncoder({ label: "forward" });
      this.encodeEmbed(enc, T);
      this.encodeLayers(enc, [seq.slab], 0, c.numLayers, T);
      const rows = head === "none" ? 0 : this.encodeHead(enc, T, lastOnly);
      this.encodeRouting(enc, T);
      const r = await this.submitAndRead(enc, rows);
      // the earlier chunks' routing first (each a full chunk of maxBatch tokens)
      for (const chunk of early) {
        this.sched.countHits(await chunk, this.maxBatch, 0, c.numLayers, this.maxBatch);
      }
      this.sched.countHits(r.routing, this.maxBatch, 0, c.numLayers, T);
      return r.logits;
    }
    return this.decodeOptimistic(seq, masked, T, lastOnly);
  }

  /**
   * A chunk before the last of a lastOnly prompt, every expert resident: embedding and layers, no
   * head; its routing [L, maxBatch, K] copied into routing staging of its own (the i-th of the
   * prompt's early chunks) and mapped without waiting. Resolves to that routing.
   */
  private submitEarlyChunk(
    seq: Sequence,
    masked: boolean,
    T: number,
    pos0: number,
    i: number,
  ): Promise<Uint32Array> {
    const { numLayers: L, topK: K } = this.config;
    const device = this.gpu.device;
    const perLayer = this.maxBatch * K * 4;
    const staging = this.chunkStaging[i] ??= device.createBuffer({
      label: `chunk routing ${i}`,
      size: L * perLayer,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.stats.steps++;
    this.writeStep(T, pos0, seq.slab);
    this.startPass(masked);
    const enc = device.createCommandEncoder({ label: "prompt chunk" });
    this.encodeEmbed(enc, T);
    this.encodeLayers(enc, [seq.slab], 0, L, T);
    for (let l = 0; l < L; l++) {
      enc.copyBufferToBuffer(this.act.idx[l], 0, staging, l * perLayer, T * K * 4);
    }
    device.queue.submit([enc.finish()]);
    this.stats.submits++;
    return staging.mapAsync(GPUMapMode.READ).then(() => {
      this.gpu.check();
      this.stats.readbacks++;
      try {
        return new Uint32Array(staging.getMappedRange()).slice();
      } finally {
        staging.unmap();
      }
    });
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
    this.sched.startStep();
    for (;;) {
      const enc = device.createCommandEncoder({ label: "decode" });
      const snap = FORWARD_SNAP_ROW * c.hiddenSize * 4;
      if (from > 0) {
        // the residual stream as it entered layer `from` (the failed pass went on from there)
        enc.copyBufferToBuffer(this.act.snap[from], snap, this.act.x, 0, T * c.hiddenSize * 4);
      } else {
        this.encodeEmbed(enc, T);
      }
      enc.clearBuffer(this.pool.missed);
      this.startPass(masked);
      this.encodeLayers(enc, [seq.slab], from, L, T, FORWARD_SNAP_ROW);
      // a masked pass's flags may come from absent experts picked with weight 0 (no miss: see
      // ExpertScheduler.firstMissedLayer), which the gate cannot tell: it keeps its lm_head
      const rows = this.encodeHead(enc, T, lastOnly, !this.sched.masking);
      this.encodeRouting(enc, T);
      const r = await this.submitAndRead(enc, rows);
      const l0 = this.sched.passResult(r.routing, r.missed, stride, counted, from, T);
      if (this.onPass) await this.onPass({ from, firstMissed: l0, routing: r.routing, stride, T });
      if (l0 < 0) return r.logits;
      this.sched.loadForMiss(r.routing, r.missed, stride, counted, l0, from, T);
      counted = l0 + 1;
      from = l0;
    }
  }

  /** With router masking, layer l's share of the expert slots (see ExpertScheduler). */
  layerQuota(l: number): number {
    return this.sched.layerQuota(l);
  }

  /** Whether a forward of T tokens goes layer by layer over the whole prompt (routing read
   * back per layer): prefill under a budget, and every step of the perLayerRouting baseline. */
  layerwise(T: number): boolean {
    return this.sched.layerwise(T);
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
   * The final residual stays in the prompt buffers (headRows or sampleAfterPrompt read it). A
   * sequence waiting for its context expert set gets it from this routing at the end.
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
    const run = this.chunkRunner(pos0, seq.slab);
    const attention = this.kv.groupsOf([seq.slab])[0].ops;
    const routing: Uint32Array[] | null = this.sets.pending(seq.slab) ? [] : null;
    for (const ch of chunks) run(ch, [], this.embedOps, [[a.x, p.x, D]]);
    for (let l = 0; l < c.numLayers; l++) {
      this.startPass(masked);
      // 1. attention + router, chunk by chunk
      for (const ch of chunks) {
        run(ch, [[p.x, a.x, D]], [
          ...this.attnInputs[l],
          ...attention[l],
          this.outputOps[l],
          ...this.router(l),
        ], [[a.x, p.x, D], [a.xn, p.xn, D], [a.idx[l], p.idx, K], [a.weights, p.weights, K]]);
      }
      const idx = await readU32(this.gpu, p.idx, 0, T * K);
      this.gpu.check();
      this.stats.readbacks++;
      this.onRouting?.(l, idx);
      routing?.push(idx);
      const now = this.sched.tick();
      // 2. experts, group by group
      for (const group of this.sched.prefillGroups(l, idx)) {
        this.sched.loadGroup(l, group, now);
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
    if (routing !== null) this.sets.prefilled(seq.slab, routing);
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
  private chunkRunner(pos0: number, slab: number) {
    const device = this.gpu.device;
    return (
      ch: { t0: number; n: number },
      ins: [GPUBuffer, GPUBuffer, number][],
      ops: Op[],
      outs: [GPUBuffer, GPUBuffer, number][],
    ) => {
      this.writeStep(ch.n, pos0 + ch.t0, slab);
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
    const run = this.chunkRunner(0, 0);
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

  get maxLanes(): number {
    return this.sched.maxLanes(this.maxBatch);
  }

  /** Most decode steps of `lanes` sequences one batch may hold: under a budget, a batch's rows
   * (steps x lanes) must fit one half of the snapshot buffers. */
  maxStepsFor(lanes: number): number {
    if (this.allResident) return MAX_STEPS_PER_BATCH;
    return Math.max(1, Math.floor(MAX_STEPS_PER_BATCH / lanes));
  }

  /** A free slot (not used by a batch still to be read) whose buffers hold at least these many
   * bytes, grown when needed. */
  private acquireSlot(tableBytes: number, routeBytes: number, stagingBytes: number): Slot {
    const device = this.gpu.device;
    const missBytes = this.allResident
      ? 0
      : MAX_STEPS_PER_BATCH * this.config.numLayers * this.config.numExperts * 4;
    const fits = (s: Slot) =>
      s.stepTable.size >= tableBytes && s.routeLog.size >= routeBytes &&
      s.staging.size >= stagingBytes + missBytes;
    const at = this.freeSlots.findIndex(fits);
    const old = at >= 0 ? this.freeSlots.splice(at, 1)[0] : this.freeSlots.pop();
    const grow = (b: GPUBuffer | undefined, bytes: number, label: string, usage: number) => {
      if (b && b.size >= bytes) return b;
      b?.destroy();
      return device.createBuffer({
        label,
        size: alignUp(Math.max(bytes, 16), STAGING_ALIGN),
        usage,
      });
    };
    const copy = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const slot: Slot = {
      stepTable: grow(old?.stepTable, tableBytes, "batch.steps", copy),
      routeLog: grow(old?.routeLog, routeBytes, "batch.routing_log", copy),
      missLog: missBytes === 0
        ? null
        : grow(old?.missLog ?? undefined, missBytes, "batch.miss_log", copy),
      staging: grow(
        old?.staging,
        stagingBytes + missBytes,
        "batch.readback",
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      ),
    };
    if (old) this.slots.splice(this.slots.indexOf(old), 1);
    this.slots.push(slot);
    return slot;
  }

  /** A batch that will not be read (dropped by the decode loop) gives its slot back: its GPU
   * work, already submitted, finishes before any later batch's. */
  discard(batch: Batch): void {
    const b = batch as ModelBatch;
    if (b.commands !== null) throw new Error("discard() of a batch never submitted");
    if (!b.released) {
      b.released = true;
      this.freeSlots.push(b.slot);
    }
    this.releaseRegion(b);
  }

  /**
   * Encodes the forwards of a batch, each one: its Step record, embedding (or, for a rerun, the
   * snapshot of its first layer), layers, and for sampling forwards the head and, per sampled row,
   * that row's logits and the sampler of its sequence; its routing (and under a budget its miss
   * flags) into the logs. Then the readback copies: each lane's end flag and sampled tokens,
   * routing, misses.
   */
  private encodeBatch(
    lanes: BatchLane[],
    masked: boolean,
    records: ForwardRecord[],
    steps: number,
  ): ModelBatch {
    const c = this.config;
    const { hiddenSize: D, numLayers: L, topK: K, numExperts: E, vocabSize: V } = c;
    const device = this.gpu.device;
    const routeWords = records.reduce((n, r) => n + r.T * L * K, 0);
    const samples = records.reduce((n, r) => n + r.samples.length, 0);
    // staging: lane ends | lane tokens | routing | misses
    const tokensAt: number[] = [];
    let at = lanes.length;
    for (const lane of lanes) {
      tokensAt.push(at);
      at += lane.count;
    }
    const routeAt = alignUp(at * 4, STAGING_ALIGN) / 4;
    const missAt = routeAt + alignUp(routeWords * 4, STAGING_ALIGN) / 4;
    const missRows = records.filter((r) => r.missRow >= 0).length;
    const samplesAt = records.length * STEP_BYTES;
    // then, under a budget, each record's lm_head dispatch arguments (for the head gate)
    const argsAt = samplesAt + samples * 16;
    const argBytes = (this.headGate?.words ?? 0) * 4;
    const tableBytes = argsAt + records.length * argBytes;
    const slot = this.acquireSlot(tableBytes, routeWords * 4, missAt * 4);
    const table = new Uint32Array(tableBytes / 4);
    this.startPass(masked);
    const masking = this.sched.masking;
    // the head gate: not on masked passes (see decodeOptimistic)
    const gated = (r: ForwardRecord) =>
      this.headGate !== null && !masking && r.missRow >= 0 && r.samples.length > 0;
    let sampleIndex = 0;
    records.forEach((r, i) => {
      const [slab, pos] = r.tokens[0];
      table.set(stepRecord(r.T, pos, slab, r.tokens), (i * STEP_BYTES) / 4);
      for (const s of r.samples) {
        table.set([1, s.pos - 1, s.pos, 0], (samplesAt + 16 * sampleIndex++) / 4);
      }
      if (gated(r)) table.set(this.headArgs(r.T, r.lastOnly), (argsAt + i * argBytes) / 4);
    });
    device.queue.writeBuffer(slot.stepTable, 0, table);
    const enc = device.createCommandEncoder({ label: "batch" });
    // the head gate's sticky word: no step of this batch has missed yet
    if (this.headGate !== null) enc.clearBuffer(this.headGate.args, this.headGate.words * 4, 4);
    sampleIndex = 0;
    records.forEach((r, i) => {
      enc.copyBufferToBuffer(slot.stepTable, i * STEP_BYTES, this.ops.step, 0, STEP_BYTES);
      if (r.from === 0) {
        this.encodeEmbed(enc, r.T);
      } else if (r.from < L) {
        // a rerun: the residual as it entered layer `from` in the failed pass
        const snap = r.snapRow * D * 4;
        enc.copyBufferToBuffer(this.act.snap[r.from], snap, this.act.x, 0, r.T * D * 4);
      } // (from === L: x already holds the residual, only the head runs)
      if (r.missRow >= 0) enc.clearBuffer(this.pool.missed);
      const slabs = r.tokens.map(([slab]) => slab);
      this.encodeLayers(enc, slabs, r.from, L, r.T, r.snapRow);
      if (r.samples.length > 0) {
        const gate = gated(r) ? { from: slot.stepTable, offset: argsAt + i * argBytes } : undefined;
        this.encodeLogits(enc, r.T, r.lastOnly, gate, r.headRows);
      }
      for (const s of r.samples) {
        const lane = lanes[s.lane];
        enc.copyBufferToBuffer(this.act.logits, s.row * V * 4, this.sampleRow, 0, V * 4);
        enc.copyBufferToBuffer(
          slot.stepTable,
          samplesAt + 16 * sampleIndex++,
          this.ops.step,
          0,
          16,
        );
        const pass = enc.beginComputePass();
        for (const op of this.sampler.ops(lane.seq.sampler, lane.sampling)) op.record(pass, 1);
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
    lanes.forEach((lane, b) => {
      const s = lane.seq.sampler;
      enc.copyBufferToBuffer(s.state, 0, slot.staging, b * 4, 4);
      enc.copyBufferToBuffer(
        s.ids,
        s.idsOffset + lane.first * 4,
        slot.staging,
        tokensAt[b] * 4,
        lane.count * 4,
      );
    });
    enc.copyBufferToBuffer(slot.routeLog, 0, slot.staging, routeAt * 4, routeWords * 4);
    if (missRows > 0) {
      enc.copyBufferToBuffer(slot.missLog!, 0, slot.staging, missAt * 4, missRows * L * E * 4);
    }
    return {
      lanes,
      steps,
      records,
      slot,
      masked,
      masking,
      commands: enc.finish(),
      tokensAt,
      routeAt,
      missAt,
      readBytes: missAt * 4 + missRows * L * E * 4,
      miss: null,
      released: false,
      regionFreed: false,
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
    const sample = { row: 0, lane: 0, pos: pos0 + T };
    let records: ForwardRecord[];
    // a prefill that chooses a context set runs exactly, layer by layer (its routing read back)
    const choosing = this.sets.pending(seq.slab);
    if (this.layerwise(T) || choosing) {
      // layer by layer, then a forward of no layer: the last chunk's head and the sampler
      await this.prefillByLayer(seq, masked && !choosing, T, pos0);
      const last = this.chunks(T).at(-1)!;
      const p = this.prompt!;
      this.chunkRunner(pos0, seq.slab)(last, [[p.x, this.act.x, this.config.hiddenSize]], [], []);
      records = [{
        T: last.n,
        tokens: this.rows(seq.slab, pos0 + last.t0, last.n),
        from: L,
        snapRow: 0,
        samples: [sample],
        lastOnly: true,
        routeAt: 0,
        missRow: -1,
      }];
    } else {
      records = [];
      let routeAt = 0;
      const half = this.snapRegion();
      for (const ch of this.chunks(T)) {
        const last = ch.t0 + ch.n === T;
        records.push({
          T: ch.n,
          tokens: this.rows(seq.slab, pos0 + ch.t0, ch.n),
          from: 0,
          snapRow: half,
          samples: last ? [sample] : [],
          lastOnly: true,
          routeAt,
          // (a budgeted model prefills one token this way: as a decode step, misses checked)
          missRow: this.allResident ? -1 : 0,
        });
        routeAt += ch.n * L * K;
      }
      this.stats.steps += records.length;
    }
    const b = this.encodeBatch([{ seq, first: pos0 + T, count: 1, sampling }], masked, records, 0);
    this.submit(b);
    return b;
  }

  /** Whether several prompts can be prefilled in one batch (every expert resident, so no prompt
   * goes layer by layer; the perLayerRouting baseline prefills one at a time). */
  get prefillsTogether(): boolean {
    return this.allResident && !this.perLayerRouting;
  }

  /**
   * Prefills several sequences' prompts in one batch (prefillsTogether only): their tokens packed
   * into forwards of at most maxBatch tokens (Step.tokens gives each its slab and position; a long
   * prompt spans forwards), the head over the rows of each forward that ends a prompt, and each
   * sequence's first token sampled. Submitted; lanes in the order given.
   */
  prefillTogether(
    joins: { seq: Sequence; ids: number[]; pos0: number; sampling: SamplingParams }[],
    masked: boolean,
  ): Batch {
    if (!this.prefillsTogether) throw new Error("prefillTogether() needs every expert resident");
    const { numLayers: L, topK: K } = this.config;
    const flat: { slab: number; pos: number; lane: number; last: boolean }[] = [];
    joins.forEach((j, lane) => {
      this.writeIds(j.seq, j.ids, j.pos0);
      j.ids.forEach((_, t) => {
        flat.push({ slab: j.seq.slab, pos: j.pos0 + t, lane, last: t === j.ids.length - 1 });
      });
    });
    const records: ForwardRecord[] = [];
    let routeAt = 0;
    for (let t0 = 0; t0 < flat.length; t0 += this.maxBatch) {
      const part = flat.slice(t0, t0 + this.maxBatch);
      const samples = part.flatMap((tk, row) =>
        tk.last ? [{ row, lane: tk.lane, pos: tk.pos + 1 }] : []
      );
      // the head on the last row only when that is the one row sampled; else (compactHead) on
      // the sampled rows only, when they are not all
      const lastOnly = samples.length === 1 && samples[0].row === part.length - 1;
      const compact = !lastOnly && this.compactHead && samples.length > 0 &&
        samples.length < part.length;
      records.push({
        T: part.length,
        tokens: part.map((tk) => [tk.slab, tk.pos]),
        from: 0,
        snapRow: 0,
        samples: lastOnly || compact ? samples.map((sm, i) => ({ ...sm, row: i })) : samples,
        lastOnly,
        headRows: compact ? samples.map((sm) => sm.row) : undefined,
        routeAt,
        missRow: -1,
      });
      routeAt += part.length * L * K;
    }
    this.stats.steps += records.length;
    const lanes = joins.map((j) => ({
      seq: j.seq,
      first: j.pos0 + j.ids.length,
      count: 1,
      sampling: j.sampling,
    }));
    const b = this.encodeBatch(lanes, masked, records, 0);
    this.submit(b);
    return b;
  }

  /** Step.tokens rows of n tokens of one sequence from position pos0. */
  private rows(slab: number, pos0: number, n: number): [number, number][] {
    return Array.from({ length: n }, (_, t) => [slab, pos0 + t]);
  }

  /**
   * First snapshot row of a region no batch in flight holds (under a budget), so a batch cannot
   * overwrite the rows a repair of an earlier one restarts from. Held until the batch is read
   * without a miss, its repair is read, or it is discarded.
   */
  private snapRegion(): number {
    if (this.allResident) return 0;
    const r = this.freeRegions.pop();
    if (r === undefined) throw new Error(`all ${SNAP_REGIONS} snapshot regions are held`);
    return r * MAX_STEPS_PER_BATCH;
  }
  private freeRegions = Array.from({ length: SNAP_REGIONS }, (_, i) => SNAP_REGIONS - 1 - i);

  /** Gives a batch's snapshot region back (once). */
  private releaseRegion(b: ModelBatch): void {
    if (this.allResident || b.regionFreed || b.records.length === 0) return;
    b.regionFreed = true;
    if (b.records[0].from === this.config.numLayers) return; // a head-only forward holds none
    this.freeRegions.push(Math.floor(b.records[0].snapRow / MAX_STEPS_PER_BATCH));
  }

  encodeSteps(lanes: LaneStep[], masked: boolean, n: number): Batch {
    const B = lanes.length;
    if (n < 1 || n > this.maxStepsFor(B) || B < 1 || B > this.maxBatch) {
      throw new RangeError(
        `a batch has 1..${this.maxStepsFor(B)} steps of 1..${this.maxBatch} sequences, not ` +
          `${n} of ${B}`,
      );
    }
    const { numLayers: L, topK: K } = this.config;
    const records: ForwardRecord[] = [];
    const half = this.snapRegion();
    for (let i = 0; i < n; i++) {
      records.push({
        T: B,
        tokens: lanes.map((l) => [l.seq.slab, l.front + i]),
        from: 0,
        snapRow: half + i * B,
        samples: lanes.map((l, b) => ({ row: b, lane: b, pos: l.front + i + 1 })),
        lastOnly: false,
        routeAt: i * B * L * K,
        missRow: this.allResident ? -1 : i,
      });
    }
    const batchLanes = lanes.map((l) => ({
      seq: l.seq,
      first: l.front + 1,
      count: n,
      sampling: l.sampling,
    }));
    return this.encodeBatch(batchLanes, masked, records, n);
  }

  submit(batch: Batch): void {
    const b = batch as ModelBatch;
    if (b.commands === null) throw new Error("batch submitted twice");
    this.gpu.device.queue.submit([b.commands]);
    b.commands = null;
    this.stats.submits++;
    this.stats.steps += b.steps;
    this.stats.decodeSteps += b.steps;
    this.stats.laneSteps += b.steps * b.lanes.length;
  }

  async read(batches: Batch[], meanwhile?: () => void): Promise<BatchResult[]> {
    const list = batches as ModelBatch[];
    const mapped = list.map((b) => b.slot.staging.mapAsync(GPUMapMode.READ, 0, b.readBytes));
    meanwhile?.();
    await Promise.all(mapped);
    this.gpu.check();
    this.stats.readbacks++;
    return list.map((b) => this.parse(b));
  }

  /** A mapped batch's results; the expert cache learns each forward's routing up to the first
   * real miss (kept in b.miss for repair()). */
  private parse(b: ModelBatch): BatchResult {
    const { numLayers: L, topK: K, numExperts: E } = this.config;
    const staging = b.slot.staging;
    let words: Uint32Array;
    try {
      words = new Uint32Array(staging.getMappedRange(0, b.readBytes)).slice();
    } finally {
      staging.unmap();
      b.released = true;
      this.freeSlots.push(b.slot);
    }
    const lanes = b.lanes.map((lane, i) => ({
      tokens: Array.from(words.subarray(b.tokensAt[i], b.tokensAt[i] + lane.count)),
      end: words[i] === NO_END ? -1 : words[i],
    }));
    const route = words.subarray(b.routeAt);
    const miss = words.subarray(b.missAt);
    this.sched.masking = b.masking;
    let invalidAt = -1;
    for (const [i, r] of b.records.entries()) {
      const routing = route.subarray(r.routeAt, r.routeAt + L * r.T * K);
      const flags = r.missRow < 0 ? null : miss;
      if (!r.rerun) this.sched.startStep();
      // a repair's first layer was final and counted when its miss was loaded
      const counted = r.rerun ? r.from + 1 : r.from;
      const l0 = this.sched.passResult(
        routing,
        flags,
        r.T,
        counted,
        r.from,
        r.T,
        r.missRow * L * E,
      );
      if (l0 < 0) continue;
      invalidAt = i;
      b.miss = {
        routing: routing.slice(),
        missed: miss.slice(r.missRow * L * E, (r.missRow + 1) * L * E),
        l0,
        record: r,
        step: i,
      };
      break;
    }
    if (b.miss === null) this.releaseRegion(b);
    return { lanes, invalidAt };
  }

  repair(batch: Batch): Batch {
    const b = batch as ModelBatch;
    const m = b.miss;
    if (m === null) throw new Error("repair() of a batch without a miss");
    b.miss = null;
    // the repair restarts from this batch's snapshot rows: it holds the region from now on
    b.regionFreed = true;
    this.sched.masking = b.masking;
    this.sched.loadForMiss(
      m.routing,
      m.missed,
      m.record.T,
      m.record.rerun ? m.record.from + 1 : m.record.from, // (see parse())
      m.l0,
      m.record.from,
      m.record.T,
    );
    const rerun: ForwardRecord = { ...m.record, from: m.l0, routeAt: 0, missRow: 0, rerun: true };
    // the dropped steps ran on invalid tokens and may have set the end flags
    for (const lane of b.lanes) {
      this.gpu.device.queue.writeBuffer(lane.seq.sampler.state, 0, Uint32Array.of(NO_END));
    }
    const lanes = b.lanes.map((l) => ({ ...l, first: l.first + m.step, count: 1 }));
    const out = this.encodeBatch(lanes, b.masked, [rerun], 0);
    this.submit(out);
    return out;
  }

  /** Frees every GPU buffer the model made. */
  destroy(): void {
    for (const b of this.chunkStaging) b.destroy();
    this.pool.destroy();
    this.pregating?.destroy();
    this.headGate?.args.destroy();
    this.headGate?.src.destroy();
    const a = this.act;
    const weights: WeightRef[] = [
      ...this.vocab.lmHead.map((c) => c.w),
      ...this.vocab.embed.map((c) => c.w),
      ...this.layers.flatMap((l) => [...Object.values(l.attnIn), l.o, l.router]),
    ];
    // a tied table is one set of buffers for both
    for (const b of new Set(weights.map((w) => w.buffer ?? w.texture))) b.destroy();
    const buffers: GPUBuffer[] = [
      this.rope,
      this.finalNorm,
      ...this.layers.flatMap((l) => [l.inputNorm, l.qNorm, l.kNorm, l.postNorm]),
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
      a.xRows,
      a.logits,
      a.staging,
      this.sampleRow,
      ...this.slots.flatMap((s) => [s.stepTable, s.routeLog, s.staging]),
      ...this.slots.flatMap((s) => s.missLog ? [s.missLog] : []),
    ];
    for (const b of buffers) b.destroy();
    for (const seq of this.seqs) if (seq) this.sampler.destroySequence(seq.sampler);
    this.kv.destroy();
    this.sampler.destroy();
    this.destroyPromptBuffers();
    this.ops.destroy();
    // a device this model opened goes with it (llvmpipe devices left to process exit each keep
    // threads alive until teardown)
    if (this.ownsGpu) this.gpu.device.destroy();
  }
}
