/**
 * The decode contract of Session.decode (src/types.ts) for sessions that only have forward():
 * the CPU reference model and test doubles. One forward and one sampled token per settle, with
 * the same sampler as the GPU's (src/sampling.ts), so a seed gives the same tokens on both.
 * Penalties see the tokens of this decode (fed and sampled), which for a fresh session is the
 * whole sequence, as on the GPU.
 *
 * generate() also decodes GPU sessions through it when a request asks for logprobs: the hooks see
 * every row of logits (the GPU decode loop reads back only tokens).
 */
import type { DecodeFinish, DecodeRequest, DecodeResult, Session } from "./types.ts";
import { randomSeed, sampleNext } from "./sampling.ts";

/** What a caller of decodeWithForward may watch or replace. */
export interface ForwardDecodeHooks {
  /**
   * Runs req.feed through the session and returns the last row's logits, in place of one
   * forward(feed, {lastOnly: true}): for a caller that wants every row (the prompt's logprobs).
   */
  prefill?(feed: number[]): Promise<Float32Array>;
  /** Each step's raw logits row (before penalties and temperature) and the token sampled from
   * it, called before settle() sees the token. */
  onStep?(logits: Float32Array, token: number): void;
}

export async function decodeWithForward(
  session: Session,
  req: DecodeRequest,
  settle: (tokens: number[]) => number | undefined,
  hooks: ForwardDecodeHooks = {},
): Promise<DecodeResult> {
  if (req.feed.length === 0) throw new RangeError("decode needs at least one token to feed");
  const sampling = { ...req.sampling, seed: req.sampling.seed ?? randomSeed() };
  const eos = new Set(req.eosIds);
  const history = { ids: [...req.feed], genStart: req.feed.length };
  const kept: number[] = [];
  let finish: DecodeFinish = "length";
  let t0 = 0;
  let logits = hooks.prefill
    ? await hooks.prefill(req.feed)
    : (await session.forward(req.feed, { lastOnly: true }))[0];
  while (true) {
    if (req.signal?.aborted) {
      finish = "abort";
      break;
    }
    const token = sampleNext(logits, sampling, history);
    history.ids.push(token);
    hooks.onStep?.(logits, token);
    const keep = settle([token]);
    kept.push(...[token].slice(0, keep));
    if (kept.length === 1) t0 = performance.now();
    if (keep !== undefined) {
      finish = "stop";
      break;
    }
    if (eos.has(token)) {
      finish = "eos";
      break;
    }
    if (kept.length >= req.maxTokens) break;
    [logits] = await session.forward([token], { lastOnly: true });
  }
  const tokens = Math.max(0, kept.length - 1);
  return {
    tokens: kept,
    finish,
    stats: {
      tokens,
      readbacks: tokens,
      submits: tokens,
      ms: tokens > 0 ? performance.now() - t0 : 0,
      expertLoads: 0,
    },
  };
}
