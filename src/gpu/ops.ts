/**
 * The WGSL kernels behind OpsApi (src/gpu/ops_api.ts). Each op is prepared once: its pipeline(s),
 * one bind group and a small uniform buffer of its static sizes. record() only sets the pipeline
 * and bind group and dispatches; it allocates nothing and writes no buffer.
 */
import { type Gpu, scopedOn } from "./device.ts";
import {
  type BufferWeight,
  type ExpertGroupBinding,
  type IndirectOp,
  MAX_STEP_TOKENS,
  type Op,
  type OpsApi,
  type WeightDType,
  type WeightRef,
} from "./ops_api.ts";
import {
  type BindingKind,
  type KernelSpec,
  Shaders,
  type WeightLoader,
  weightLoader,
} from "./shader.ts";
import { lcm, weightBlock, weightBytes, weightElems } from "./weight_dtype.ts";
import { MAX_EXPERTS, MAX_HEAD_DIM } from "./kernel_interface.ts";

// ---- limits and layout shared by the kernels ----

/** WebGPU's default maxComputeWorkgroupsPerDimension; larger dispatches go 2-D. */
const MAX_GROUPS_PER_DIM = 65535;
/** Size of the Step uniform: n_tokens, pos0, kv_len, pad (u32 each), then the token table. */
export const STEP_BYTES = 16 + MAX_STEP_TOKENS * 16;
/** llvmpipe ends a shader invocation after this many loop iterations in total (gallivm's
 * LP_MAX_TGSI_LOOP_ITERATIONS), silently: kernels must stay under it. */
const LLVMPIPE_LOOP_LIMIT = 65535;
/** Elements per load_w4 call: inner dimensions and offsets must be multiples of it. */
const VEC = 4;
/** Workgroup size of the simple kernels (rope, kv_store, moe_combine, experts_*). */
const WG_64 = 64;
const WG_TOPK = 8;

// ---- matmul (kernels/matmul.wgsl: ROWS, WG, MAX_TOKENS) ----

/** Output rows per matmul invocation and its workgroup size. */
const MATMUL_ROWS = 8;
/** The quantized types matmul reads in rows8 (src/gpu/resident.ts repacks them): their loader and
 * the elements of one 8-row group of blocks. */
const QUANT_ROWS8: Partial<Record<string, { loader: WeightLoader; groupElems: number }>> = {
  q8_0: { loader: "q8_0_rows8", groupElems: 8 * 32 },
  q4_0: { loader: "q4_0_rows8", groupElems: 8 * 32 },
  q5_0: { loader: "q5_0_rows8", groupElems: 8 * 32 },
  q6_k: { loader: "q6_k_rows8", groupElems: 8 * 256 },
  q4_k: { loader: "q4_k_rows8", groupElems: 8 * 256 },
};

/** Rows (and columns) of a block of "rows8" weights (WeightRef.layout; matmul.wgsl's BLOCKED). */
export const ROWS8 = 8;
if (MATMUL_ROWS !== ROWS8) throw new Error("a matmul invocation must own one block of rows8");
const WG_MATMUL = 16;
/** Tokens per matmul invocation in prefill (each weight load reused this often), and from how
 * many tokens in a step on: 8 from 2, 16 from MATMUL_WIDE_FROM (unless the Ops option
 * `wideTiles` is false, the baseline). 16 is the kernel's MAX_TOKENS. */
const MATMUL_PREFILL_TOKENS = 8;
const MATMUL_PREFILL_FROM = 2;
const MATMUL_WIDE_TOKENS = 16;
const MATMUL_WIDE_FROM = 32;
/** Lanes of the kernels whose lanes share rows through workgroup memory (matvec.wgsl,
 * experts_gate_up_matvec.wgsl): 256 on GPUs; 64 on llvmpipe, where they serve tests only and a
 * 256-lane workgroup compiles 10x slower (13.5 s against 1.3 s for the 8-token matvec). */
const WG_SHARED = { gpu: 256, llvmpipe: 64 };
/** matmul_tiled.wgsl's lanes along each side of a tile (TM; 4 rows / tokens each): 16 on GPUs,
 * 4 on llvmpipe (its 256-lane tile compiled for 2 minutes, a 64-lane one 19 s, 16 lanes 3 s). */
const TILE_LANES = { gpu: 16, llvmpipe: 4 };
/** The most tokens a matvec.wgsl workgroup computes (steps of more take the tiles). */
const MATVEC_TOKENS = 8;
/** matmul_tiled.wgsl's columns a slice (K a multiple of it). */
const TILED_BK = 32;
/** Rows of a step from which rmsnorm takes a lane per row (rmsnorm_lanes.wgsl, with laneNorms). */
const LANE_NORM_ROWS = 8;

/** Workgroups a matmul keeps at least when padding picks its tiles (4 per llvmpipe thread). */
const MATMUL_MIN_GROUPS = 8;

/** Tokens per matmul invocation for a step of t tokens over `rowSets` sets of 8 rows, with
 * 16-token tiles on (wideTiles): `padded` (the default), the tile that computes fewer tokens past
 * the step's (16 when its last tile would pad fewer than 8: steps of 9-16, 25-32, 41-48 ...
 * tokens; a 16-token tile costs ~1.8 of an 8-token one on llvmpipe, so this is also the cheaper)
 * unless 16-token tiles would leave fewer than MATMUL_MIN_GROUPS workgroups; else 16 from
 * MATMUL_WIDE_FROM (the baseline, `paddedTiles: false`). */
export function matmulTokens(t: number, rowSets: number, wide: boolean, padded: boolean): number {
  if (t < MATMUL_PREFILL_FROM) return 1;
  if (!wide) return MATMUL_PREFILL_TOKENS;
  if (!padded) return t >= MATMUL_WIDE_FROM ? MATMUL_WIDE_TOKENS : MATMUL_PREFILL_TOKENS;
  const tiles = Math.ceil(t / MATMUL_WIDE_TOKENS);
  const pad = tiles * MATMUL_WIDE_TOKENS - t;
  const groups = Math.ceil(rowSets * tiles / WG_MATMUL);
  return pad < MATMUL_PREFILL_TOKENS && (groups >= MATMUL_MIN_GROUPS || t >= MATMUL_WIDE_FROM)
    ? MATMUL_WIDE_TOKENS
    : MATMUL_PREFILL_TOKENS;
}

// ---- attention (kernels/attention*.wgsl) ----

/** Lanes of a one-pass attention workgroup = positions per block (WG of attention.wgsl). */
const WG_ATTENTION = 64;
/** attention.wgsl gives each lane 4 values of the head dim (MAX_HEAD_DIM = 4 * WG_ATTENTION). */
if (MAX_HEAD_DIM !== 4 * WG_ATTENTION) throw new Error("MAX_HEAD_DIM must be 4 * WG_ATTENTION");
/** Invocations per (token, kv head) of attention_scores.wgsl (its LANES). */
const ATTENTION_LANES = 64;
/** Most query heads per kv head (MAX_GROUP of attention_scores/values.wgsl). */
const MAX_GROUP = 16;
/** attention_scores.wgsl: most positions per lane (MAX_SPAN) and accumulators, query heads x
 * positions (MAX_ACC). */
const ATTENTION_MAX_SPAN = 8;
const ATTENTION_MAX_ACC = 32;

/** Positions per lane of attention_scores.wgsl for `group` query heads per kv head: as many as
 * its accumulators hold (group 8: 4, group 2: 8, group 16: 2). */
function scoreSpan(group: number): number {
  return Math.max(1, Math.min(ATTENTION_MAX_SPAN, Math.floor(ATTENTION_MAX_ACC / group)));
}

/** attention_values.wgsl: most head-dim chunks per lane (MAX_CHUNKS). */
const ATTENTION_MAX_CHUNKS = 4;

/** Head-dim chunks (of 4) per lane of attention_values.wgsl for `group` query heads per kv
 * head and `d4` chunks a head: the most of 4, 2, 1 that divides d4 and fits the accumulators. */
function valueChunks(group: number, d4: number): number {
  for (let c = ATTENTION_MAX_CHUNKS; c > 1; c /= 2) {
    if (d4 % c === 0 && group * c <= ATTENTION_MAX_ACC) return c;
  }
  return 1;
}
/** Workgroup sizes of attention_softmax.wgsl and attention_values.wgsl. */
const WG_SOFTMAX = 8;
const WG_VALUES = 32;
/** attention_tiled.wgsl: rows (token, query head) a workgroup holds, its lanes, and the K/V tile
 * lengths tried, longest first, until the workgroup memory fits the adapter's limit. */
