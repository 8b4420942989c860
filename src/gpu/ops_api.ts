/**
 * The contract between the forward pass (src/gpu/model.ts) and the WGSL kernels (kernels/*.wgsl,
 * wrapped in src/gpu/ops.ts). Each op is *prepared* once at model build (pipeline, bind group,
 * uniform buffer of its static sizes) and *recorded* on every forward: recording allocates nothing.
 *
 * Dynamic per-step values live in one uniform buffer, the StepUniform, bound to every kernel and
 * written (or copied from a table of records) once per forward:
 *   struct Step { n_tokens: u32, pos0: u32, kv_len: u32, _pad: u32,
 *                 tokens: array<vec4<u32>, MAX_STEP_TOKENS> }
 * tokens[t] = (slab, position, 0, 0): token t belongs to the sequence whose KV cache and ids are in
 * slab `slab`, at `position`. A forward of one sequence has its tokens at pos0 + t and kv_len =
 * pos0 + n_tokens (the position the sampler fills); a batched decode step has one token of each of
 * several sequences. stepRecord() builds a record.
 *
 * Activations are f32 in storage buffers laid out row-major, one row per token.
 * Weights stay in their checkpoint dtype on the GPU, packed in array<u32>:
 *   f32: one element per u32; bf16: two per u32 (element 2i in the low half); f16: two per u32
 *   (unpack2x16float). Inner (K) dimensions are multiples of 4.
 */

/** Most tokens one forward step holds (the token table of the Step uniform). */
export const MAX_STEP_TOKENS = 128;

/** Texels a row of a weight texture (TextureWeight): WebGPU's default maxTextureDimension2D, which
 * every adapter offers; a power of two, so a word's texel is a mask and a shift. */
export const WEIGHT_TEXTURE_WIDTH = 8192;

/** A Step uniform record: n tokens of one sequence in slab `slab` at positions pos0.. (or, with
 * `tokens`, one entry (slab, position) per token). Only the first MAX_STEP_TOKENS get a table
 * entry: kernels that read the table (embedding, RoPE, KV store, attention) must not run on more
 * (the model's maxBatch is at most that); the others only read n_tokens. */
export function stepRecord(
  n: number,
  pos0: number,
  slab = 0,
  tokens?: [number, number][],
): Uint32Array<ArrayBuffer> {
  const r = new Uint32Array(4 + MAX_STEP_TOKENS * 4);
  r[0] = n;
  r[1] = pos0;
  r[2] = pos0 + n;
  for (let t = 0; t < Math.min(n, MAX_STEP_TOKENS); t++) {
    const [s, p] = tokens ? tokens[t] : [slab, pos0 + t];
    r[4 + t * 4] = s;
    r[5 + t * 4] = p;
  }
  return r;
}

export type FloatWeightDType = "f32" | "bf16" | "f16";
/** GGML's block-quantized types (src/quant/formats.ts), dequantized in the kernels' loaders. */
export type QuantWeightDType = "q8_0" | "q4_0" | "q5_0" | "q4_k" | "q6_k";
export type WeightDType = FloatWeightDType | QuantWeightDType;

/** What every weight matrix states: its dtype, where element [0, 0] is, its layout. */
interface WeightCommon {
  dtype: WeightDType;
  /** Offset of element [0,0] in elements of dtype (bf16/f16: must be even; quantized types: a
   * whole number of blocks, see src/gpu/weight_dtype.ts). */
  offsetElems: number;
  /** "rows" (default): row-major. "rows8" (f32/f16/bf16, K a multiple of 8): each block of 8 rows
   * stored column chunk by column chunk, the 8 rows' 8 elements of a chunk together, the last
   * block padded (src/gpu/resident.ts repackRows8; matmul.wgsl); for q8_0, q4_0, q5_0 (K a
   * multiple of 32) and q6_k, q4_k (of 256) each group of 8 rows' blocks rearranged, the same
   * bytes, so that a chunk's 8 rows load as a few vectors (repackQ8Rows8, repackQ4Rows8,
   * repackQ6KRows8, repackQ4KRows8; kernels/weights_<type>_rows8.wgsl). Only matmul reads it. */
  layout?: "rows" | "rows8";
}

/** A weight matrix [rows, cols] somewhere in a GPU buffer. */
export interface BufferWeight extends WeightCommon {
  buffer: GPUBuffer;
  texture?: undefined;
}

