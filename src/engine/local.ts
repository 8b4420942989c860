/**
 * LocalEngine: the Engine in the calling thread, over a LanguageModel and its Tokenizer. Up to
 * the model's maxSequences generations run at once (the GPU model decodes them together, one
 * token of each per step); the others wait in a FIFO line of at most maxQueue (more are refused
 * with QueueFullError, HTTP 503). Each job gets a session of its own, started on the longest
 * cached prefix of its prompt when the model keeps one (prompt-prefix reuse), and freed whatever
 * way the job ends (finished, failed, aborted, or its generator returned early).
 */
import type { LanguageModel, Session } from "../types.ts";
import type { Tokenizer } from "../tokenizer.ts";
import type { Runtime } from "../cli/runtime.ts";
import type { ExpertMetricsSnapshot } from "../experts/metrics.ts";
import { generate, type GenerationResult, type Piece } from "../generate.ts";
import { GenerationQueue, QueueFullError } from "../server/queue.ts";
import { type Engine, EngineClosedError, type EngineInfo, type EngineJob } from "./engine.ts";

const MS_PER_SECOND = 1000;

export interface LocalEngineOptions {
  /** The model's own figures (expert cache, GPU counters), merged into stats(). */
  stats?: () => Record<string, number>;
  /** Called whenever the engine's own figures change (a job queued, started or ended). */
  onChange?: () => void;
  /** Frees what the engine owns (a runtime); close() calls it once the jobs have ended. */
  close?: () => void;
  /** Requests that may wait for a place (default DEFAULT_MAX_QUEUE); more get QueueFullError. */
  maxQueue?: number;
}

/** Requests waiting for a place when the caller does not say. */
export const DEFAULT_MAX_QUEUE = 64;

/** Every id that ends generation: config.json's eos_token_id list plus the tokenizer's eos. */
export function eosIds(model: LanguageModel, tokenizer: Tokenizer): number[] {
  const ids = new Set(model.config.eosTokenIds);
  if (tokenizer.eosTokenId !== null) ids.add(tokenizer.eosTokenId);
  return [...ids];
}

/** The expert cache snapshot as flat numbers for /metrics and /stats. */
export function expertCacheStats(s: ExpertMetricsSnapshot): Record<string, number> {
  const out: Record<string, number> = {
    hits: s.hits,
    misses: s.misses,
    hitRate: s.hitRate,
    evictions: s.evictions,
    prefetchIssued: s.prefetchIssued,
    prefetchHit: s.prefetchHit,
    prefetchWasted: s.prefetchWasted,
    bytesUploaded: s.bytesUploaded,
    readAheads: s.readAheads,
  };
  for (const source of ["cold", "warm"] as const) {
    const l = s.latency[source];
    out[`${source}Loads`] = l.count;
    out[`${source}LoadMeanSeconds`] = l.meanMs / MS_PER_SECOND;
    out[`${source}LoadP99Seconds`] = l.p99Ms / MS_PER_SECOND;
  }
  return out;
}

/** A GPU runtime's figures: its expert cache, its slots and its step counters. */
export function runtimeStats(rt: Runtime): Record<string, number> {
  return {
    ...expertCacheStats(rt.model.cache.metrics.snapshot()),
    expertSlots: rt.model.pool.totalSlots,
    gpuSteps: rt.model.stats.steps,
    gpuReadbacks: rt.model.stats.readbacks,
    gpuReruns: rt.model.stats.reruns,
    gpuStepRouted: rt.model.stats.stepRouted,
    gpuStepsOverRouted: rt.model.stats.stepsOverRouted,
    gpuGuessesUsed: rt.model.stats.prefetchUseful,
    gpuGuessesMissed: rt.model.stats.prefetchMissed,
    gpuDecodeSteps: rt.model.stats.decodeSteps,
    gpuSequenceSteps: rt.model.stats.laneSteps,
    kvSequences: rt.model.maxSequences,
    kvFreeSequences: rt.model.freeSequences,
    // experts pinned by context expert sets (src/gpu/expert_sets.ts)
    expertsPinned: rt.model.cache.pinned.size,
    stagedUploads: rt.model.pool.stagingStats.staged,
    writeBufferUploads: rt.model.pool.stagingStats.writeBuffer,
    writeTextureUploads: rt.model.pool.stagingStats.writeTexture,
  };
}

