/**
 * The generation loop: prompt ids -> sampled ids and their text, one piece per token.
 *
 *   prefill the prompt (one forward, last row only) -> sample -> decode one token at a time,
 *   until an EOS id, max_tokens, a stop string, or the abort signal.
 *
 * Stop strings are never emitted: text that could still be the start of a stop string is held
 * back until the next tokens rule it in or out. Usage counts every sampled token, the EOS or the
 * one completing a stop string included (as vLLM counts them).
 */
import type { Session } from "./types.ts";
import type { StreamDecoder } from "./tokenizer.ts";
import { Prng, randomSeed, sampleToken, type SamplingParams, TokenHistory } from "./sampling.ts";

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
  /** Aborting ends the loop with GenerationAbortedError at the next token boundary. */
  signal?: AbortSignal;
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

/**
 * Runs one sequence on `session` (which must be fresh or truncated to 0). Yields a Piece per
 * generated token; returns the finish reason and exact usage.
 */
export async function* generate(
  session: Session,
  opts: GenerateOptions,
): AsyncGenerator<Piece, GenerationResult> {
  const eos = new Set(opts.eosIds);
  const stops = (opts.stop ?? []).filter((s) => s.length > 0);
  const history = new TokenHistory(opts.promptIds);
  const rng = new Prng(opts.sampling.seed ?? randomSeed());
  let full = ""; // every decoded character so far
  let emitted = 0; // characters of `full` already released
  let completionTokens = 0;
  let finishReason: FinishReason = "length";

  const check = () => {
    if (opts.signal?.aborted) throw new GenerationAbortedError();
  };
  check();
  // prefill: one pass over the prompt, last row only
  let [logits] = await session.forward(opts.promptIds, { lastOnly: true });
  while (true) {
    check();
    const token = sampleToken(logits, opts.sampling, history, rng);
    history.addGenerated(token);
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
    const text = full.slice(emitted, release);
    emitted = release;
    yield { token, text };
    if (stopAt >= 0 || isEos) {
      finishReason = "stop";
      break;
    }
    if (last) break;
    [logits] = await session.forward([token], { lastOnly: true });
  }
  return {
    finishReason,
    text: full.slice(0, emitted),
    promptTokens: opts.promptIds.length,
    completionTokens,
  };
}
