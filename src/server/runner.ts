/**
 * Runs one request's generation on the engine (which queues it, opens and frees its session),
 * recording time to first token and decode speed in the server's metrics, measured here on the
 * server's thread as the pieces arrive.
 */
import type { Tokenizer } from "../tokenizer.ts";
import type { GenerationResult, Piece } from "../generate.ts";
import type { SamplingParams } from "../sampling.ts";
import type { ExpertSetMode } from "../types.ts";
import type { Engine } from "../engine/engine.ts";
import { ContextLengthError, InvalidParameterError } from "./errors.ts";
import type { ServerMetrics } from "./metrics.ts";

export interface RunnerContext {
  engine: Engine;
  /** Encodes prompts on the server's thread (the engine decodes with its own copy). */
  tokenizer: Tokenizer;
  metrics: ServerMetrics;
  /** max_tokens when the request gives none (still capped by the context left). */
  defaultMaxTokens: number;
  /** Decode steps per GPU readback for every job; null: the runtime's adaptive choice. */
  stepsPerReadback: number | null;
}

export interface Job {
  promptIds: number[];
  /** The request's max_tokens (0 only with echo), or null. */
  maxTokens: number | null;
  stop: string[];
  sampling: SamplingParams;
  /** Route among resident experts only (the request's router_masking; null: model default). */
  routerMasking: boolean | null;
  /** How the session's experts are chosen (the request's expert_set; null: model default). */
  expertSet?: ExpertSetMode | null;
  /** Top alternatives per token's logprob (0: the token's own only); null: no logprobs. */
  logprobs: number | null;
  /** With logprobs, the prompt's logprobs too (completions' echo). */
  echo: boolean;
  signal: AbortSignal;
  /** performance.now() when the request arrived (time to first token counts from here). */
  arrival: number;
  /** Which parameter held the prompt ("messages" or "prompt"), for error messages. */
  promptParam: string;
}

/** Checks the prompt and max_tokens against the context; returns the max_tokens to use. */
export function resolveMaxTokens(ctx: RunnerContext, job: Job): number {
  const n = job.promptIds.length;
  const maxContext = ctx.engine.info.maxContext;
  const room = maxContext - n;
  if (n === 0) throw new InvalidParameterError(job.promptParam, "the prompt encodes to no tokens");
  if (room < (job.maxTokens === 0 ? 0 : 1)) { // max_tokens 0 (echo) only reads the prompt
    throw new ContextLengthError(
      `this model's maximum context length is ${maxContext} tokens and the prompt has ` +
        `${n}, leaving no room to generate; shorten the ${job.promptParam}`,
      job.promptParam,
    );
  }
  if (job.maxTokens === null) return Math.min(ctx.defaultMaxTokens, room);
  if (job.maxTokens > room) {
    throw new ContextLengthError(
      `this model's maximum context length is ${maxContext} tokens; you requested ` +
        `${n + job.maxTokens} (${n} in the prompt, ${job.maxTokens} for max_tokens); lower ` +
        `max_tokens to at most ${room} or shorten the ${job.promptParam}`,
      "max_tokens",
    );
  }
  return job.maxTokens;
}

/** Generates for `job` in its turn; the caller must have checked it with resolveMaxTokens. */
export async function* runJob(
  ctx: RunnerContext,
  job: Job,
  maxTokens: number,
): AsyncGenerator<Piece, GenerationResult> {
  const it = ctx.engine.run({
    promptIds: job.promptIds,
    maxTokens,
    stop: job.stop,
    sampling: job.sampling,
    routerMasking: job.routerMasking,
    expertSet: job.expertSet ?? null,
    stepsPerReadback: ctx.stepsPerReadback,
    logprobs: job.logprobs,
    echo: job.echo,
  }, job.signal);
  let first = 0;
  let last = 0;
  try {
    while (true) {
      const step = await it.next();
      last = performance.now();
      if (first === 0) first = last;
      if (step.done) {
        ctx.metrics.recordGeneration({
          promptTokens: step.value.promptTokens,
          completionTokens: step.value.completionTokens,
          ttftSeconds: (first - job.arrival) / 1000,
          decodeSeconds: (last - first) / 1000,
        });
        return step.value;
      }
      yield step.value;
    }
  } finally {
    await it.return(undefined as never); // ended early (client gone): the engine frees the session
  }
}
