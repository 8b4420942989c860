/**
 * Plain TypeScript references of the GPU ops (src/gpu/ops_api.ts), in float64, with the same
 * semantics and layouts: activations row-major, one row per token; weights [rows, cols] row-major.
 * Used by the kernel tests; small and slow on purpose.
 */

type Vec = ArrayLike<number>;

/** out[t, g*dim + i] = x[t, g*dim + i] / sqrt(mean(x[t,g,:]^2) + eps) * weight[i]. */
export function rmsnorm(
  x: Vec, // [T, groups*dim]
  weight: Vec, // [dim]
  T: number,
  dim: number,
  groups: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(T * groups * dim);
  for (let r = 0; r < T * groups; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[r * dim + i] = x[r * dim + i] * inv * weight[i];
  }
  return out;
}

/** y[t, n] = sum_k x[t, k] * w[n, k]. */
export function matmul(x: Vec, w: Vec, T: number, K: number, N: number): Float64Array {
  const y = new Float64Array(T * N); // [T, N]
  for (let t = 0; t < T; t++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[t * K + k] * w[n * K + k];
      y[t * N + n] = s;
    }
  }
  return y;
}

/** RoPE table [maxPos, headDim]: cos(pos * f_i) for i < headDim/2, then sin(pos * f_i), with
 * f_i = theta^(-2i / headDim) (the Qwen3 / HF default rotary frequencies). */
export function ropeTable(maxPos: number, headDim: number, theta: number): Float64Array {
  const half = headDim / 2;
  const table = new Float64Array(maxPos * headDim);
  for (let pos = 0; pos < maxPos; pos++) {
    for (let i = 0; i < half; i++) {
      const angle = pos * theta ** (-(2 * i) / headDim);
      table[pos * headDim + i] = Math.cos(angle);
      table[pos * headDim + half + i] = Math.sin(angle);
    }
  }
  return table;
}

/** Rotate-half RoPE of x[t, h, :] at position pos0 + t (returns a new array). */
export function rope(
  x: Vec, // [T, heads*headDim]
  table: Vec, // [maxPos, headDim]
  T: number,
  heads: number,
  headDim: number,
  pos0: number,
): Float64Array {
  const half = headDim / 2;
  const out = Float64Array.from(x);
  for (let t = 0; t < T; t++) {
    const row = (pos0 + t) * headDim;
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const c = table[row + i], s = table[row + half + i];
        const x1 = x[base + i], x2 = x[base + half + i];
        out[base + i] = x1 * c - x2 * s;
        out[base + half + i] = x2 * c + x1 * s;
      }
    }
  }
  return out;
}

/** Causal GQA attention of T queries at positions pos0..pos0+T-1 over caches holding positions
 * 0..pos0+T-1. out[t, h*Dh + d]. */
export function attention(
  q: Vec, // [T, Hq*Dh]
  kCache: Vec, // [>= pos0+T, Hkv*Dh]
  vCache: Vec, // [>= pos0+T, Hkv*Dh]
  T: number,
  pos0: number,
  numHeads: number,
  numKvHeads: number,
  headDim: number,
  scale: number,
): Float64Array {
  const out = new Float64Array(T * numHeads * headDim);
  const group = numHeads / numKvHeads;
  const kvRow = numKvHeads * headDim;
  for (let t = 0; t < T; t++) {
    const n = pos0 + t + 1; // positions 0..pos0+t
    for (let h = 0; h < numHeads; h++) {
      const qb = (t * numHeads + h) * headDim;
      const kvh = Math.floor(h / group);
      const scores = new Float64Array(n);
      let max = -Infinity;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let d = 0; d < headDim; d++) s += q[qb + d] * kCache[j * kvRow + kvh * headDim + d];
        scores[j] = s * scale;
        max = Math.max(max, scores[j]);
      }
      let sum = 0;
      for (let j = 0; j < n; j++) sum += scores[j] = Math.exp(scores[j] - max);
      for (let d = 0; d < headDim; d++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc += scores[j] * vCache[j * kvRow + kvh * headDim + d];
        out[qb + d] = acc / sum;
      }
    }
  }
  return out;
}

/** Softmax of one row. */
export function softmax(x: Vec): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]);
  const p = Float64Array.from(x, (v) => Math.exp(v - max));
  const sum = p.reduce((a, b) => a + b, 0);
  return p.map((v) => v / sum);
}

/** Router: softmax over E, the k largest (descending, lower index first on ties), renormalised
 * to sum 1 when normTopk. idx, weights: [T, k]. */
export function topk(
  logits: Vec, // [T, E]
  T: number,
  numExperts: number,
  k: number,
  normTopk: boolean,
): { idx: Uint32Array; weights: Float64Array } {
  const idx = new Uint32Array(T * k);
  const weights = new Float64Array(T * k);
  for (let t = 0; t < T; t++) {
    const row = Array.from({ length: numExperts }, (_, e) => logits[t * numExperts + e]);
    const p = softmax(row);
    const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b).slice(0, k);
    const total = order.reduce((s, e) => s + p[e], 0);
    order.forEach((e, j) => {
      idx[t * k + j] = e;
      weights[t * k + j] = normTopk ? p[e] / total : p[e];
    });
  }
  return { idx, weights };
}

/** silu(v) = v * sigmoid(v). */
export function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

/** One expert's stage 1: h[i] = silu(gate[i,:]·x) * (up[i,:]·x). */
export function expertGateUp(
  x: Vec, // [D]
  gate: Vec, // [I, D]
  up: Vec, // [I, D]
  hidden: number,
  inter: number,
): Float64Array {
  const h = new Float64Array(inter);
  for (let i = 0; i < inter; i++) {
    let g = 0, u = 0;
    for (let d = 0; d < hidden; d++) {
      g += gate[i * hidden + d] * x[d];
      u += up[i * hidden + d] * x[d];
    }
    h[i] = silu(g) * u;
  }
  return h;
}

/** One expert's stage 2: y[d] = down[d,:]·h. */
export function expertDown(h: Vec, down: Vec, hidden: number, inter: number): Float64Array {
  return matmul(h, down, 1, inter, hidden);
}

/** out[t, d] + sum_j weights[t, j] * y[t*K + j, d] (returns a new array). */
export function moeCombine(
  out: Vec, // [T, D]
  y: Vec, // [T*K, D]
  weights: Vec, // [T, K]
  T: number,
  k: number,
  hidden: number,
): Float64Array {
  const res = Float64Array.from(out);
  for (let t = 0; t < T; t++) {
    for (let d = 0; d < hidden; d++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += weights[t * k + j] * y[(t * k + j) * hidden + d];
      res[t * hidden + d] += s;
    }
  }
  return res;
}

/** Index of the largest x[T-1, 0..n) (lowest index on ties). */
export function argmax(x: Vec, T: number, n: number): number {
  const base = (T - 1) * n;
  let best = 0;
  for (let i = 1; i < n; i++) if (x[base + i] > x[base + best]) best = i;
  return best;
}