const ATTENTION_TILE_ROWS = 16;
const WG_ATTENTION_TILES = 64;
const ATTENTION_TILE_POSITIONS = [32, 16, 8];
/** Steps of at least this many tokens take the tiled attention where it is chosen (prefill);
 * fewer (decode) keep the one-pass kernel, whose workgroup per (token, head) gives a single
 * sequence's step more workgroups. */
const ATTENTION_TILES_MIN_TOKENS = 16;

/** Workgroup memory of attention_tiled.wgsl for `d4` chunks a head and K/V tiles of `bk`
 * positions: q rows, one K/V tile (rows padded by a chunk), scores, row scales, the run. */
function attentionTileBytes(d4: number, bk: number): number {
  return (ATTENTION_TILE_ROWS * d4 + bk * (d4 + 1)) * 16 + ATTENTION_TILE_ROWS * (bk + 1) * 4 +
    16;
}

/** Most bytes of attention scores [T, Hq, positions + 1] kept for the three-pass attention;
 * steps with more tokens use the one-pass kernel (slower on llvmpipe, no scratch). 80 MiB: a
 * 128-token step of Qwen3-30B-A3B's 32 heads at the default 4096 positions (67.1 MB). */
const ATTENTION_SCRATCH_BYTES = 80 << 20;

// ---- experts (kernels/experts_*.wgsl, moe_tiles.wgsl) ----

/** Output rows per invocation of experts_gate_up*.wgsl and experts_down.wgsl (their ROWS). */
const ROWS = 4;
/** Pairs per tile of the tiled expert kernels (their TILE override): small tiles while few pairs
 * share an expert (compute on empty tile places is wasted), large ones from
 * EXPERT_LARGE_TILE_PAIRS pairs on (8 per expert on average for 128 experts, top-8). */
const EXPERT_TILES = [4, 8];
const EXPERT_LARGE_TILE_PAIRS = 1024;
/** Workgroup size of the tiled expert kernels, and the rows per invocation of
 * experts_down_tiled.wgsl. */
const WG_TILED = 16;
const ROWS_DOWN_TILED = 8;
/** From this many (token, expert) pairs on, the expert stages group pairs by expert: each weight
 * load then serves a tile of pairs (below, pairs rarely share an expert). */
const EXPERT_TILES_MIN_PAIRS = 128;
/** Most pairs moe_tiles.wgsl groups within llvmpipe's loop limit (it loops about
 * 2.2 * pairs + 3 * MAX_EXPERTS times); larger steps fall back to the per-pair kernels. */
const EXPERT_TILES_MAX_PAIRS = 28000;

/** An op was prepared with sizes the kernels cannot handle. */
export class OpConfigError extends Error {
  override name = "OpConfigError";
  constructor(op: string, detail: string) {
    super(`${op}: ${detail}; fix the sizes passed when preparing the op`);
  }
}

/** `groups` workgroups as (x, y, 1): y > 1 only past what one dimension allows. */
function linearGroups(groups: number): [number, number, number] {
  if (groups <= 0) return [0, 0, 0];
  if (groups <= MAX_GROUPS_PER_DIM) return [groups, 1, 1];
  return [MAX_GROUPS_PER_DIM, Math.ceil(groups / MAX_GROUPS_PER_DIM), 1];
}

/** Dispatches `groups` workgroups, as (x, y) when more than one dimension allows. */
function dispatchLinear(pass: GPUComputePassEncoder, groups: number): void {
  const [x, y] = linearGroups(groups);
  if (x > 0) pass.dispatchWorkgroups(x, y);
}

/** A prepared dispatch: pipeline chosen by token count, fixed bind group, groups by token count. */
class PreparedOp implements IndirectOp {
  constructor(
    readonly name: string,
    private bindGroup: GPUBindGroup,
    private pipelineFor: (nTokens: number) => GPUComputePipeline,
    private groupsFor: (nTokens: number) => number,
  ) {}

  record(pass: GPUComputePassEncoder, nTokens: number): void {
    pass.setPipeline(this.pipelineFor(nTokens));
    pass.setBindGroup(0, this.bindGroup);
    dispatchLinear(pass, this.groupsFor(nTokens));
  }

  dispatchArgs(nTokens: number): [number, number, number] {
    return linearGroups(this.groupsFor(nTokens));
  }

  recordIndirect(
    pass: GPUComputePassEncoder,
    nTokens: number,
    args: GPUBuffer,
    offset: number,
  ): void {
    pass.setPipeline(this.pipelineFor(nTokens));
    pass.setBindGroup(0, this.bindGroup);
    pass.dispatchWorkgroupsIndirect(args, offset);
  }
}

/** An op with several implementations: pick(nTokens) says which ops to record. */
class ChoiceOp implements Op {
  constructor(readonly name: string, private pick: (nTokens: number) => Op[]) {}

  record(pass: GPUComputePassEncoder, nTokens: number): void {
    for (const op of this.pick(nTokens)) op.record(pass, nTokens);
  }
}

/** Preludes of the tiled expert kernels (kernels/moe_tile.wgsl: a tile's entry in moe_tiles.wgsl's
 * list). */
export const TILED_EXPERT_PRELUDE = ["moe_tile"];

/** Most tiles of `tile` pairs that `pairs` pairs make: full tiles plus a partial one per expert. */
function maxTiles(pairs: number, tile: number): number {
  return ceilDiv(pairs, tile) + Math.min(MAX_EXPERTS, pairs);
}

/** Which tiling a step of `pairs` pairs takes: an index into EXPERT_TILES, or -1 for none (the
 * per-pair kernels; callers index their tiled ops with it and fall back on undefined). The large
 * tile from EXPERT_LARGE_TILE_PAIRS pairs, or with `experts` known (wide tiles) from 8 pairs per
 * expert on average: a 64-token step of a model with 16 or 32 experts fills tiles of 8, one of
 * Qwen3-30B-A3B (128 experts, top-8: 4 per expert) does not. */
function tiling(pairs: number, experts?: number): number {
  if (pairs < EXPERT_TILES_MIN_PAIRS || pairs > EXPERT_TILES_MAX_PAIRS) return -1;
  const large = experts === undefined
    ? EXPERT_LARGE_TILE_PAIRS
    : EXPERT_TILES[EXPERT_TILES.length - 1] * experts;
  return pairs < large ? 0 : 1;
}

/** A uniform field: u32 unless wrapped as { f32 }. */
type Field = number | { f32: number };

function ceilDiv(a: number, b: number): number {
  return Math.ceil(a / b);
}

function checkMultiple(op: string, what: string, value: number, of: number): void {
  if (value % of !== 0) {
    throw new OpConfigError(op, `${what} = ${value} must be a multiple of ${of}`);
  }
}

/** Weight offsets must keep load_w4 on whole u32 words (bf16/f16: even) and quantized weights
 * on whole blocks. */
function checkWeightOffset(op: string, dtype: WeightDType, offsetElems: number): void {
  const block = weightBlock(dtype).elems;
  if (block > 1) checkMultiple(op, `${dtype} weight offset (elements)`, offsetElems, block);
  else if (dtype !== "f32") checkMultiple(op, "weight offsetElems", offsetElems, 2);
}

/** A group's pool buffers padded to its binding count (with the last pool: slots past the group's
 * are never addressed), after checking the group is consistent. */
/** A group's pool bindings: their kinds and resources (weight textures bound as views, every pool
 * of a group the same kind). */
function poolResources(
  op: string,
  g: ExpertGroupBinding,
): { kinds: BindingKind[]; resources: (GPUBuffer | GPUTextureView)[]; texture: boolean } {
  const texture = g.pools[0] instanceof GPUTexture;
  if (g.pools.some((p) => (p instanceof GPUTexture) !== texture)) {
    throw new OpConfigError(op, "a group's pools are all buffers or all textures");
  }
  return {
    kinds: g.pools.map(() => texture ? "texture" : "read"),
    resources: g.pools.map((p) => p instanceof GPUTexture ? p.createView() : p),
    texture,
  };
}

function groupBinding(op: string, g: ExpertGroupBinding): ExpertGroupBinding {
  const count = g.bindings ?? g.pools.length;
  if (g.pools.length < 1 || count < g.pools.length) {
    throw new OpConfigError(op, `${g.pools.length} pool buffers for ${count} pool bindings`);
  }
  if (g.slotsPerPool < 1 || g.slots > g.pools.length * g.slotsPerPool) {
    throw new OpConfigError(
      op,
      `${g.slots} slots do not fit ${g.pools.length} pool buffers of ${g.slotsPerPool} slots`,
    );
  }
  const last = g.pools[g.pools.length - 1];
  return { ...g, pools: [...g.pools, ...Array(count - g.pools.length).fill(last)] };
}

