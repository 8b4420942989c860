/**
 * Shared records of the runtime. Dimension legend used in shape comments:
 *   T tokens in a step, D hidden, V vocab, L layers, Hq query heads, Hkv kv heads, Dh head dim,
 *   E experts, K experts per token (top-k), I expert intermediate size.
 */

/** The text model's hyper-parameters, read once from config.json (see src/config.ts). */
export interface ModelConfig {
  /** "qwen3_moe" or "qwen3_omni_moe" (the thinker's text model). */
  modelType: string;
  /** Prefix of every text-model tensor name: "" for Qwen3-MoE, "thinker." for Qwen3-Omni. */
  tensorPrefix: string;
  vocabSize: number; // V
  hiddenSize: number; // D
  numLayers: number; // L
  numHeads: number; // Hq
  numKvHeads: number; // Hkv
  headDim: number; // Dh (may differ from D / Hq)
  numExperts: number; // E
  topK: number; // K
  moeIntermediateSize: number; // I
  normTopkProb: boolean;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  /** Every id that ends generation (config.json's eos_token_id, number or list). */
  eosTokenIds: number[];
}

/** Element types found in checkpoints. */
export type DType = "F32" | "BF16" | "F16";

/** One tensor of a checkpoint: a zero-copy view of its bytes in the mapped file. */
export interface TensorView {
  name: string;
  dtype: DType;
  shape: number[];
  /** Raw little-endian bytes, a view into the memory-mapped shard (never a heap copy). */
  bytes: Uint8Array;
  /** Which shard file it came from (path) and where its data starts in that file. */
  file: string;
  offset: number;
}

/** One expert's three projections. gate, up: [I, D]; down: [D, I]. */
export interface ExpertWeights {
  gate: TensorView;
  up: TensorView;
  down: TensorView;
}

/** Everything one decoder layer needs. */
export interface LayerWeights {
  inputNorm: TensorView; // [D]
  q: TensorView; // [Hq*Dh, D]
  k: TensorView; // [Hkv*Dh, D]
  v: TensorView; // [Hkv*Dh, D]
  o: TensorView; // [D, Hq*Dh]
  qNorm: TensorView; // [Dh]
  kNorm: TensorView; // [Dh]
  postAttentionNorm: TensorView; // [D]
  router: TensorView; // [E, D]
  /** Expert e of this layer; views into the checkpoint (per-expert or fused tensors). */
  expert(e: number): ExpertWeights;
}

/** The whole model's weights, every one accounted for by the loader's audit. */
export interface ModelWeights {
  config: ModelConfig;
  embed: TensorView; // [V, D]
  layers: LayerWeights[]; // [L]
  finalNorm: TensorView; // [D]
  lmHead: TensorView; // [V, D] (the embedding table itself when tie_word_embeddings)
}

/**
 * A model that turns token ids into next-token logits, step by step, with its own KV cache.
 * Implemented by the WebGPU runtime and by the CPU float64 reference, so one test suite and the
 * server run against either.
 */
export interface LanguageModel {
  readonly config: ModelConfig;
  /** Longest sequence (prompt + generated) one session can hold. */
  readonly maxContext: number;
  /** A fresh sequence with an empty KV cache. */
  newSession(opts?: SessionOptions): Session;
}

export interface SessionOptions {
  /**
   * Approximate mode: route each token only among experts already resident in GPU memory (no
   * load on a miss). Models without an expert budget ignore it.
   */
  routerMasking?: boolean;
}

export interface Session {
  /** Tokens already in the KV cache. */
  readonly length: number;
  /**
   * Runs ids through the model at positions length..length+ids.length-1 in one pass (prefill or
   * decode) and returns their logits, one row per id: [ids.length][V], or only the last row when
   * lastOnly is true.
   */
  forward(ids: number[], opts?: { lastOnly?: boolean }): Promise<Float32Array[]>;
  /** Drops the KV cache back to `length` tokens (0: empty). */
  truncate(length: number): void;
  /** Frees the session's KV cache and buffers; the session cannot be used after. */
  free(): void;
}
