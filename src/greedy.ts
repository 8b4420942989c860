/** The index of the largest logit; the lowest index wins ties (as torch.argmax does). */
export function greedyToken(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}