/**
 * A rows8 weight matrix in a read-only storage texture instead (rgba32uint, WEIGHT_TEXTURE_WIDTH
 * texels a row: the matrix's 16-byte word i at texel (i % width, i / width); the last row's tail
 * unused): the same bytes as the buffer would hold, read by matmul through textureLoad
 * (src/gpu/shader.ts textureWeights). llvmpipe fetches a storage-texture texel with one 16-byte
 * load a lane where a storage-buffer load is four 4-byte loads, each behind its own bounds check.
 */
export interface TextureWeight extends WeightCommon {
  texture: GPUTexture;
  buffer?: undefined;
  layout: "rows8";
}

/** A weight matrix, in a buffer or (rows8, for matmul) a texture. */
export type WeightRef = BufferWeight | TextureWeight;

/** A prepared dispatch. record() encodes it into a pass for the current step's token count. */
export interface Op {
  readonly name: string;
  record(pass: GPUComputePassEncoder, nTokens: number): void;
}

/** An op that can also take its workgroup counts from a GPU buffer (dispatchWorkgroupsIndirect),
 * so that a kernel before it can cancel it (headGate). */
export interface IndirectOp extends Op {
  /** The indirect arguments [x, y, z] record() would dispatch for nTokens (x, y <= 65535). */
  dispatchArgs(nTokens: number): [number, number, number];
  /** As record(), with the counts read from args at offset (bytes) when the GPU runs it. */
  recordIndirect(
    pass: GPUComputePassEncoder,
    nTokens: number,
    args: GPUBuffer,
    offset: number,
  ): void;
}

export interface OpsApi {
  /** The StepUniform buffer (16 bytes) every op reads. */
  readonly step: GPUBuffer;

  /** out[t, g*dim + i] = x[t, g*dim + i] * rsqrt(mean_i(x[t,g,:]^2) + eps) * weight[i], for
   * g < groups. weight is f32 [dim]. out may be x (in place). */
  rmsnorm(
    a: {
      x: GPUBuffer;
      weight: GPUBuffer;
      out: GPUBuffer;
      dim: number;
      groups: number;
      eps: number;
    },
  ): Op;

  /** out[t, outOffset + n] (+)= sum_k x[t, k] * W[n, k] for n < N, row stride of out = outStride.
   * accumulate: add to out instead of overwriting (fused residual). */
  matmul(a: {
    x: GPUBuffer;
    w: WeightRef;
    out: GPUBuffer;
    K: number;
    N: number;
    outStride: number;
    outOffset: number;
    accumulate: boolean;
  }): IndirectOp;

  /** Under an expert budget, before a step's lm_head: when any of missed[0 .. flags) or the
   * sticky word args[argWords] is set, sets the sticky word and zeroes args[0 .. argWords) (the
   * lm_head's indirect dispatch arguments), so the lm_head of a step whose logits will be thrown
   * away does no work. One dispatch. */
  headGate(a: { missed: GPUBuffer; flags: number; args: GPUBuffer; argWords: number }): Op;

  /** In place rotate-half RoPE on x[t, h, :] for h < heads, at position pos0 + t.
   * table: f32 [maxPos, headDim] holding cos[pos, 0..headDim/2) then sin[pos, 0..headDim/2). */
  rope(a: { x: GPUBuffer; table: GPUBuffer; heads: number; headDim: number }): Op;

