/**
 * The decode contract of Session.decode (src/types.ts) for sessions that only have forward():
 * the CPU reference model and test doubles. One forward and one sampled token per settle, with
 * the same sampler as the GPU's (src/sampling.ts), so a seed gives the same tokens on both.
 * Penalties see the tokens of this decode (fed and sampled), which for a fresh session is the
 * whole sequence, as on the GPU.
 */
import type { DecodeFinish, DecodeRequest, DecodeResult, Session } from "./types.ts";
import { randomSeed, sampleNext } from "./sampling.ts";

export async function decodeWithForward(
  session: Session,
  req: DecodeRequest,
  settle: (tokens: number[]) => number | undefined,
): Promise<DecodeResult> {
  if (req.feed.length === 0) throw new RangeError("decode needs at least one token to feed");
  const sampling = { ...req.sampling, seed: req.sampling.seed ?? randomSeed() };
  const eos = new Set(req.eosIds);
  const history = { ids: [...req.feed], genStart: req.feed.length };
  const kept: number[] = [];
  let finish: DecodeFinish = "length";
  let t0 = 0;
  let [logits] = await session.forward(req.feed, { lastOnly: true });
  while (true) {
    if (req.signal?.aborted) {
      finish = "abort";
      break;
    }
    const token = sampleNext(logits, sampling, history);
    history.ids.push(token);
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
