/**
 * Log-probabilities of tokens from one row of raw logits [V]: the log-softmax in float64 (before
 * penalties and temperature, as vLLM reports them by default) and the n most likely tokens,
 * ordered by log-probability descending, then by id ascending.
 *
 *   logprob_i = x_i - logZ,   logZ = M + log(sum_j exp(x_j - M)),   M = max_j x_j
 */

/** One alternative at a position: a token id and its log-probability. */
export interface TopLogprob {
  token: number;
  logprob: number;
}

/** A position's token, its log-probability, and the most likely tokens there (`top`). */
export interface TokenLogprob {
  token: number;
  logprob: number;
  /** The n most likely tokens (n as asked), most likely first; the token itself may be absent. */
  top: TopLogprob[];
}

/** OpenAI's limits on the alternatives per position: chat top_logprobs, completions logprobs. */
export const MAX_CHAT_TOP_LOGPROBS = 20;
export const MAX_COMPLETION_LOGPROBS = 5;

/** log(sum_i exp(x_i)) in float64, shifted by the max so that no term overflows. */
export function logSumExp(logits: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > m) m = logits[i];
  if (m === -Infinity || !Number.isFinite(m)) return m;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - m);
  return m + Math.log(sum);
}

/** The whole row's log-probabilities [V] in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  const logZ = logSumExp(logits);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - logZ;
  return out;
}

/**
 * The `n` largest logits by (value descending, id ascending), as log-probabilities given the
 * row's logZ. One pass with a sorted list of at most n (n is small: OpenAI allows 20).
 */
export function topLogprobs(logits: ArrayLike<number>, n: number, logZ: number): TopLogprob[] {
  if (!(Number.isInteger(n) && n >= 0)) {
    throw new RangeError(`top n must be an integer >= 0, got ${n}`);
  }
  const ids: number[] = [];
  for (let i = 0; i < logits.length && n > 0; i++) {
    const x = logits[i];
    if (ids.length === n) {
      if (!(x > logits[ids[n - 1]])) continue; // ties keep the lower id, already in
      ids.pop();
    }
    let at = ids.length;
    while (at > 0 && x > logits[ids[at - 1]]) at--;
    ids.splice(at, 0, i);
  }
  return ids.map((token) => ({ token, logprob: logits[token] - logZ }));
}

/** `token`'s log-probability in the row and the row's `n` most likely tokens. */
export function tokenLogprob(logits: ArrayLike<number>, token: number, n: number): TokenLogprob {
  if (!(Number.isInteger(token) && token >= 0 && token < logits.length)) {
    throw new RangeError(`token ${token} is outside the row [0, ${logits.length})`);
  }
  const logZ = logSumExp(logits);
  return { token, logprob: logits[token] - logZ, top: topLogprobs(logits, n, logZ) };
}
