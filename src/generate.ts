/**
 * The generation loop's text side: prompt ids -> sampled ids and their text, one piece per token.
 *
 *   session.decode (GPU: tokens sampled on the GPU, read back in batches with other sequences;
 *   other sessions: src/decode_cpu.ts) -> for each token read back: its text, stop strings, EOS,
 *   max_tokens.
 *
 * Stop strings are never emitted: text that could still be the start of a stop string is held
 * back until the next tokens rule it in or out. When a token completes a stop string, the tokens
 * after it in the same readback are discarded (never emitted, not counted) and the decode is told
 * to keep only what came before, so the session's KV cache is rolled back to them. Usage counts
 * every kept token, the EOS or the one completing a stop string included (as vLLM counts them).
 */
import type { DecodeRequest, DecodeResult, DecodeStats, Session } from "./types.ts";
import type { StreamDecoder } from "./tokenizer.ts";
import type { SamplingParams } from "./sampling.ts";
import { decodeWithForward } from "./decode_cpu.ts";

/**
 * One sampled token (EOS included) and the text it releases: "" while text is held back, the
 * held tail on the last token.
 */
export interface Piece {
  token: number;
  text: string;
}

export type FinishReason = "stop" | "length";

/** What generate() returns once the sequence ends. */
export interface GenerationResult {
  finishReason: FinishReason;
  /** Every released piece joined (stop string excluded). */
  text: string;
  promptTokens: number;
  completionTokens: number;
  /** The decode steps' readbacks, submissions, time and expert loads (prefill excluded). */
  stats: DecodeStats;
}

export interface GenerateOptions {
  promptIds: number[];
  /** Generated tokens at most (>= 1). */
  maxTokens: number;
  sampling: SamplingParams;
  /** Ids that end generation (config eos_token_id list plus the tokenizer's eos). */
  eosIds: Iterable<number>;
  /** Strings that end generation; none of them is emitted. */
  stop?: string[];
  /** Turns ids into text for this sequence (Tokenizer.streamDecoder()). */
  decoder: StreamDecoder;
  /** Aborting ends the loop with GenerationAbortedError (checked at each readback and token). */
  signal?: AbortSignal;
  /** Decode steps per GPU readback (undefined: adaptive; 1: one readback per token). */
  stepsPerReadback?: number;
}

/** The request's abort signal fired (client gone): generation stopped, its session is free. */
export class GenerationAbortedError extends Error {
  override name = "GenerationAbortedError";
  constructor() {
    super("generation aborted: the client disconnected or the request was cancelled");
  }
}

/** The first index in `text` at or after `from` where a stop string starts, or -1. */
function findStop(text: string, stops: string[], from: number): number {
  let at = -1;
  for (const s of stops) {
    const i = text.indexOf(s, from);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
function heldLength(text: string, stops: string[]): number {
  let held = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > held; k--) {
      if (text.endsWith(s.slice(0, k))) {
        held = k;
        break;
      }
    }
  }
  return held;
}

/** The session's decode, or the CPU one through forward(). */
function decodeOf(
  session: Session,
  req: DecodeRequest,
  settle: (tokens: number[]) => number | undefined,
): Promise<DecodeResult> {
  return session.decode ? session.decode(req, settle) : decodeWithForward(session, req, settle);
}

/**
 * Runs one sequence on `session`. The session may already hold a prefix of the prompt (prompt
 * prefix reuse: opts.promptIds starts with its cached tokens); only the rest is fed. Yields a
 * Piece per generated token; returns the finish reason, exact usage and the decode's stats.
 *
 * The decode runs at its own pace: each readback's tokens are turned into pieces at once (stop
 * strings settled there), queued, and yielded as the caller pulls, so a slow caller never holds
 * up the decode loop (which batches other sequences too).
 */
export async function* generate(
  session: Session,
  opts: GenerateOptions,
): AsyncGenerator<Piece, GenerationResult> {
  const eos = new Set(opts.eosIds);
  const stops = (opts.stop ?? []).filter((s) => s.length > 0);
  let full = ""; // every decoded character so far
  let emitted = 0; // characters of `full` already released
  let completionTokens = 0;
  let finishReason: FinishReason = "length";
  const queue: Piece[] = [];
  let wake: (() => void) | null = null;

  /** Turns a readback's tokens into pieces; returns how many it keeps when a stop string ended
   * the text (undefined: all, and go on). */
  const settle = (tokens: number[]): number | undefined => {
    for (let i = 0; i < tokens.length; i++) {
      const token = tokens[i];
      completionTokens++;
      const isEos = eos.has(token);
      const last = isEos || completionTokens >= opts.maxTokens;
      if (!isEos) full += opts.decoder.push(token);
      if (last) full += opts.decoder.flush(); // an unfinished character is final now
      const stopAt = findStop(full, stops, emitted);
      if (stopAt >= 0) full = full.slice(0, stopAt);
      // hold back a possible stop-string prefix unless the sequence ends here
      const release = stopAt >= 0 || last
        ? full.length
        : full.length - heldLength(full.slice(emitted), stops);
      queue.push({ token, text: full.slice(emitted, release) });
      emitted = release;
      if (stopAt >= 0 || isEos) finishReason = "stop";
      if (stopAt >= 0) return i + 1;
    }
    return undefined;
  };

  if (opts.signal?.aborted) throw new GenerationAbortedError();
  const cancel = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal;
  const cached = Math.min(session.length, opts.promptIds.length - 1);
  let outcome: { result: DecodeResult } | { error: unknown } | null = null;
  const run = decodeOf(session, {
    feed: opts.promptIds.slice(cached),
    maxTokens: opts.maxTokens,
    sampling: opts.sampling,
    eosIds: [...eos],
    signal,
    stepsPerReadback: opts.stepsPerReadback,
  }, (tokens) => {
    const keep = settle(tokens);
    wake?.();
    return keep;
  }).then(
    (result) => outcome = { result },
    (error) => outcome = { error },
  ).finally(() => wake?.());
  try {
    while (true) {
      while (queue.length > 0) {
        if (opts.signal?.aborted) throw new GenerationAbortedError();
        yield queue.shift()!;
      }
      if (outcome !== null) break;
      await new Promise<void>((r) => wake = r);
      wake = null;
    }
    const o = outcome as { result: DecodeResult } | { error: unknown };
    if ("error" in o) throw o.error;
    if (o.result.finish === "abort") throw new GenerationAbortedError();
    return {
      finishReason,
      text: full.slice(0, emitted),
      promptTokens: opts.promptIds.length,
      completionTokens,
      stats: o.result.stats,
    };
  } finally {
    // the caller left early (or failed): stop the decode at its next readback, roll it back
    cancel.abort();
    await run;
  }
}
