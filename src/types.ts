/**
 * Shared records of the runtime. Dimension legend used in shape comments:
 *   T tokens in a step, D hidden, V vocab, L layers, Hq query heads, Hkv kv heads, Dh head dim,
 *   E experts, K experts per token (top-k), I expert intermediate size.
 */

import type { QuantType } from "./quant/formats.ts";
import type { SamplingParams } from "./sampling.ts";

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
/** Element types found in checkpoints: floats, and GGML's block-quantized types (packed with
 * `--quant`, or read from GGUF files; layouts in src/quant/formats.ts). */
export type DType = FloatDType | QuantType;

/** Element types with a fixed size per element. */
export type FloatDType = "F32" | "BF16" | "F16";

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
  /** A fresh sequence with an empty KV cache (or, with opts.prefix, a cached prefix of it). */
  newSession(opts?: SessionOptions): Session;
  /** Sequences that can decode at once (default 1). */
  readonly maxSequences?: number;
}

export interface SessionOptions {
  /**
   * The tokens the session will start with (its prompt): a model that keeps the KV rows of
   * finished sequences may start the session on the longest cached prefix of them (its length is
   * then that prefix's). Models without such a cache ignore it.
   */
  prefix?: readonly number[];
  /**
   * Approximate mode: route each token only among experts already resident in GPU memory (no
   * load on a miss). Models without an expert budget ignore it.
   */
  routerMasking?: boolean;
  /**
   * "context": after the prompt's prefill (computed exactly), each layer's share of the expert
   * slots goes to the experts the prompt routed to most; with router masking that set is pinned
   * and decode routes among it (no loads), in exact mode it is the cache's starting set (outputs
   * unchanged). "lru": the cache's policy alone. Models without an expert budget ignore it.
   */
  expertSet?: ExpertSetMode;
}

/** How a sequence's experts are chosen under a budget (SessionOptions.expertSet). */
export type ExpertSetMode = "context" | "lru";

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
  /**
   * Feeds req.feed and samples up to req.maxTokens tokens. `settle` is called with the tokens of
   * each readback as they arrive (in batches; never past an EOS or max_tokens), synchronously,
   * and decides what is kept: undefined keeps them all and goes on; k keeps the first k and ends
   * the decode (a stop string completed at token k). Resolves once the decode ended; afterwards
   * the KV cache holds every kept token but the last. Sessions without it decode through
   * forward() on the CPU (src/decode_cpu.ts).
   */
  decode?(
    req: DecodeRequest,
    settle: (tokens: number[]) => number | undefined,
  ): Promise<DecodeResult>;
  /** Frees the session's KV cache and buffers; the session cannot be used after. */
  free(): void;
}

/** Why a decode ended. */
export type DecodeFinish = "eos" | "length" | "stop" | "abort";

export interface DecodeRequest {
  /** Tokens fed before sampling (the prompt, or a turn's new tokens); at least one. */
  feed: number[];
  /** Tokens to sample at most (>= 1). */
  maxTokens: number;
  /** The seed (when set) makes the draws reproducible: the n-th sampled token of a decode uses
   * counter n of the Philox stream of that seed (src/sampling.ts). */
  sampling: SamplingParams;
  /** Ids that end the sequence (the EOS is kept, as Hugging Face's generate does). */
  eosIds: number[];
  /** Checked at each readback: an aborted decode keeps what was already handed out. */
  signal?: AbortSignal;
  /** Decode steps per readback; undefined adapts. 1 reads back every step, unpipelined. */
  stepsPerReadback?: number;
}

/** The decode steps of one decode (the prefill and the first token excluded). */
export interface DecodeStats {
  /** Tokens sampled by decode steps and kept. */
  tokens: number;
  /** GPU -> CPU round trips and command submissions of those steps. */
  readbacks: number;
  submits: number;
  /** Wall-clock milliseconds from the first token's readback to the last readback. */
  ms: number;
  /** Expert records uploaded meanwhile. */
  expertLoads: number;
}

export interface DecodeResult {
  /** Every kept token, in order (EOS included). */
  tokens: number[];
  finish: DecodeFinish;
  stats: DecodeStats;
}
