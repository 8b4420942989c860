/**
 * What sessions (src/gpu/session.ts) and the decode loop (src/gpu/decode_loop.ts) need from the
 * forward pass (src/gpu/model.ts implements it). Declared here so that neither imports the model:
 * the model computes and records; the loop decides how many steps to encode, when to read back and
 * where a sequence ends.
 *
 * A Batch is GPU work for one sequence that ends in one readback: a prefill (the prompt's forwards
 * and the sampling of the token after it) or up to MAX_STEPS_PER_BATCH decode steps (each embeds
 * the token at its position, runs every layer and samples the next token, all on the GPU).
 */
import type { ModelConfig } from "../types.ts";
import type { SamplingParams } from "../sampling.ts";
import type { SamplerRequest } from "./sampler.ts";
import type { Sequence } from "./sequence.ts";

/** A sequence would outgrow the context its KV cache holds. */
export class ContextOverflowError extends Error {
  override name = "ContextOverflowError";
}

/** Most decode steps encoded in one submission (sizes the step table and the readback logs). */
export const MAX_STEPS_PER_BATCH = 64;

/** How often the GPU reported back, and what the expert cache did. */
export interface StepStats {
  /** Forward steps (prefill chunks and decode steps) computed, reruns excluded. */
  steps: number;
  /** GPU -> CPU round trips (mapAsync). */
  readbacks: number;
  /** Command submissions that compute steps (queue.submit of forwards). */
  submits: number;
  /** Extra passes over layers caused by misses (0 when every routed expert was resident). */
  reruns: number;
  /** Prefill only: distinct (layer, expert) pairs routed, and experts loaded for them. */
  prefillRouted: number;
  prefillLoads: number;
  /** Speculative loads that the final routing used / loads whose layer missed without a guess. */
  prefetchUseful: number;
  prefetchMissed: number;
  /** Expert records uploaded (all causes). */
  expertLoads: number;
}

/** Encoded (and maybe submitted) GPU work whose results come back in one readback. */
export interface Batch {
  readonly seq: Sequence;
  /** Position of the first token this batch samples, and how many it samples. */
  readonly first: number;
  readonly count: number;
  /** Decode steps (1 token each); 0 for a prefill. */
  readonly steps: number;
}

/** What a batch's readback brought. */
export interface BatchResult {
  /** The sampled tokens at positions first .. first + count - 1 (garbage from `invalidAt` on). */
  tokens: number[];
  /** The GPU's end flag: the kept length of the sequence if a sampled token ended it, else -1. */
  end: number;
  /**
   * Under an expert budget: the first decode step (index in the batch) that routed to an absent
   * expert in exact mode, so that its token and every later one are invalid; -1 when all are valid.
   */
  invalidAt: number;
}

export interface ForwardHost {
  readonly config: ModelConfig;
  readonly maxContext: number;
  readonly maxBatch: number;
  /** Every expert resident: no step can miss. */
  readonly allResident: boolean;
  readonly stats: StepStats;
  /** Runs fn with the GPU to itself (activations are shared between sequences). */
  exclusive<R>(fn: () => Promise<R>): Promise<R>;
  /** A sequence's buffers from the free list, or new ones; and back. */
  acquireSequence(): Sequence;
  releaseSequence(seq: Sequence): void;
  /** Logits of ids at positions pos0.. (all rows or the last): one readback per forward. */
  forward(
    seq: Sequence,
    masked: boolean,
    ids: number[],
    pos0: number,
    lastOnly: boolean,
  ): Promise<Float32Array[]>;
  /** Writes the request's sampling parameters and clears the end flag (queue-ordered). */
  setRequest(seq: Sequence, req: SamplerRequest): void;
  /**
   * Prefill of ids at pos0.. followed by the sampling of the token at pos0 + ids.length. With every
   * expert resident it is encoded and submitted at once; under a budget it goes layer by layer
   * (awaiting a readback per layer) and the head and sampler are submitted at the end.
   */
  prefill(
    seq: Sequence,
    masked: boolean,
    ids: number[],
    pos0: number,
    sampling: SamplingParams,
  ): Promise<Batch>;
  /**
   * Encodes n decode steps (n <= MAX_STEPS_PER_BATCH) for inputs at positions pos0 .. pos0+n-1,
   * sampling positions pos0+1 .. pos0+n. Not submitted: submit() sends it.
   */
  encodeSteps(
    seq: Sequence,
    masked: boolean,
    pos0: number,
    n: number,
    sampling: SamplingParams,
  ): Batch;
  submit(batch: Batch): void;
  /**
   * Maps the batch's readback, calls `meanwhile` between the mapAsync call and the wait (submit
   * the next batch there, so the GPU works while the readback's fixed delay runs), and returns
   * the results; the expert cache learns the valid steps' routing.
   */
  read(batch: Batch, meanwhile?: () => void): Promise<BatchResult>;
  /**
   * Under a budget, after read() found step `result.invalidAt` invalid: loads the experts its
   * first missed layer routed to (plus prefetch), then encodes and submits that step again from
   * that layer. The returned batch samples that step's token.
   */
  repair(batch: Batch, result: BatchResult, sampling: SamplingParams): Batch;
}
