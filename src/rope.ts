/**
 * Rotary position embedding tables, rotate-half layout as in Hugging Face's Qwen3:
 * inv_freq[i] = 1 / theta^(2i / Dh) for i < Dh/2; the angle of dimensions i and i + Dh/2 at
 * position p is p * inv_freq[i]. Computed in float64, stored as f32.
 */

/** f32 [maxPos, Dh]: row p holds cos(p * inv_freq[0..Dh/2)) then sin(p * inv_freq[0..Dh/2)). */
export function ropeTable(
  maxPos: number,
  headDim: number,
  theta: number,
): Float32Array<ArrayBuffer> {
  const half = headDim / 2;
  const table = new Float32Array(maxPos * headDim);
  const invFreq = Array.from({ length: half }, (_, i) => 1 / Math.pow(theta, (2 * i) / headDim));
  for (let p = 0; p < maxPos; p++) {
    const row = p * headDim;
    for (let i = 0; i < half; i++) {
      const angle = p * invFreq[i];
      table[row + i] = Math.cos(angle);
      table[row + half + i] = Math.sin(angle);
    }
  }
  return table;
}
