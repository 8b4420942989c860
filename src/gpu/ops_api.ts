/**
 * The contract between the forward pass (src/gpu/model.ts) and the WGSL kernels (kernels/*.wgsl,
 * wrapped in src/gpu/ops.ts). Each op is *prepared* once at model build (pipeline, bind group,
 * uniform buffer of its static sizes) and *recorded* on every forward: recording allocates nothing.
 *
 * Dynamic per-step values live in one uniform buffer, the StepUniform, bound to every kernel and
 * written once per forward:
 *   struct Step { n_tokens: u32, pos0: u32, kv_len: u32, _pad: u32 }
 * Token t of the step sits at position pos0 + t; kv_len = pos0 + n_tokens.
 *
 * Activations are f32 in storage buffers laid out row-major, one row per token.
 * Weights stay in their checkpoint dtype on the GPU, packed in array<u32>:
 *   f32: one element per u32; bf16: two per u32 (element 2i in the low half); f16: two per u32
 *   (unpack2x16float). Inner (K) dimensions are multiples of 4.
 */

export type WeightDType = "f32" | "bf16" | "f16";

/** A weight matrix [rows, cols] (row-major) somewhere in a GPU buffer. */
export interface WeightRef {
  buffer: GPUBuffer;
  dtype: WeightDType;
  /** Offset of element [0,0] in elements of dtype (bf16/f16: must be even). */
  offsetElems: number;
}

/** A prepared dispatch. record() encodes it into a pass for the current step's token count. */
export interface Op {
  readonly name: string;
  record(pass: GPUComputePassEncoder, nTokens: number): void;
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
  }): Op;

  /** In place rotate-half RoPE on x[t, h, :] for h < heads, at position pos0 + t.
   * table: f32 [maxPos, headDim] holding cos[pos, 0..headDim/2) then sin[pos, 0..headDim/2). */
  rope(a: { x: GPUBuffer; table: GPUBuffer; heads: number; headDim: number }): Op;

  /** cache[(pos0 + t) * width + i] = x[t, i] for i < width (K or V of this step into the cache). */
  kvStore(a: { x: GPUBuffer; cache: GPUBuffer; width: number }): Op;

  /** Causal GQA attention. q: [T, Hq*Dh]; caches: [maxCtx, Hkv*Dh] holding positions < kv_len.
   * out[t, h*Dh + d] = sum_{j <= pos0+t} softmax_j(q[t,h]·k[j,h/(Hq/Hkv)] * scale) v[j, ...][d]. */
  attention(a: {
    q: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
    out: GPUBuffer;
    numHeads: number;
    numKvHeads: number;
    headDim: number;
    scale: number;
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
   * Expert weights live in a slot of a pool buffer; slot s holds gate [I, D], up [I, D], down [D, I]
   * back to back starting at element slotElems * (s - poolFirstSlot) of `pool`. Only pairs whose
   * slot lies in [poolFirstSlot, poolFirstSlot + poolSlots) are computed by this op (one op per
   * pool buffer). A slot of 0xFFFFFFFF means "not resident": the op sets missed[slotBase + e] = 1
   * and writes nothing for that pair.
   */
  expertsGateUp(a: {
    x: GPUBuffer;
    idx: GPUBuffer;
    slots: GPUBuffer;
    slotBase: number;
    missed: GPUBuffer;
    pool: GPUBuffer;
    poolDtype: WeightDType;
    poolFirstSlot: number;
    poolSlots: number;
    slotElems: number;
    h: GPUBuffer;
    k: number;
    hidden: number;
    inter: number;
  }): Op;

  /** Experts, stage 2: y[t*K + j, d] = down_e[d, :]·h[t*K + j, :], same slot rules as stage 1. */
  expertsDown(a: {
    h: GPUBuffer;
    idx: GPUBuffer;
    slots: GPUBuffer;
    slotBase: number;
    pool: GPUBuffer;
    poolDtype: WeightDType;
    poolFirstSlot: number;
    poolSlots: number;
    slotElems: number;
    y: GPUBuffer;
    k: number;
    hidden: number;
    inter: number;
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

  /** Embedding gather: out[t, :] = table[ids[pos0 + t] - first, :] (f32) for tokens whose id is in
   * [first, first + rows), the rows of the table this op binds (one op per chunk of the table;
   * the others leave the row alone). table is [rows, hidden] in its dtype. */
  embed(
    a: {
      ids: GPUBuffer;
      table: WeightRef;
      first: number;
      rows: number;
      hidden: number;
      out: GPUBuffer;
    },
  ): Op;

  /** out[0] = index of the largest x[T-1, 0..n) (lowest index on ties), as u32. */
  argmax(a: { x: GPUBuffer; n: number; out: GPUBuffer }): Op;
}
