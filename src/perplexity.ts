/**
 * Perplexity of a model on token windows: each window is run from position 0 in one prefill
 * pass; token t+1 is scored by the log-softmax (float64) of the logits at position t.
 */
import type { LanguageModel } from "./types.ts";

export interface PerplexityResult {
  scoredTokens: number;
  meanNll: number;
  perplexity: number;
}

/** -log softmax(logits)[target], in float64. */
export function negativeLogLikelihood(logits: ArrayLike<number>, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return Math.log(sum) + max - logits[target];
}

export async function perplexity(
  model: LanguageModel,
  windows: number[][],
): Promise<PerplexityResult> {
  let nll = 0;
  let scored = 0;
  for (const w of windows) {
    const session = model.newSession();
    try {
      const rows = await session.forward(w);
      for (let t = 0; t + 1 < w.length; t++) {
        nll += negativeLogLikelihood(rows[t], w[t + 1]);
        scored++;
      }
    } finally {
      session.free();
    }
  }
  const meanNll = nll / scored;
  return { scoredTokens: scored, meanNll, perplexity: Math.exp(meanNll) };
}
