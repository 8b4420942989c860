/**
 * Runs one request's generation: waits its turn in the model's queue, opens a Session of its own,
 * generates, and always frees the session and releases the queue (finished, failed or aborted),
 * recording the timings in the metrics.
 */
import type { LanguageModel, Session } from "../types.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { generate, type GenerationResult, type Piece } from "../generate.ts";
import type { SamplingParams } from "../sampling.ts";
import { ContextLengthError, InvalidParameterError } from "./errors.ts";
import type { GenerationQueue } from "./queue.ts";
import type { ServerMetrics } from "./metrics.ts";

export interface RunnerContext {
  model: LanguageModel;
  tokenizer: Tokenizer;
  queue: GenerationQueue;
  metrics: ServerMetrics;
  /** max_tokens when the request gives none (still capped by the context left). */
  defaultMaxTokens: number;
}

export interface Job {
  promptIds: number[];
  /** The request's max_tokens, or null. */
  maxTokens: number | null;
  stop: string[];
  sampling: SamplingParams;
  /** Route among resident experts only (the request's router_masking; null: model default). */
  routerMasking: boolean | null;
  signal: AbortSignal;
  /** performance.now() when the request arrived (time to first token counts from here). */
  arrival: number;
  /** Which parameter held the prompt ("messages" or "prompt"), for error messages. */
  promptParam: string;
}

/** Checks the prompt and max_tokens against the context; returns the max_tokens to use. */
export function resolveMaxTokens(ctx: RunnerContext, job: Job): number {
  const n = job.promptIds.length;
  const room = ctx.model.maxContext - n;
  if (n === 0) throw new InvalidParameterError(job.promptParam, "the prompt encodes to no tokens");
  if (room < 1) {
    throw new ContextLengthError(
      `this model's maximum context length is ${ctx.model.maxContext} tokens and the prompt has ` +
        `${n}, leaving no room to generate; shorten the ${job.promptParam}`,
      job.promptParam,
    );
  }
  if (job.maxTokens === null) return Math.min(ctx.defaultMaxTokens, room);
  if (job.maxTokens > room) {
    throw new ContextLengthError(
      `this model's maximum context length is ${ctx.model.maxContext} tokens; you requested ` +
        `${n + job.maxTokens} (${n} in the prompt, ${job.maxTokens} for max_tokens); lower ` +
        `max_tokens to at most ${room} or shorten the ${job.promptParam}`,
      "max_tokens",
    );
  }
  return job.maxTokens;
}

/** Every id that ends generation: config.json's eos_token_id list plus the tokenizer's eos. */
export function eosIds(ctx: RunnerContext): number[] {
  const ids = new Set(ctx.model.config.eosTokenIds);
  if (ctx.tokenizer.eosTokenId !== null) ids.add(ctx.tokenizer.eosTokenId);
  return [...ids];
}

/** Generates for `job` in its turn; the caller must have checked it with resolveMaxTokens. */
export async function* runJob(
  ctx: RunnerContext,
  job: Job,
  maxTokens: number,
): AsyncGenerator<Piece, GenerationResult> {
  const release = await ctx.queue.acquire(job.signal);
  let session: Session | null = null;
  let first = 0;
  let last = 0;
  try {
    session = ctx.model.newSession(
      job.routerMasking === null ? {} : { routerMasking: job.routerMasking },
    );
    const it = generate(session, {
      promptIds: job.promptIds,
      maxTokens,
      sampling: job.sampling,
      eosIds: eosIds(ctx),
      stop: job.stop,
      decoder: ctx.tokenizer.streamDecoder({ skipSpecial: true }),
      signal: job.signal,
    });
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
    session?.free();
    release();
  }
}