/** The kernel choices whose defaults differ by adapter, in one place: llvmpipe's (lanes owning
 * rows, three-pass attention, a lane per norm row, weights in textures) and every other adapter's
 * (workgroups sharing rows, one-pass attention, a workgroup per norm row, weights in buffers).
 * Benchmarks and tests force either set. */
export const ADAPTER_CHOICES = {
  llvmpipe: {
    coalescedMatvec: false,
    workgroupTiles: false,
    laneNorms: true,
    attentionScratchBytes: ATTENTION_SCRATCH_BYTES,
    sharedSizes: "llvmpipe",
    attentionTiles: false,
    textureWeights: true,
  },
  gpu: {
    coalescedMatvec: true,
    workgroupTiles: true,
    laneNorms: false,
    attentionScratchBytes: 0,
    sharedSizes: "gpu",
    attentionTiles: false,
    textureWeights: false,
  },
} as const satisfies Record<string, OpsOptions>;

/** Kernel choices (benchmarks and tests select the baselines). */
export interface OpsOptions {
  /** Bytes of attention scores kept for the three-pass attention (0: always one pass; default
   * ATTENTION_SCRATCH_BYTES on llvmpipe, where three passes are faster, 0 on other adapters,
   * where the one-pass kernel was 6.4x faster over 512 positions on an H200). */
  attentionScratchBytes?: number;
  /** Prefill tiles (default true; false: the kernels issue's baseline): matmul tiles of 16 tokens
   * from 32 tokens a step (else 8), and the expert kernels' large tile chosen by pairs per
   * expert when the op is told the model's expert count (else from EXPERT_LARGE_TILE_PAIRS). */
  wideTiles?: boolean;
  /** Workgroup order of the tiled expert kernels (default true; false: tile-major, the baseline):
   * tiles interleaved through the grid so that llvmpipe's threads, each given one contiguous
   * share of it, all get real tiles (tile-major puts them all in the first share). */
  interleavedTiles?: boolean;
  /** Attention passes with more work per lane (default true; false: the baseline): scores over
   * several positions per lane, values over several head-dim chunks per lane, so each K, V and
   * probability load serves more multiply-adds (attention_scores.wgsl SPAN, attention_values.wgsl
   * CHUNKS). */
  attentionBlocks?: boolean;
  /** The q/k heads' norm and RoPE with one lane per (token, head) row, and rmsnorm too for steps
   * of LANE_NORM_ROWS rows or more (default on llvmpipe; false: a workgroup of 64 per row, the
   * baseline, whose barriers cost llvmpipe more than the row's arithmetic, and the default on
   * other adapters, where a lane's row of 2048 is uncoalesced: 0.73 ms a 128-row rmsnorm on an
   * H200). Bit-identical either way. */
  laneNorms?: boolean;
  /** Each pipeline's private arrays sized to what it uses (default true; false: the baseline,
   * every array at the kernel's declared maximum): matmul's accumulators to its tokens, the tiled
   * expert kernels' to their tile, attention's to its heads x positions or chunks. llvmpipe keeps
   * an array the pipeline fills whole in registers and one it fills in part in memory (the
   * 8-token matmul 1.55x slower). Bit-identical either way (KernelSpec.sizes). */
  exactArrays?: boolean;
  /** With wideTiles, a step's matmul tile is the one that pads fewer tokens (default true: 16
   * tokens for steps of 9-16, 25-32, 41-48 ... tokens, 8 otherwise; false: the baseline, 16 from
   * 32 tokens a step). Bit-identical either way. */
  paddedTiles?: boolean;
  /** Steps of up to MATVEC_TOKENS tokens (decode) multiply by f16/bf16/f32 matrices (any dtype
   * row-major) in matvec.wgsl: a workgroup of 256 lanes per 8 rows reading consecutive words,
   * partial sums added in workgroup memory; both expert stages of steps too few pairs for the
   * tiled kernels likewise (experts_gate_up/down_matvec.wgsl: a workgroup per pair and 8 rows).
   * Default on any adapter but llvmpipe, which wants 8 (4) whole rows a lane; false there: the
   * kernels issue's baseline. Sums in another order: within the f32 tolerance of the reference,
   * not bit-identical to matmul.wgsl / experts_gate_up.wgsl. */
  coalescedMatvec?: boolean;
  /** Prefill matmuls (steps past matvec.wgsl's, where K is a multiple of 32) in
   * matmul_tiled.wgsl: 64 rows x 64 tokens a workgroup, each slice of 32 columns of W and x staged
   * in workgroup memory; and the tiled expert stages in experts_*_tiled_wg.wgsl: a workgroup per
   * (tile of one expert's pairs, 8 rows), its lanes reading consecutive words that serve the
   * tile's pairs (default on any adapter but llvmpipe, where staging through workgroup memory
   * measured 0.59x; false there: matmul.wgsl's and experts_*_tiled.wgsl's tiles in a lane, the
   * baseline). Sums in another order: within the f32 tolerance of the reference. */
  workgroupTiles?: boolean;
  /** Workgroup sizes of those row-sharing kernels: "gpu" (256 lanes; matmul_tiled 16 x 16) or
   * "llvmpipe" (64; 4 x 4); default by adapter. Tests force "gpu" on llvmpipe to run the sizes a
   * GPU runs. */
  sharedSizes?: "gpu" | "llvmpipe";
  /** Steps of ATTENTION_TILES_MIN_TOKENS tokens or more (prefill) take attention_tiled.wgsl:
   * flash-style, a workgroup per (tile of tokens, kv head) reading each K and V vector once for
   * all its rows (query heads x tokens) through workgroup memory, online softmax, no scores in
   * memory. Default false on every adapter: on llvmpipe, whose workgroup memory and barriers cost
   * more than they save, it measured about 7x slower per kernel than the three passes; no GPU has
   * measured it yet (tools/gpu/run.sh does, beside the one-pass kernel). Sums in another order:
   * within the f32 tolerance of the reference. */
  attentionTiles?: boolean;
  /** Fewest tokens a step has for the tiled attention (default ATTENTION_TILES_MIN_TOKENS; tests
   * set 1 to run it on every step). */
  attentionTilesFrom?: number;
  /** Most positions one dispatch of the tiled attention covers (rounded down to its K/V tiles,
   * at least one; default: what llvmpipe's loop limit allows there, all of them elsewhere). Tests
   * set a few tiles to run the windows on small caches. */
  attentionWindow?: number;
  /** Rows8 chunks of f16/bf16/f32 weights read by the dtype's own chunk loader
   * (weights_w16_block8.wgsl, weights_f32_block8.wgsl: the chunk's word index computed once, not
   * once per row; default true; false: the generic weights_block8.wgsl, the baseline).
   * Bit-identical either way. */
  chunkLoaders?: boolean;
  /** Resident rows8 matrices in read-only storage textures (TextureWeight; default on llvmpipe,
   * where a texel fetch costs far less than a storage-buffer load; false: buffers, the baseline
   * and other adapters' default). The Ops does not upload: its owner reads `textureWeights` and
   * uploads accordingly (src/gpu/resident.ts). Bit-identical either way. */
  textureWeights?: boolean;
}

export class Ops implements OpsApi {
  readonly step: GPUBuffer;
  /** Whether resident rows8 matrices go in textures (OpsOptions.textureWeights). */
  readonly textureWeights: boolean;
  private device: GPUDevice;
  private shaders: Shaders;
  /** Whether the adapter is llvmpipe: its loop limit bounds the attention length, and its kernel
   * choices are ADAPTER_CHOICES.llvmpipe. */
  private llvmpipe: boolean;
  /** Scratch buffers (attention scores, expert tiles), shared by the ops that ask for one. */
  private scratch: GPUBuffer[] = [];
  /** The unsplit matmuls' k and v bindings (noSplitOutputs). */
  private unsplit: [GPUBuffer, GPUBuffer] | null = null;
  /** Uniform buffers of the ops' static sizes (and the unsplit outputs), freed by destroy(). */
  private paramBuffers: GPUBuffer[] = [];

  /** Bytes of attention scores kept for the three-pass attention (0: always one pass). */
  private attentionScratchBytes: number;

  /** Whether long prefill steps use matmul tiles of MATMUL_WIDE_TOKENS tokens. */
  private wideTiles: boolean;

  /** Whether the tiled expert kernels interleave tiles through their grid. */
  private interleavedTiles: boolean;

  /** Whether the attention passes block several positions / head-dim chunks per lane. */
  private attentionBlocks: boolean;

