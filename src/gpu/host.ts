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
  /** Decode steps times the sequences each computed for (laneSteps / decode steps = the mean
   * batch). */
  laneSteps: number;
  decodeSteps: number;
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
  /** Under a budget: distinct (layer, expert) pairs the decode steps routed, and the steps that
   * loaded more experts than they routed (0 with loadCap). */
  stepRouted: number;
  stepsOverRouted: number;
  /** Logits rows the lm_head was recorded for (a head gate may still skip them on the GPU): a
   * prompt's last row when only that is asked for, every row otherwise. */
  headRows: number;
}

/** Step statistics before any step. */
export function emptyStepStats(): StepStats {
  return {
    steps: 0,
    laneSteps: 0,
    decodeSteps: 0,
    readbacks: 0,
    submits: 0,
    reruns: 0,
    prefillRouted: 0,
    prefillLoads: 0,
    prefetchUseful: 0,
    prefetchMissed: 0,
    expertLoads: 0,
    stepRouted: 0,
    stepsOverRouted: 0,
    headRows: 0,
  };
}

/** A running sequence's place in the next decode batch. */
export interface LaneStep {
  seq: Sequence;
  /** Position of the last token requested: the batch's first step feeds it. */
  front: number;
  sampling: SamplingParams;
}

/** Encoded (and maybe submitted) GPU work whose results come back in one readback: a prefill of
 * one sequence, decode steps of several, or the repair of a step. */
export interface Batch {
  /** Each sequence's part: the position of the first token it samples, and how many. */
  readonly lanes: readonly {
    readonly seq: Sequence;
    readonly first: number;
    readonly count: number;
  }[];
  /** Decode steps (1 token per lane each); 0 for a prefill or a repair. */
  readonly steps: number;
}

/** What a batch's readback brought. */
export interface BatchResult {
  /** Per lane: the sampled tokens at positions first .. first + count - 1 (garbage from
   * invalidAt on), and the GPU's end flag (the sequence's kept length if a sampled token ended
   * it, else -1). */
  lanes: { tokens: number[]; end: number }[];
  /**
   * Under an expert budget: the first step (index in the batch) that routed to an absent expert
   * in exact mode, so its tokens and every later one are invalid; -1 when all are valid.
   */
  invalidAt: number;
}

export interface ForwardHost {
  readonly config: ModelConfig;
  readonly maxContext: number;
  /** Most tokens per forward: prompt chunk size, and most sequences in a decode step. */
  readonly maxBatch: number;
  /** Every expert resident: no step can miss. */
  readonly allResident: boolean;
  readonly stats: StepStats;
  /** Runs fn with the GPU to itself (activations are shared between sequences). */
  exclusive<R>(fn: () => Promise<R>): Promise<R>;
  /** A sequence for tokens starting with `prompt`, reusing the longest cached prefix (`reuse`
   * positions already computed); and back, with the tokens its KV rows hold. */
  acquireSequence(prompt?: readonly number[]): { seq: Sequence; reuse: number };
  releaseSequence(seq: Sequence, cached: readonly number[]): void;
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
  /** Whether prefillTogether() can prefill several prompts in one batch. */
  readonly prefillsTogether: boolean;
  /** Several sequences' prompts in one batch (each sequence's first token sampled), submitted. */
  prefillTogether(
    joins: { seq: Sequence; ids: number[]; pos0: number; sampling: SamplingParams }[],
    masked: boolean,
  ): Batch;
  /** Most decode steps a batch of `lanes` sequences may hold. */
  maxStepsFor(lanes: number): number;
  /** Most sequences one decode step may hold: maxBatch, and under an expert budget as many as
   * the slots hold one layer's routed experts for (a step's layer must find all of its experts
   * resident at once). */
  readonly maxLanes: number;
  /** Pipeline every cycle even while steps keep missing (the baseline kept for benchmarks; the
   * loop otherwise stops pipelining while most cycles repair a miss). */
  readonly alwaysPipeline: boolean;
  /**
   * Encodes n decode steps of every lane (one token of each sequence per step; lane b's inputs at
   * front_b .. front_b + n - 1, sampling front_b + 1 .. front_b + n). Not submitted.
   */
  encodeSteps(lanes: LaneStep[], masked: boolean, n: number): Batch;
  submit(batch: Batch): void;
  /**
   * Maps the batches' readbacks together (one round trip), calls `meanwhile` between the mapAsync
   * calls and the wait (submit the next batch there, so the GPU works while the readback's fixed
   * delay runs), and returns their results; the expert cache learns the valid steps' routing.
   */
  read(batches: Batch[], meanwhile?: () => void): Promise<BatchResult[]>;
  /**
   * Under a budget, after read() found step `invalidAt` of this batch invalid: loads the experts
   * its first missed layer routed to (plus prefetch), then encodes and submits that step again
   * from that layer. The returned batch samples that step's tokens.
   */
  repair(batch: Batch): Batch;
  /** A submitted batch the loop will not read (dropped): its buffers go back for reuse. */
  discard(batch: Batch): void;
}