  /** K and V of this step into the caches: for token t of slab s (Step.tokens) in the caches'
   * slabs [firstSlab, firstSlab + slabs) (default 0, 1), at position pos:
   * kCache[((s - firstSlab) * positions + pos) * width + i] = k[t, i] for i < width, and the same
   * for v; positions = the caches' rows per slab. Tokens of other slabs are skipped. */
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
  ): Op;

  /** Queries and keys of this step normalised per head and rotated, in place, in one op: the
   * same values as rmsnorm (groups = heads, weight qNorm / kNorm) followed by rope on q and k. */
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
  }): Op;

  /** Causal GQA attention of each token over its own sequence: q: [T, Hq*Dh]; caches: [slabs,
   * positions, Hkv*Dh] holding the sequences of slabs [firstSlab, firstSlab + slabs) (default 0,
   * 1); token t of slab s at position p (Step.tokens):
   * out[t, h*Dh + d] = sum_{j <= p} softmax_j(q[t,h]·k[s, j, h/(Hq/Hkv)] * scale) v[s, j, ...][d].
   * Tokens of other slabs are skipped. */
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
  }): Op;

  /** Router: p = softmax(logits[t, 0..E)) in f32; pick the K largest (ties: lower index first,
   * in descending order); weights = p of those, divided by their sum when normTopk.
   * idx: u32 [T, K]; weights: f32 [T, K]. */
  topk(
    a: {
      logits: GPUBuffer;
      idx: GPUBuffer;
      weights: GPUBuffer;
      numExperts: number;
      k: number;
      normTopk: boolean;
    },
  ): Op;

  /**
   * Experts, stage 1, for every (t, j < K): e = idx[t, j], s = slots[slotBase + e].
   * h[t*K + j, i] = silu(gate_e[i,:]·x[t,:]) * (up_e[i,:]·x[t,:]) for i < I.
   * Expert weights live in slots of a group of pool buffers (ExpertGroupBinding, bound together):
   * slot s holds gate [I, D], up [I, D], down [D, I] (at partOffset) from element
   * slotElems * ((s - firstSlot) % slotsPerPool) of pool buffer (s - firstSlot) / slotsPerPool.
   * Only pairs whose slot lies in [firstSlot, firstSlot + slots) are computed by this op. A slot
   * of 0xFFFFFFFF means "not resident": the op sets missed[slotBase + e] = 1 and writes nothing
   * for that pair.
   */
  expertsGateUp(a: {
    x: GPUBuffer;
    idx: GPUBuffer;
    slots: GPUBuffer;
    slotBase: number;
    missed: GPUBuffer;
    group: ExpertGroupBinding;
    poolDtype: WeightDType;
    slotElems: number;
    partOffset: number;
    h: GPUBuffer;
    k: number;
    hidden: number;
    inter: number;
    /** Group the step's pairs by expert first (default true); false reuses the grouping of an
     * earlier op of the same idx in the pass (the model's later expert ops of a layer). */
    groupPairs?: boolean;
    /** The model's experts per layer, for the tile size (the ops of one idx must agree). */
    numExperts?: number;
  }): Op;

  /** Experts, stage 2: y[t*K + j, d] = down_e[d, :]·h[t*K + j, :], same slot rules as stage 1. */
  expertsDown(a: {
    h: GPUBuffer;
    idx: GPUBuffer;
    slots: GPUBuffer;
    slotBase: number;
    group: ExpertGroupBinding;
    poolDtype: WeightDType;
    slotElems: number;
    partOffset: number;
    y: GPUBuffer;
    k: number;
    hidden: number;
    inter: number;
    /** Group the step's pairs by expert first (default true); false reuses the grouping of an
     * earlier op of the same idx in the pass (the model's later expert ops of a layer). */
    groupPairs?: boolean;
    /** The model's experts per layer, for the tile size (the ops of one idx must agree). */
    numExperts?: number;
  }): Op;

  /** out[t, d] += sum_{j<K} weights[t, j] * y[t*K + j, d], summed in order j = 0..K-1. */
  moeCombine(
    a: { y: GPUBuffer; weights: GPUBuffer; out: GPUBuffer; k: number; hidden: number },
  ): Op;

  /** Router masking (approximate mode): logits[t, e] = -3e38 (zero probability) for every
   * expert e whose slots[slotBase + e] is absent, unless fewer than max(minResident, 1)
   * experts of the layer are resident (then the layer routes exactly). */
  routerMask(
    a: {
      logits: GPUBuffer;
      slots: GPUBuffer;
      slotBase: number;
      numExperts: number;
      minResident: number;
    },
  ): Op;

  /** Embedding gather: out[t, :] = table[id - first, :] (f32), id = ids[s * idsStride + pos] for
   * token t of slab s at position pos (Step.tokens), for ids in [first, first + rows), the rows of
   * the table this op binds (one op per chunk of the table; the others leave the row alone).
   * table is [rows, hidden] in its dtype. */
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
  ): Op;

  /** out[0] = index of the largest x[T-1, 0..n) (lowest index on ties), as u32. */
  argmax(a: { x: GPUBuffer; n: number; out: GPUBuffer }): Op;
}

/** A group of expert pool buffers one expert op binds at once: slots [firstSlot, firstSlot +
 * slots), pool buffer b holding slots firstSlot + b * slotsPerPool onwards. */
export interface ExpertGroupBinding {
  /** Storage buffers, or weight textures (TextureWeight's layout; src/gpu/expert_pool.ts
   * ExpertPoolOptions.textures), all of one kind. */
  pools: (GPUBuffer | GPUTexture)[];
  firstSlot: number;
  slots: number;
  slotsPerPool: number;
  /** Pool bindings of the kernel (default pools.length; more pads with the last pool, so groups
   * of different sizes share one pipeline). */
  bindings?: number;
}