  /** Whether the q/k heads' norm and RoPE take one lane per row (head_norm_rope_lanes.wgsl), and
   * rmsnorm from LANE_NORM_ROWS rows (rmsnorm_lanes.wgsl). */
  private laneNorms: boolean;

  /** Whether pipelines size their private arrays to what they use (OpsOptions.exactArrays). */
  private exactArrays: boolean;

  /** Whether the matmul tile is chosen by padding (OpsOptions.paddedTiles). */
  private paddedTiles: boolean;

  /** Whether decode steps take matvec.wgsl (OpsOptions.coalescedMatvec). */
  private coalescedMatvec: boolean;

  /** Whether prefill steps take matmul_tiled.wgsl (OpsOptions.workgroupTiles). */
  private workgroupTiles: boolean;

  /** Whether prefill steps take attention_tiled.wgsl (OpsOptions.attentionTiles), from how
   * many tokens a step. */
  private attentionTiles: boolean;
  private attentionTilesFrom: number;
  private attentionWindow: number;

  /** Whether rows8 chunks use the dtype's own chunk loader (OpsOptions.chunkLoaders). */
  private chunkLoaders: boolean;

  /** Lanes of the workgroup-sharing kernels on this adapter (WG_SHARED, TILE_LANES). */
  private sharedWG: number;
  private tileLanes: number;