export class LocalEngine implements Engine {
  readonly info: EngineInfo;
  readonly #model: LanguageModel;
  readonly #tokenizer: Tokenizer;
  readonly #eos: number[];
  readonly #opts: LocalEngineOptions;
  readonly #queue: GenerationQueue;
  /** Aborted by close(): ends every job at its next token boundary. */
  readonly #closing = new AbortController();
  #live = 0;
  #created = 0;
  /** Prompt tokens whose KV rows a job found cached (prefix reuse), and jobs that found some. */
  #cachedTokens = 0;
  #cacheHits = 0;
  /** Jobs between their first next() and their end; close() waits for 0. */
  #active = 0;
  #idle: (() => void) | null = null;
  #closed: Promise<void> | null = null;

  constructor(model: LanguageModel, tokenizer: Tokenizer, opts: LocalEngineOptions = {}) {
    this.#model = model;
    this.#tokenizer = tokenizer;
    this.#opts = opts;
    this.#eos = eosIds(model, tokenizer);
    const maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
    this.#queue = new GenerationQueue(model.maxSequences ?? 1, maxQueue);
    this.info = {
      config: model.config,
      maxContext: model.maxContext,
      maxSequences: this.#queue.capacity,
      maxQueue,
    };
  }

  /** Throws QueueFullError when a new job would be refused now. */
  checkAdmission(): void {
    if (this.#queue.full) throw new QueueFullError(this.#queue.waiting);
  }

  async *run(job: EngineJob, signal: AbortSignal): AsyncGenerator<Piece, GenerationResult> {
    if (this.#closed) throw new EngineClosedError();
    const abort = AbortSignal.any([signal, this.#closing.signal]);
    this.#active++;
    let release: (() => void) | null = null;
    let session: Session | null = null;
    try {
      const turn = this.#queue.acquire(abort);
      this.#changed(); // one more waiting
      release = await turn;
      session = this.#model.newSession({
        ...(job.routerMasking === null ? {} : { routerMasking: job.routerMasking }),
        ...(job.expertSet == null ? {} : { expertSet: job.expertSet }),
        prefix: job.promptIds,
      });
      this.#live++;
      this.#created++;
      if (session.length > 0) {
        this.#cachedTokens += session.length;
        this.#cacheHits++;
      }
      this.#changed();
      return yield* generate(session, {
        promptIds: job.promptIds,
        maxTokens: job.maxTokens,
        sampling: job.sampling,
        eosIds: this.#eos,
        stop: job.stop,
        decoder: this.#tokenizer.streamDecoder({ skipSpecial: true }),
        signal: abort,
        stepsPerReadback: job.stepsPerReadback ?? undefined,
        logprobs: job.logprobs ?? undefined,
        echo: job.echo ?? false,
      });
    } finally {
      if (session !== null) {
        session.free();
        this.#live--;
      }
      release?.();
      this.#active--;
      this.#changed();
      if (this.#active === 0) this.#idle?.();
    }
  }

  stats(): Record<string, number> {
    return {
      ...this.#opts.stats?.(),
      queueWaiting: this.#queue.waiting,
      queueBusy: this.#queue.busy ? 1 : 0,
      queueRunning: this.#queue.running,
      prefixCachedTokens: this.#cachedTokens,
      prefixCacheHits: this.#cacheHits,
      liveSessions: this.#live,
      sessionsCreated: this.#created,
    };
  }

  close(): Promise<void> {
    return this.#closed ??= (async () => {
      this.#closing.abort();
      if (this.#active > 0) await new Promise<void>((resolve) => this.#idle = resolve);
      this.#opts.close?.();
    })();
  }

  #changed(): void {
    this.#opts.onChange?.();
  }
}
