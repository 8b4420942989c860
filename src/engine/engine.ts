/**
 * The engine: everything the HTTP server needs from the model side (one generation at a time in
 * FIFO order, sessions, the expert cache). Two implementations: LocalEngine runs in the calling
 * thread; WorkerEngine proxies one that runs in a Deno Worker, so GPU readbacks (which block the
 * thread that waits on them) never stall the server's thread.
 */
import type { ExpertSetMode, ModelConfig } from "../types.ts";
import type { GenerationResult, Piece } from "../generate.ts";
import type { SamplingParams } from "../sampling.ts";

/** What one generation asks of the model; the server has already checked it. */
export interface EngineJob {
  promptIds: number[];
  /** Generated tokens at most, already fitted to the context (0 only with echo). */
  maxTokens: number;
  /** Strings that end generation; none of them is emitted. */
  stop: string[];
  sampling: SamplingParams;
  /** Route among resident experts only; null: the model's default (--router-masking). */
  routerMasking: boolean | null;
  /** How the session's experts are chosen (src/gpu/expert_sets.ts); null or absent: the model's
   * default (--expert-set). Optional so that callers written before expert sets still build a
   * job. */
  expertSet?: ExpertSetMode | null;
  /** Decode steps per GPU readback; null: the runtime's adaptive choice. */
  stepsPerReadback: number | null;
  /** Log-probabilities with this many top alternatives per token (0: the token's own only);
   * null or absent: none (the GPU decode loop; with logprobs the decode goes through forward()).
   * Optional so that callers written before logprobs still build a job. */
  logprobs?: number | null;
  /** With logprobs: the prompt's too (GenerationResult.promptLogprobs). Absent: false. */
  echo?: boolean;
}

/** The served model's shape, known once the engine is ready. */
export interface EngineInfo {
  config: ModelConfig;
  /** Longest sequence (prompt + generated) one session can hold. */
  maxContext: number;
  /** Generations decoded together at most (the others wait). */
  maxSequences: number;
  /** Requests that may wait for a place; more are refused (503). */
  maxQueue: number;
}

export interface Engine {
  /** The model's config and context length. */
  readonly info: EngineInfo;
  /**
   * Runs `job` in its FIFO turn (one generation at a time): opens a session, yields a Piece per
   * generated token, returns the finish reason and usage, and always frees the session. Aborting
   * `signal` (client gone) ends it with QueueAbortedError while it waits, GenerationAbortedError
   * once it runs; `return()` on the generator ends it too.
   */
  run(job: EngineJob, signal: AbortSignal): AsyncGenerator<Piece, GenerationResult>;
  /**
   * The latest known figures, without waiting: queueWaiting (jobs waiting for their turn),
   * queueBusy (1 while one generates), liveSessions (opened, not yet freed), sessionsCreated,
   * plus the model's own (expert cache hits, misses, ..., gpuSteps, gpuReadbacks: runtimeStats()
   * in local.ts). A WorkerEngine returns the last snapshot its worker pushed.
   */
  stats(): Record<string, number>;
  /** Throws QueueFullError (HTTP 503) when a job submitted now would be refused: checked before
   * a response starts, so a streamed request gets a status, not an error event. */
  checkAdmission(): void;
  /** Ends running jobs at their next token, frees the model, and refuses jobs after. */
  close(): Promise<void>;
}

/** The engine was closed: it runs no more jobs. */
export class EngineClosedError extends Error {
  override name = "EngineClosedError";
  constructor() {
    super("the engine is closed (the server is shutting down); retry on a running server");
  }
}