  constructor(gpu: Gpu, opts: OpsOptions = {}) {
    this.device = gpu.device;
    this.wideTiles = opts.wideTiles ?? true;
    this.interleavedTiles = opts.interleavedTiles ?? true;
    this.attentionBlocks = opts.attentionBlocks ?? true;
    this.llvmpipe = /llvmpipe/i.test(gpu.adapterInfo.description ?? "");
    const byAdapter = this.llvmpipe ? ADAPTER_CHOICES.llvmpipe : ADAPTER_CHOICES.gpu;
    this.laneNorms = opts.laneNorms ?? byAdapter.laneNorms;
    this.exactArrays = opts.exactArrays ?? true;
    this.paddedTiles = opts.paddedTiles ?? true;
    this.attentionScratchBytes = opts.attentionScratchBytes ?? byAdapter.attentionScratchBytes;
    this.coalescedMatvec = opts.coalescedMatvec ?? byAdapter.coalescedMatvec;
    this.workgroupTiles = opts.workgroupTiles ?? byAdapter.workgroupTiles;
    this.attentionTiles = opts.attentionTiles ?? byAdapter.attentionTiles;
    this.attentionTilesFrom = opts.attentionTilesFrom ?? ATTENTION_TILES_MIN_TOKENS;
    this.attentionWindow = opts.attentionWindow ?? Infinity;
    this.chunkLoaders = opts.chunkLoaders ?? true;
    this.textureWeights = opts.textureWeights ?? byAdapter.textureWeights;
    const sizes = opts.sharedSizes ?? byAdapter.sharedSizes;
    this.sharedWG = WG_SHARED[sizes];
    this.tileLanes = TILE_LANES[sizes];
    this.shaders = new Shaders(this.device);
    this.step = this.device.createBuffer({
      label: "step",
      size: STEP_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  /** A uniform buffer holding `fields` (u32 or f32, 4 bytes each), padded to 16 bytes. */
  private params(label: string, fields: Field[]): GPUBuffer {
    const size = ceilDiv(fields.length * 4, 16) * 16;
    const buffer = this.device.createBuffer({
      label: `${label}.params`,
      size,
      usage: GPUBufferUsage.UNIFORM,
      mappedAtCreation: true,
    });
    const view = new DataView(buffer.getMappedRange());
    fields.forEach((f, i) => {
      if (typeof f === "number") view.setUint32(i * 4, f, true);
      else view.setFloat32(i * 4, f.f32, true);
    });
    buffer.unmap();
    this.paramBuffers.push(buffer);
    return buffer;
  }

  /** Frees the buffers the ops own (step, per-op sizes, scratch); no op may be recorded after. */
  destroy(): void {
    for (const b of [this.step, ...this.paramBuffers, ...this.scratch]) b.destroy();
    this.paramBuffers = [];
    this.scratch = [];
  }

  /** Bind group of [step, params, ...buffers] for the layout of `bindings`. */
  private bind(
    label: string,
    bindings: BindingKind[],
    buffers: (GPUBuffer | GPUBufferBinding | GPUTextureView)[],
  ): GPUBindGroup {
    const layout = this.shaders.layout(bindings);
    return scopedOn(this.device, `bind group ${label}`, () =>
      this.device.createBindGroup({
        label,
        layout,
        entries: [this.step, ...buffers].map((b, binding) => ({
          binding,
          resource: b instanceof GPUBuffer ? { buffer: b } : b,
        })),
      }));
  }

  /**
   * Binds only the bytes of a weight matrix [rows, cols] (from the aligned offset below its first
   * element), so a matrix may sit anywhere in a buffer larger than the storage-binding limit; a
   * TextureWeight binds its whole texture. Returns the binding and the matrix's element offset
   * inside it.
   */
  private weightBinding(
    op: string,
    w: BufferWeight,
    rows: number,
    cols: number,
  ): { binding: GPUBufferBinding; offsetElems: number };
  private weightBinding(
    op: string,
    w: WeightRef,
    rows: number,
    cols: number,
  ): { binding: GPUBufferBinding | GPUTextureView; offsetElems: number };
  private weightBinding(
    op: string,
    w: WeightRef,
    rows: number,
    cols: number,
  ): { binding: GPUBufferBinding | GPUTextureView; offsetElems: number } {
    const start = weightBytes(w.dtype, w.offsetElems);
    const end = start + weightBytes(w.dtype, rows * cols);
    if (w.texture) {
      const bytes = w.texture.width * w.texture.height * 16;
      if (end > bytes) {
        throw new OpConfigError(op, `weights end at byte ${end}, past the texture (${bytes} B)`);
      }
      return { binding: w.texture.createView(), offsetElems: w.offsetElems };
    }
    if (end > w.buffer.size) {
      throw new OpConfigError(
        op,
        `weights end at byte ${end}, past the buffer (${w.buffer.size} B)`,
      );
    }
    // the binding starts on whole blocks too, so element offsets inside it stay whole blocks
    const align = lcm(
      this.device.limits.minStorageBufferOffsetAlignment,
      weightBlock(w.dtype).bytes,
    );
    const offset = Math.floor(start / align) * align;
    // Whole 16-byte words, so the vector loaders see the last row complete.
    const size = Math.min(Math.ceil((end - offset) / 16) * 16, w.buffer.size - offset);
    const limit = this.device.limits.maxStorageBufferBindingSize;
    if (size > limit) {
      throw new OpConfigError(
        op,
        `weights of ${size} B exceed the storage-binding limit (${limit} B); split the matrix ` +
          `into row blocks (one matmul per block, with outOffset)`,
      );
    }
    return {
      binding: { buffer: w.buffer, offset, size },
      offsetElems: weightElems(w.dtype, start - offset),
    };
  }

  /** `spec` with its private arrays sized to `exact` (KernelSpec.sizes) under exactArrays; else
   * as declared, checked against `declared` (the kernel's maxima). */
  private sized(
    spec: KernelSpec,
    exact: Record<string, number>,
    declared: Record<string, number>,
  ): KernelSpec {
    return this.exactArrays
      ? { ...spec, sizes: { ...spec.sizes, ...exact } }
      : { ...spec, expect: { ...spec.expect, ...declared } };
  }

  /** Prepares a kernel with one pipeline for every token count. */
  private simple(
    name: string,
    spec: KernelSpec,
    params: Field[],
    buffers: (GPUBuffer | GPUBufferBinding | GPUTextureView)[],
    groupsFor: (nTokens: number) => number,
  ): Op {
    const pipeline = this.shaders.pipeline(spec);
    this.shaders.checkParams(spec, params.length);
    const bindGroup = this.bind(name, spec.bindings, [this.params(name, params), ...buffers]);
    return new PreparedOp(name, bindGroup, () => pipeline, groupsFor);
  }

  rmsnorm(
    a: {
      x: GPUBuffer;
      weight: GPUBuffer;
      out: GPUBuffer;
      dim: number;
      groups: number;
      eps: number;
    },
  ): Op {
    const rows = a.groups;
    const bindings: BindingKind[] = ["uniform", "uniform", "read", "rw", "rw"];
    const spec: KernelSpec = {
      kernel: "rmsnorm",
      bindings,
      prelude: ["workgroup_sum"],
      expect: { WG: WG_64 },
    };
    const lanesSpec: KernelSpec = {
      kernel: "rmsnorm_lanes",
      bindings,
      prelude: ["lane_sum"],
      expect: { WG: WG_64 },
    };
    const params = [a.dim, a.groups, { f32: a.eps }];
    for (const sp of [spec, lanesSpec]) this.shaders.checkParams(sp, params.length);
    const perRow = this.shaders.pipeline(spec);
    const lanes = this.laneNorms ? this.shaders.pipeline(lanesSpec) : null;
    const bindGroup = this.bind("rmsnorm", bindings, [
      this.params("rmsnorm", params),
      a.weight,
      a.x,
      a.out,
    ]);
    // a lane per row once a step has enough rows to fill lanes (LANE_NORM_ROWS)
    const byLane = (t: number) => lanes !== null && t * rows >= LANE_NORM_ROWS;
    return new PreparedOp(
      "rmsnorm",
      bindGroup,
      (t) => byLane(t) ? lanes! : perRow,
      (t) => byLane(t) ? ceilDiv(t * rows, WG_64) : t * rows,
    );
  }

  matmul(a: {
    x: GPUBuffer;
    w: WeightRef;
    out: GPUBuffer;
    K: number;
    N: number;
    outStride: number;
    outOffset: number;
    accumulate: boolean;
    /** Rows stacked as q | k | v: rows [k, v) of W go to `kOut` and [v, N) to `vOut`, each
     * [T, its rows] (out gets rows [0, k) with outStride k); not with accumulate. */
    split?: { k: number; v: number; kOut: GPUBuffer; vOut: GPUBuffer };
  }): IndirectOp {
    checkMultiple("matmul", "K", a.K, VEC);
    const split = a.split;
    if (
      split && (a.accumulate || a.outStride !== split.k || !(split.k <= split.v && split.v <= a.N))
    ) {
      throw new OpConfigError(
        "matmul",
        "a split needs 0 <= k <= v <= N, outStride k, no accumulate",
      );
    }
    checkWeightOffset("matmul", a.w.dtype, a.w.offsetElems);
    const blocked = a.w.layout === "rows8";
    if (blocked) checkMultiple("matmul", "K of rows8 weights", a.K, ROWS8);
    const texture = a.w.texture !== undefined;
    const bindings: BindingKind[] = [
      "uniform",
      "uniform",
      "read",
      texture ? "texture" : "read",
      "rw",
      "rw",
      "rw",
    ];
    // rows8 weights hold whole blocks of 8 rows (the last one padded)
    const w = this.weightBinding("matmul", a.w, blocked ? ceilDiv(a.N, ROWS8) * ROWS8 : a.N, a.K);
    const loader = weightLoader(a.w.dtype, [w.offsetElems], [a.K]);
    // quantized rows8 (their own loaders) address whole 8-row groups of blocks from the binding's
    // start: 8 x 32 elements for q8_0, q4_0 and q5_0, 8 x 256 for q6_k and q4_k
    const quantRows8 = QUANT_ROWS8[loader];
    if (blocked && quantRows8) {
      checkMultiple("matmul", `rows8 ${loader} offset`, w.offsetElems, quantRows8.groupElems);
    }
    const weights = blocked && quantRows8 ? quantRows8.loader : loader;
    const spec = (tokens: number): KernelSpec =>
      this.sized(
        {
          kernel: "matmul",
          bindings,
          prelude: ["matmul_store"],
          weights,
          constants: { TOKENS: tokens, BLOCKED: blocked ? 1 : 0 },
          expect: { ROWS: MATMUL_ROWS, WG: WG_MATMUL },
          genericBlock8: !this.chunkLoaders,
          texture,
        },
        { MAX_TOKENS: tokens },
        { MAX_TOKENS: MATMUL_WIDE_TOKENS },
      );
    const decode = this.shaders.pipeline(spec(1));
    const prefill = this.shaders.pipeline(spec(MATMUL_PREFILL_TOKENS));
    const wide = this.wideTiles ? this.shaders.pipeline(spec(MATMUL_WIDE_TOKENS)) : null;
    const rowSets = ceilDiv(a.N, MATMUL_ROWS);
    const tokensFor = (t: number) => matmulTokens(t, rowSets, wide !== null, this.paddedTiles);
    // matvec.wgsl reads a loader's 8 elements at a time: rows8 of the unquantized dtypes only
    const vecSpec = (tokens: number): KernelSpec =>
      this.sized(
        {
          kernel: "matvec",
          bindings,
          prelude: ["matmul_store"],
          weights: loader,
          constants: { TOKENS: tokens, BLOCKED: blocked ? 1 : 0 },
          sizes: { WG: this.sharedWG },
          expect: { ROWS: MATMUL_ROWS },
          texture,
        },
        { MAX_TOKENS: tokens },
        { MAX_TOKENS: MATVEC_TOKENS },
      );
    const matvec = this.coalescedMatvec && !(blocked && quantRows8)
      ? [this.shaders.pipeline(vecSpec(1)), this.shaders.pipeline(vecSpec(MATVEC_TOKENS))]
      : null;
    const tm = this.tileLanes;
    const tiledSpec: KernelSpec = {
      kernel: "matmul_tiled",
      bindings,
      prelude: ["matmul_store"],
      weights: loader,
      constants: { BLOCKED: blocked ? 1 : 0 },
      sizes: { TM: tm },
      expect: { BK: TILED_BK },
      texture,
    };
    const tiledK = a.K % TILED_BK === 0 && !(blocked && quantRows8);
    const tiled = this.workgroupTiles && tiledK ? this.shaders.pipeline(tiledSpec) : null;
    const fields = [
      a.K,
      a.N,
      a.outStride,
      a.outOffset,
      w.offsetElems,
      a.accumulate ? 1 : 0,
      split?.k ?? a.N,
      split?.v ?? a.N,
    ];
    this.shaders.checkParams(spec(1), fields.length);
    const params = this.params("matmul", fields);
    const [kOut, vOut] = split ? [split.kOut, split.vOut] : this.noSplitOutputs();
    const bindGroup = this.bind("matmul", bindings, [params, a.x, w.binding, a.out, kOut, vOut]);
    if (matvec) this.shaders.checkParams(vecSpec(1), fields.length);
    if (tiled) this.shaders.checkParams(tiledSpec, fields.length);
    const byMatvec = (t: number) => matvec !== null && t <= MATVEC_TOKENS;
    const byTiles = (t: number) => tiled !== null && t > 1 && !byMatvec(t);
    return new PreparedOp(
      "matmul",
      bindGroup,
      (t) => {
        if (byMatvec(t)) return matvec![t === 1 ? 0 : 1];
        if (byTiles(t)) return tiled!;
        const n = tokensFor(t);
        return n === 1 ? decode : n === MATMUL_WIDE_TOKENS ? wide! : prefill;
      },
      (t) => {
        if (byMatvec(t)) return rowSets;
        if (byTiles(t)) return ceilDiv(a.N, 4 * tm) * ceilDiv(t, 4 * tm);
        return ceilDiv(rowSets * ceilDiv(t, tokensFor(t)), WG_MATMUL);
      },
    );
  }

  headGate(a: { missed: GPUBuffer; flags: number; args: GPUBuffer; argWords: number }): Op {
    return this.simple(
      "headGate",
      { kernel: "head_gate", bindings: ["uniform", "uniform", "read", "rw"] },
      [a.flags, a.argWords],
      [a.missed, a.args],
      () => 1,
    );
  }

  rope(a: { x: GPUBuffer; table: GPUBuffer; heads: number; headDim: number }): Op {
    checkMultiple("rope", "headDim", a.headDim, 2);
    const perToken = a.heads * (a.headDim / 2);
    return this.simple(
      "rope",
      { kernel: "rope", bindings: ["uniform", "uniform", "read", "rw"], expect: { WG: WG_64 } },
      [a.heads, a.headDim],
      [a.table, a.x],
      (t) => ceilDiv(t * perToken, WG_64),
    );
  }

  kvStore(
    a: {
      k: GPUBuffer;
      v: GPUBuffer;
      kCache: GPUBuffer;
      vCache: GPUBuffer;
      width: number;
      firstSlab?: number;
      slabs?: number;
    },
  ): Op {
    const slabs = a.slabs ?? 1;
    if (a.kCache.size !== a.vCache.size) {
      throw new OpConfigError("kvStore", "the K and V caches differ in size");
    }
    const positions = Math.floor(a.kCache.size / (slabs * a.width * 4));
    return this.simple(
      "kvStore",
      {
        kernel: "kv_store",
        bindings: ["uniform", "uniform", "read", "read", "rw", "rw"],
        expect: { WG: WG_64 },
      },
      [a.width, a.firstSlab ?? 0, slabs, positions],
      [a.k, a.v, a.kCache, a.vCache],
      (t) => ceilDiv(t * a.width, WG_64),
    );
  }

  headNormRope(a: {
    q: GPUBuffer;
    k: GPUBuffer;
    qNorm: GPUBuffer;
    kNorm: GPUBuffer;
    table: GPUBuffer;
    numHeads: number;
    numKvHeads: number;
    headDim: number;
    eps: number;
  }): Op {
    checkMultiple("headNormRope", "headDim", a.headDim, 2);
    if (a.headDim > MAX_HEAD_DIM) {
      throw new OpConfigError("headNormRope", `headDim ${a.headDim} > ${MAX_HEAD_DIM}`);
    }
    const heads = a.numHeads + a.numKvHeads;
    const lanes = this.laneNorms;
    return this.simple(
      "headNormRope",
      {
        kernel: lanes ? "head_norm_rope_lanes" : "head_norm_rope",
        prelude: [lanes ? "lane_sum" : "workgroup_sum"],
        expect: { WG: WG_64 },
        bindings: ["uniform", "uniform", "read", "read", "read", "rw", "rw"],
      },
      [a.numHeads, a.numKvHeads, a.headDim, { f32: a.eps }],
      [a.qNorm, a.kNorm, a.table, a.q, a.k],
      (t) => lanes ? ceilDiv(t * heads, WG_64) : t * heads,
    );
  }

  attention(a: {
    q: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
    out: GPUBuffer;
    numHeads: number;
    numKvHeads: number;
    headDim: number;
    scale: number;
    firstSlab?: number;
    slabs?: number;
  }): Op {
    checkMultiple("attention", "headDim", a.headDim, VEC);
    checkMultiple("attention", "numHeads", a.numHeads, a.numKvHeads);
    if (a.headDim > MAX_HEAD_DIM) {
      throw new OpConfigError("attention", `headDim ${a.headDim} exceeds ${MAX_HEAD_DIM}`);
    }
    const heads = a.numHeads, kvHeads = a.numKvHeads, group = heads / kvHeads;
    if (group > MAX_GROUP) {
      throw new OpConfigError("attention", `${group} query heads per kv head exceed ${MAX_GROUP}`);
    }
    const slabs = a.slabs ?? 1;
    const firstSlab = a.firstSlab ?? 0;
    const cachePositions = Math.floor(a.kCache.size / (slabs * a.numKvHeads * a.headDim * 4));
    const maxTokens = Math.floor(a.q.size / (heads * a.headDim * 4));
    if (this.llvmpipe) {
      // Passes: the softmax loops twice over the positions. Blocks: per block of
      // WG_ATTENTION positions a lane loops headDim/4 + 2 * WG_ATTENTION times in three loops
      // inside the block loop, and the limiter counts each loop's exit test as one more (a cache
      // of 26002 positions at headDim 128 gave wrong numbers with this count + 1, 24002 did not).
      const perBlock = a.headDim / VEC + 2 * WG_ATTENTION + 4;
      const maxPositions = Math.min(
        Math.floor(LLVMPIPE_LOOP_LIMIT / 2),
        Math.floor(LLVMPIPE_LOOP_LIMIT / perBlock) * WG_ATTENTION,
      );
      if (cachePositions > maxPositions) {
        throw new OpConfigError(
          "attention",
          `a KV cache of ${cachePositions} positions exceeds the ${maxPositions} that llvmpipe's ` +
            `loop limit allows at headDim ${a.headDim}; use a shorter maxContext`,
        );
      }
    }
    const scale = { f32: a.scale };
    const blocks = this.simple(
      "attention",
      {
        kernel: "attention",
        bindings: ["uniform", "uniform", "read", "read", "read", "rw"],
        expect: { WG: WG_ATTENTION },
      },
      [heads, a.numKvHeads, a.headDim, scale, firstSlab, slabs, cachePositions],
      [a.q, a.kCache, a.vCache, a.out],
      (t) => t * heads,
    );
    const oneBlocks = [blocks];
    const tiled = this.attentionTiles
      ? this.tiledAttention(a, group, firstSlab, slabs, cachePositions)
      : null;
    const tiles = tiled ? [tiled] : null;
    // Three passes through a scores buffer [T, Hq, positions + 1] for the token counts it holds.
    const rowLen = cachePositions + 1;
    const scratchTokens = Math.min(maxTokens, this.attentionPassTokens(heads, cachePositions));
    if (scratchTokens < 1) {
      if (!tiles) return blocks;
      return new ChoiceOp(
        "attention",
        (t) => t >= this.attentionTilesFrom ? tiles : oneBlocks,
      );
    }
    const scores = this.sharedScratch(scratchTokens * heads * rowLen * 4);
    const chunks = this.attentionBlocks ? valueChunks(group, a.headDim / VEC) : 1;
    const span = this.attentionBlocks ? scoreSpan(group) : 1;
    const params = [
      heads,
      a.numKvHeads,
      a.headDim,
      scale,
      rowLen,
      firstSlab,
      slabs,
      cachePositions,
    ];
    const passes = [
      this.simple(
        "attention.scores",
        this.sized(
          {
            kernel: "attention_scores",
            expect: { LANES: ATTENTION_LANES, MAX_GROUP, WG: WG_64 },
            bindings: ["uniform", "uniform", "read", "read", "rw"],
            constants: { GROUP: group, SPAN: span },
          },
          { MAX_SPAN: span, MAX_ACC: group * span },
          { MAX_SPAN: ATTENTION_MAX_SPAN, MAX_ACC: ATTENTION_MAX_ACC },
        ),
        params,
        [a.q, a.kCache, scores],
        (t) => ceilDiv(t * kvHeads * ATTENTION_LANES, WG_64),
      ),
      this.simple(
        "attention.softmax",
        {
          kernel: "attention_softmax",
          bindings: ["uniform", "uniform", "rw"],
          expect: { WG: WG_SOFTMAX },
        },
        params,
        [scores],
        (t) => ceilDiv(t * heads, WG_SOFTMAX),
      ),
      this.simple(
        "attention.values",
        this.sized(
          {
            kernel: "attention_values",
            expect: { MAX_GROUP, WG: WG_VALUES },
            bindings: ["uniform", "uniform", "read", "read", "rw"],
            constants: { GROUP: group, CHUNKS: chunks },
          },
          { MAX_CHUNKS: chunks, MAX_ACC: group * chunks },
          { MAX_CHUNKS: ATTENTION_MAX_CHUNKS, MAX_ACC: ATTENTION_MAX_ACC },
        ),
        params,
        [scores, a.vCache, a.out],
        (t) => ceilDiv(t * kvHeads * (a.headDim / VEC / chunks), WG_VALUES),
      ),
    ];
    return new ChoiceOp(
      "attention",
      (t) =>
        tiles && t >= this.attentionTilesFrom ? tiles : t <= scratchTokens ? passes : oneBlocks,
    );
  }

  /** attention_tiled.wgsl for attention()'s arguments, or null when its smallest K/V tile does
   * not fit the adapter's workgroup memory (the other kernels then take every step). On llvmpipe,
   * whose shaders stop after LLVMPIPE_LOOP_LIMIT loop iterations, the positions are split into
   * windows short enough to finish, one dispatch each (the rows' running state carried between
   * them); elsewhere one window holds them all. */
  private tiledAttention(
    a: Parameters<Ops["attention"]>[0],
    group: number,
    firstSlab: number,
    slabs: number,
    cachePositions: number,
  ): Op | null {
    if (group > ATTENTION_TILE_ROWS) return null;
    const d4 = a.headDim / VEC;
    const limit = this.device.limits.maxComputeWorkgroupStorageSize;
    const bk = ATTENTION_TILE_POSITIONS.find((b) => attentionTileBytes(d4, b) <= limit);
    if (bk === undefined) return null;
    const bq = Math.floor(ATTENTION_TILE_ROWS / group);
    const wg = WG_ATTENTION_TILES;
    const acc = ceilDiv(ATTENTION_TILE_ROWS * d4, wg);
    const sc = ceilDiv(ATTENTION_TILE_ROWS * bk, wg);
    let window = ceilDiv(cachePositions, bk) * bk;
    if (this.llvmpipe) {
      // Loop iterations a lane runs (each loop's exit test counted too, as for the one-pass
      // kernel) per K/V tile and per run of the tile's tokens (a tile has at most bq runs, one per
      // sequence in it), plus finding the runs.
      const perTile = 2 * (ceilDiv(bk * d4, wg) + 1) + sc * (d4 + 1) + 1 + 2 * (bk + 1) +
        acc * (bk + 1) + 1 + 2;
      const perRun = 3 * (acc + 1) + ceilDiv(ATTENTION_TILE_ROWS * d4, wg) + 1 + 8;
      const budget = Math.floor(LLVMPIPE_LOOP_LIMIT * 0.9 / bq) - perRun - (bq + 2);
      const tiles = Math.floor(budget / perTile);
      if (tiles < 1) return null;
      window = Math.min(window, tiles * bk);
    }
    window = Math.max(bk, Math.min(window, Math.floor(this.attentionWindow / bk) * bk));
    const kvHeads = a.numKvHeads;
    const maxTokens = Math.floor(a.q.size / (a.numHeads * a.headDim * 4));
    const state = this.sharedScratch(maxTokens * a.numHeads * 8);
    const windows: Op[] = [];
    for (let start = 0; start < cachePositions; start += window) {
      windows.push(this.simple(
        "attention.tiles",
        {
          kernel: "attention_tiled",
          bindings: ["uniform", "uniform", "read", "read", "read", "rw", "rw"],
          constants: { GROUP: group, BQ: bq },
          sizes: { D4: d4, BK: bk, ACC: acc, SC: sc },
          expect: { ROWS: ATTENTION_TILE_ROWS, WG: wg },
        },
        [
          a.numHeads,
          kvHeads,
          a.headDim,
          { f32: a.scale },
          firstSlab,
          slabs,
          cachePositions,
          bk,
          start,
          start + window,
        ],
        [a.q, a.kCache, a.vCache, a.out, state],
        (t) => ceilDiv(t, bq) * kvHeads,
      ));
    }
    return windows.length === 1 ? windows[0] : new ChoiceOp("attention.tiles", () => windows);
  }

  /** The kernel choices in effect, in words (start-up logs). */
  get choices(): string {
    return [
      this.coalescedMatvec
        ? `decode matmuls a workgroup per 8 rows (${this.sharedWG} lanes)`
        : "decode matmuls 8 rows a lane",
      this.workgroupTiles
        ? `prefill in workgroup tiles (${4 * this.tileLanes} x ${4 * this.tileLanes})`
        : "prefill tiles in a lane",
      (this.attentionTiles ? "prefill attention in tiles, " : "") +
      (this.threePassAttention ? "three-pass attention" : "one-pass attention"),
      this.laneNorms ? "norms a lane a row" : "norms a workgroup a row",
    ].join(", ");
  }

  /** Whether attention takes three passes where its scores fit (attentionScratchBytes > 0). */
  get threePassAttention(): boolean {
    return this.attentionScratchBytes > 0;
  }

  /** Most tokens a step may have for attention() to take the three-pass kernels (their scores
   * [T, heads, positions + 1] in the scratch); past it, the one-pass kernel. */
  attentionPassTokens(heads: number, positions: number): number {
    const budget = Math.min(
      this.attentionScratchBytes,
      this.device.limits.maxStorageBufferBindingSize,
    );
    return Math.floor(budget / (heads * (positions + 1) * 4));
  }

  /** The k and v outputs a matmul without a split binds (never written). */
  private noSplitOutputs(): [GPUBuffer, GPUBuffer] {
    if (!this.unsplit) {
      const make = (label: string) =>
        this.device.createBuffer({ label, size: 16, usage: GPUBufferUsage.STORAGE });
      this.unsplit = [make("matmul.no_k"), make("matmul.no_v")];
      this.paramBuffers.push(...this.unsplit);
    }
    return this.unsplit;
  }

  /** A scratch buffer of at least `bytes`, shared by every op that asks: ops run one after the
   * other and keep nothing in it from one recording to the next. */
  private sharedScratch(bytes: number): GPUBuffer {
    let buffer = this.scratch.find((b) => b.size >= bytes);
    if (!buffer) {
      buffer = this.device.createBuffer({
        label: `ops.scratch${this.scratch.length}`,
        size: ceilDiv(bytes, 16) * 16,
        usage: GPUBufferUsage.STORAGE,
      });
      this.scratch.push(buffer);
    }
    return buffer;
  }

  topk(a: {
    logits: GPUBuffer;
    idx: GPUBuffer;
    weights: GPUBuffer;
    numExperts: number;
    k: number;
    normTopk: boolean;
  }): Op {
    if (a.numExperts > MAX_EXPERTS || a.k > a.numExperts || a.k < 1) {
      throw new OpConfigError(
        "topk",
        `need 1 <= k (${a.k}) <= numExperts (${a.numExperts}) <= ${MAX_EXPERTS}`,
      );
    }
    return this.simple(
      "topk",
      {
        kernel: "topk",
        bindings: ["uniform", "uniform", "read", "rw", "rw"],
        expect: { WG: WG_TOPK },
      },
      [a.numExperts, a.k, a.normTopk ? 1 : 0],
      [a.logits, a.idx, a.weights],
      (t) => ceilDiv(t, WG_TOPK),
    );
  }

  expertsGateUp(a: {
    x: GPUBuffer;
    idx: GPUBuffer;
    slots: GPUBuffer;
    slotBase: number;
    missed: GPUBuffer;
    group: ExpertGroupBinding;
    poolDtype: WeightDType;
    slotElems: number;
    /** Element offset of the part (gate, or down) inside a slot, in elements of poolDtype. */
    partOffset: number;
    h: GPUBuffer;
    k: number;
    hidden: number;
    inter: number;
    /** Whether this op groups the step's pairs by expert before its tiled kernel (default
     * true); false reuses the grouping an earlier op of the same idx recorded in this pass. */
    groupPairs?: boolean;
    /** The model's experts per layer (the tile choice; both stages of a layer must agree). */
    numExperts?: number;
  }): Op {
    checkMultiple("expertsGateUp", "hidden", a.hidden, VEC);
    checkWeightOffset("expertsGateUp", a.poolDtype, a.slotElems);
    checkWeightOffset("expertsGateUp", a.poolDtype, a.partOffset);
    const perToken = a.k * ceilDiv(a.inter, ROWS);
    const { slotElems, partOffset, hidden, inter, k } = a;
    const weights = weightLoader(a.poolDtype, [slotElems, partOffset, inter * hidden], [hidden]);
    const g = groupBinding("expertsGateUp", a.group);
    const params = [a.slotBase, g.firstSlot, g.slots, slotElems, k, hidden, inter];
    // step, params, x, idx|tiles, slots, missed, h; then the pools
    const fixed: BindingKind[] = ["uniform", "uniform", "read", "read", "read", "rw", "rw"];
    const pr = poolResources("expertsGateUp", g);
    const bindings = [...fixed, ...pr.kinds];
    const pools = { count: g.pools.length, first: fixed.length };
    const perPair = this.coalescedMatvec
      ? this.simple(
        "expertsGateUp",
        {
          kernel: "experts_gate_up_matvec",
          bindings,
          weights,
          pools,
          sizes: { WG: this.sharedWG },
          expect: { ROWS: MATMUL_ROWS },
          texture: pr.texture,
        },
        [...params, partOffset, g.slotsPerPool],
        [a.x, a.idx, a.slots, a.missed, a.h, ...pr.resources],
        (t) => t * k * ceilDiv(inter, MATMUL_ROWS),
      )
      : this.simple(
        "expertsGateUp",
        {
          kernel: "experts_gate_up",
          bindings,
          weights,
          pools,
          texture: pr.texture,
          expect: { ROWS, WG: WG_64 },
        },
        [...params, partOffset, g.slotsPerPool],
        [a.x, a.idx, a.slots, a.missed, a.h, ...pr.resources],
        (t) => ceilDiv(t * perToken, WG_64),
      );
    const tiles = this.moeTiles(a.idx, k, Math.floor(a.x.size / (hidden * 4)));
    const tiled = EXPERT_TILES.map((tile, i) => [
      ...(a.groupPairs === false ? [] : [tiles.ops[i]]),
      this.tiledExpertOp(
        "expertsGateUp.tiled",
        "experts_gate_up_tiled",
        { tile, k, rows: inter, laneRows: ROWS },
        { bindings, weights, pools, texture: pr.texture },
        [...params, MAX_EXPERTS, partOffset, g.slotsPerPool],
        [a.x, tiles.buffer, a.slots, a.missed, a.h, ...pr.resources],
      ),
    ]);
    const one = [perPair];
    const experts = this.wideTiles ? a.numExperts : undefined;
    return new ChoiceOp("expertsGateUp", (t) => tiled[tiling(t * k, experts)] ?? one);
  }

  /** A tiled expert stage (`kernel`, experts_gate_up_tiled or experts_down_tiled) over tiles of
   * `tile` of a step's pairs (k a token) and `rows` output rows: with workgroupTiles its `_wg`
   * kernel, a workgroup per (tile place, MATMUL_ROWS rows); else lanes owning `laneRows` rows. */
  private tiledExpertOp(
    name: string,
    kernel: string,
    shape: { tile: number; k: number; rows: number; laneRows: number },
    spec: Pick<KernelSpec, "bindings" | "weights" | "pools" | "texture">,
    params: Field[],
    buffers: (GPUBuffer | GPUTextureView)[],
  ): Op {
    const { tile, k, rows, laneRows } = shape;
    const wg = this.workgroupTiles;
    const base: KernelSpec = wg
      ? {
        ...spec,
        kernel: `${kernel}_wg`,
        prelude: TILED_EXPERT_PRELUDE,
        expect: { ROWS: MATMUL_ROWS },
        constants: { TILE: tile },
        sizes: { WG: this.sharedWG },
      }
      : {
        ...spec,
        kernel,
        prelude: TILED_EXPERT_PRELUDE,
        expect: { ROWS: laneRows, WG: WG_TILED },
        constants: { TILE: tile, INTERLEAVE: this.interleavedTiles ? 1 : 0 },
      };
    const sized = this.sized(base, { MAX_TILE: tile }, { MAX_TILE: Math.max(...EXPERT_TILES) });
    return this.simple(name, sized, params, buffers, (t) => {
      const tiles = maxTiles(t * k, tile);
      return wg
        ? tiles * ceilDiv(rows, MATMUL_ROWS)
        : this.tiledGroups(tiles, ceilDiv(rows, laneRows));
    });
  }

  /** Workgroups of a tiled expert kernel over `tiles` tile places of `rowSets` row sets each:
   * whole workgroups per tile when interleaved (a workgroup's row sets all of one tile). */
  private tiledGroups(tiles: number, rowSets: number): number {
    return this.interleavedTiles
      ? tiles * ceilDiv(rowSets, WG_TILED)
      : ceilDiv(tiles * rowSets, WG_TILED);
  }

  /** Ops grouping a step's pairs by expert (kernels/moe_tiles.wgsl) into a shared scratch, one
   * per tile size of EXPERT_TILES. Ops of the same idx and token count get the same scratch (the
   * first large enough), so a later op may reuse what an earlier one grouped (groupPairs). */
  private moeTiles(
    idx: GPUBuffer,
    k: number,
    maxTokens: number,
  ): { ops: Op[]; buffer: GPUBuffer } {
    const pairs = maxTokens * k;
    const words = MAX_EXPERTS + pairs + 1 + 3 * maxTiles(pairs, Math.min(...EXPERT_TILES));
    const buffer = this.sharedScratch(words * 4);
    const ops = EXPERT_TILES.map((tile) =>
      this.simple(
        "moeTiles",
        { kernel: "moe_tiles", bindings: ["uniform", "uniform", "read", "rw"] },
        [k, MAX_EXPERTS, tile],
        [idx, buffer],
        () => 1,
      )
    );
    return { ops, buffer };
  }

  expertsDown(a: {
    h: GPUBuffer;
    idx: GPUBuffer;
    slots: GPUBuffer;
    slotBase: number;
    group: ExpertGroupBinding;
    poolDtype: WeightDType;
    slotElems: number;
    /** Element offset of the part (gate, or down) inside a slot, in elements of poolDtype. */
    partOffset: number;
    y: GPUBuffer;
    k: number;
    hidden: number;
    inter: number;
    /** Whether this op groups the step's pairs by expert before its tiled kernel (default
     * true); false reuses the grouping an earlier op of the same idx recorded in this pass. */
    groupPairs?: boolean;
    /** The model's experts per layer (the tile choice; both stages of a layer must agree). */
    numExperts?: number;
  }): Op {
    checkMultiple("expertsDown", "inter", a.inter, VEC);
    checkWeightOffset("expertsDown", a.poolDtype, a.slotElems);
    checkWeightOffset("expertsDown", a.poolDtype, a.partOffset);
    const perToken = a.k * ceilDiv(a.hidden, ROWS);
    const { slotElems, partOffset, hidden, inter, k } = a;
    const weights = weightLoader(a.poolDtype, [slotElems, partOffset], [inter]);
    const g = groupBinding("expertsDown", a.group);
    const params = [a.slotBase, g.firstSlot, g.slots, slotElems, k, hidden, inter];
    // step, params, h, idx|tiles, slots, y; then the pools
    const fixed: BindingKind[] = ["uniform", "uniform", "read", "read", "read", "rw"];
    const pr = poolResources("expertsDown", g);
    const bindings = [...fixed, ...pr.kinds];
    const pools = { count: g.pools.length, first: fixed.length };
    const perPair = this.coalescedMatvec
      ? this.simple(
        "expertsDown",
        {
          kernel: "experts_down_matvec",
          bindings,
          weights,
          pools,
          sizes: { WG: this.sharedWG },
          expect: { ROWS: MATMUL_ROWS },
          texture: pr.texture,
        },
        [...params, partOffset, g.slotsPerPool],
        [a.h, a.idx, a.slots, a.y, ...pr.resources],
        (t) => t * k * ceilDiv(hidden, MATMUL_ROWS),
      )
      : this.simple(
        "expertsDown",
        {
          kernel: "experts_down",
          bindings,
          weights,
          pools,
          texture: pr.texture,
          expect: { ROWS, WG: WG_64 },
        },
        [...params, partOffset, g.slotsPerPool],
        [a.h, a.idx, a.slots, a.y, ...pr.resources],
        (t) => ceilDiv(t * perToken, WG_64),
      );
    const tiles = this.moeTiles(a.idx, k, Math.floor(a.y.size / (hidden * 4 * k)));
    const tiled = EXPERT_TILES.map((tile, i) => [
      ...(a.groupPairs === false ? [] : [tiles.ops[i]]),
      this.tiledExpertOp(
        "expertsDown.tiled",
        "experts_down_tiled",
        { tile, k, rows: hidden, laneRows: ROWS_DOWN_TILED },
        { bindings, weights, pools, texture: pr.texture },
        [...params, MAX_EXPERTS, partOffset, g.slotsPerPool],
        [a.h, tiles.buffer, a.slots, a.y, ...pr.resources],
      ),
    ]);
    const one = [perPair];
    const experts = this.wideTiles ? a.numExperts : undefined;
    return new ChoiceOp("expertsDown", (t) => tiled[tiling(t * k, experts)] ?? one);
  }

  moeCombine(
    a: { y: GPUBuffer; weights: GPUBuffer; out: GPUBuffer; k: number; hidden: number },
  ): Op {
    return this.simple(
      "moeCombine",
      {
        kernel: "moe_combine",
        bindings: ["uniform", "uniform", "read", "read", "rw"],
        expect: { WG: WG_64 },
      },
      [a.k, a.hidden],
      [a.y, a.weights, a.out],
      (t) => ceilDiv(t * a.hidden, WG_64),
    );
  }

  embed(
    a: {
      ids: GPUBuffer;
      idsStride: number;
      table: BufferWeight;
      first: number;
      rows: number;
      hidden: number;
      out: GPUBuffer;
    },
  ): Op {
    checkMultiple("embed", "hidden", a.hidden, VEC);
    checkWeightOffset("embed", a.table.dtype, a.table.offsetElems);
    const w = this.weightBinding("embed", a.table, a.rows, a.hidden);
    const spec: KernelSpec = {
      kernel: "embed",
      bindings: ["uniform", "uniform", "read", "read", "rw"],
      expect: { WG: WG_64 },
      weights: weightLoader(a.table.dtype, [w.offsetElems], [a.hidden]),
    };
    const perToken = a.hidden / VEC;
    return this.simple(
      "embed",
      spec,
      [a.hidden, a.first, a.rows, w.offsetElems, a.idsStride],
      [a.ids, w.binding, a.out],
      (t) => ceilDiv(t * perToken, WG_64),
    );
  }

  argmax(a: { x: GPUBuffer; n: number; out: GPUBuffer }): Op {
    return this.simple(
      "argmax",
      { kernel: "argmax", bindings: ["uniform", "uniform", "read", "rw"] },
      [a.n],
      [a.x, a.out],
      (t) => (t > 0 ? 1 : 0),
    );
  }

  routerMask(
    a: {
      logits: GPUBuffer;
      slots: GPUBuffer;
      slotBase: number;
      numExperts: number;
      minResident: number;
    },
  ): Op {
    return this.simple(
      "routerMask",
      {
        kernel: "router_mask",
        bindings: ["uniform", "uniform", "read", "rw"],
        expect: { WG: WG_64 },
      },
      [a.numExperts, a.slotBase, a.minResident],
      [a.slots, a.logits],
      (t) => ceilDiv(t * a.numExperts, WG_64),
    );
  }
}
