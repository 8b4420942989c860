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
 *
 * Logprobs (opts.logprobs): the GPU decode loop reads back only tokens, so such a request decodes
 * through forward() (src/decode_cpu.ts), which returns every step's logits row; its sampler is the
 * CPU implementation of the GPU's, so the tokens are the same. Each piece then carries its token's
 * log-probability (src/logprobs.ts); with echo, the prompt's come from one forward keeping every
 * row, in chunks of PROMPT_ROWS_PER_FORWARD.
 */
import type { DecodeRequest, DecodeResult, DecodeStats, Session } from "./types.ts";
import type { StreamDecoder } from "./tokenizer.ts";
import type { SamplingParams } from "./sampling.ts";
import { decodeWithForward, type ForwardDecodeHooks } from "./decode_cpu.ts";
import { type TokenLogprob, tokenLogprob } from "./logprobs.ts";

/**
 * One sampled token (EOS included) and the text it releases: "" while text is held back, the
 * held tail on the last token.
 */
export interface Piece {
  token: number;
  text: string;
  /** The token's log-probability and top alternatives; only when GenerateOptions.logprobs. */
  logprob?: TokenLogprob;
}

/**
 * Prompt rows per forward() when every row's logits are kept (echo): 128 rows of a 151936-token
 * vocab are 78 MB. A multiple of the GPU model's forward chunk (64 or 128 tokens), so the logits are those
 * of one forward of the whole prompt.
 */
const PROMPT_ROWS_PER_FORWARD = 128;

/** The stats of a generation that decoded nothing (max_tokens 0). */
const NO_DECODE: DecodeStats = { tokens: 0, readbacks: 0, submits: 0, ms: 0, expertLoads: 0 };

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
  /** With echo and logprobs: one entry per prompt token, the first null (nothing predicts it). */
  promptLogprobs?: (TokenLogprob | null)[];
}

export interface GenerateOptions {
  promptIds: number[];
  /** Generated tokens at most; 0 decodes nothing (with echo: the prompt's logprobs only). */
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
  /**
   * Attach to each piece its token's log-probability (raw logits' log-softmax) and the `logprobs`
   * most likely tokens (0: none); undefined: no logprobs, the session's own decode.
   */
  logprobs?: number;
  /** With logprobs: also return the prompt's (GenerationResult.promptLogprobs). */
  echo?: boolean;
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

/** The session's decode, or the CPU one through forward() (always when there are hooks). */
function decodeOf(
  session: Session,
  req: DecodeRequest,
  settle: (tokens: number[]) => number | undefined,
  hooks: ForwardDecodeHooks | null,
): Promise<DecodeResult> {
  return session.decode && hooks === null
    ? session.decode(req, settle)
    : decodeWithForward(session, req, settle, hooks ?? {});
}

/**
 * Feeds `ids` (the whole prompt, on an empty session) in chunks, keeping every row's logits: pushes
 * onto `out` one entry per id (the first null) with `top` alternatives; returns the last row.
 */
async function prefillWithLogprobs(
  session: Session,
  ids: number[],
  top: number,
  out: (TokenLogprob | null)[],
  signal: AbortSignal,
): Promise<Float32Array> {
  out.push(null);
  let last: Float32Array | undefined;
  for (let i = 0; i < ids.length; i += PROMPT_ROWS_PER_FORWARD) {
    if (signal.aborted) throw new GenerationAbortedError();
    const rows = await session.forward(ids.slice(i, i + PROMPT_ROWS_PER_FORWARD));
    rows.forEach((row, j) => {
      const next = i + j + 1; // the position this row predicts
      if (next < ids.length) out.push(tokenLogprob(row, ids[next], top));
    });
    last = rows.at(-1);
  }
  if (last === undefined) throw new RangeError("a prefill needs at least one token");
  return last;
}

/**
 * Runs one sequence on `session`. The session may already hold a prefix of the prompt (prompt
 * prefix reuse: opts.promptIds starts with its cached tokens); only the rest is fed (with
 * logprobs the whole prompt is fed again). Yields a Piece per generated token; returns the finish
 * reason, exact usage, the decode's stats and, with echo and logprobs, the prompt's logprobs.
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
  const top = opts.logprobs;
  if (top !== undefined && !(Number.isInteger(top) && top >= 0)) {
    throw new RangeError(`logprobs must be an integer >= 0, got ${top}`);
  }
  /** Logprobs of sampled tokens not yet settled (the onStep hook runs before settle). */
  const stepLogprobs: TokenLogprob[] = [];
  const promptLogprobs: (TokenLogprob | null)[] | undefined = top !== undefined && opts.echo
    ? []
    : undefined;

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
      const piece: Piece = { token, text: full.slice(emitted, release) };
      if (top !== undefined) piece.logprob = stepLogprobs.shift();
      queue.push(piece);
      emitted = release;
      if (stopAt >= 0 || isEos) finishReason = "stop";
      if (stopAt >= 0) return i + 1;
    }
    return undefined;
  };

  if (opts.signal?.aborted) throw new GenerationAbortedError();
  const cancel = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal;
  // logprobs: every row from position 0, and penalties over the whole prompt as on the GPU
  if (top !== undefined && session.length > 0) session.truncate(0);
  if (opts.maxTokens === 0) { // nothing to decode (echo): the prompt's logprobs at most
    if (promptLogprobs) {
      await prefillWithLogprobs(session, opts.promptIds, top!, promptLogprobs, signal);
    }
    return {
      finishReason: "length",
      text: "",
      promptTokens: opts.promptIds.length,
      completionTokens: 0,
      stats: NO_DECODE,
      ...(promptLogprobs ? { promptLogprobs } : {}),
    };
  }
  const hooks: ForwardDecodeHooks | null = top === undefined ? null : {
    onStep: (logits, token) => stepLogprobs.push(tokenLogprob(logits, token, top)),
    ...(promptLogprobs
      ? {
        prefill: (feed: number[]) =>
          prefillWithLogprobs(session, feed, top, promptLogprobs, signal),
      }
      : {}),
  };
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
  }, hooks).then(
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
      ...(promptLogprobs ? { promptLogprobs } : {}),
    };
  } finally {
    // the caller left early (or failed): stop the decode at its next readback, roll it back
    cancel.abort();
    await run;
  }
}
