/**
 * Next-token sampling from one row of logits: the CPU reference of the GPU sampler
 * (src/gpu/sampler.ts, kernels/sample_*.wgsl). Both follow this algorithm exactly, bit for bit.
 *
 * Inputs: logits [V] f32; the sequence's ids at positions 0..len-1 (prompt, then generated tokens
 * from genStart on); the token drawn sits at position len; the request's SamplingParams. Every
 * parameter is used as its f32 value (fround), as the GPU holds it.
 *
 *   1. Penalties, in f32 arithmetic (fround after every operation), x_i = logits_i:
 *      repetition (Hugging Face; tokens anywhere in ids[0..len)): x_i = x_i > 0 ? x_i * invRep
 *      : x_i * rep, invRep = fround(1 / rep) (a product: WGSL division is not correctly
 *      rounded, multiplication is); then presence and frequency (OpenAI; c_i = count of i in
 *      ids[genStart..len)): if c_i > 0, x_i -= fround(fround(c_i * frequency) + presence).
 *   2. temperature 0: the token is argmax_i x_i, the lowest index on ties. Done.
 *   3. M = max_i x_i. Order the tokens by (x desc, index asc); the kept set S is all tokens.
 *   4. top_k (0 < topK < V): S = the first topK tokens in that order (ties by index).
 *   5. top_p (topP < 1): the weights qe_i = expWeight(fround(x_i - M)) = floor(exp(x_i - M) *
 *      2^31) of i in S (integers: the top token weighs 2^31); Z = sum of qe over S;
 *      goal = ceil(P24 * Z / 2^24) with P24 = ceil(topP * 2^24) (topP * Z, rounded up); S = the
 *      shortest prefix of S (same order) whose sum of qe reaches goal.
 *   6. min_p (minP > 0): S = { i in S : qe_i >= ceil(minP * 2^31) } (p_i >= minP * p_max).
 *   7. Draw: qw_i = expWeight(fround(fround(x_i - M) * invT)) over S, invT = fround(1 /
 *      temperature); W = sum of qw; u24 = the first word of Philox4x32-10 at counter
 *      n = len - genStart, >>> 8 (src/philox.ts: uniform24(seed, n) = u24 * 2^-24);
 *      t = floor(u24 * W / 2^24) (< W); walking S in INDEX order and adding up qw, the token is
 *      the first where the running sum exceeds t.
 *
 * Past the penalties, x_i - M and its product with invT (single f32 operations, the same on any
 * device), everything is integer arithmetic (expWeight computes exp in fixed point; sums are
 * exact, below 2^53 here and 64-bit on the GPU): the GPU and the CPU compute the same bits
 * whatever the order of their sums, and pick the same token. The weights resolve probabilities to
 * 2^-31 of the top token's: a token below that is never drawn.
 */
import { mulhi32, uniform24 } from "./philox.ts";

/** The sampling parameters of one request (OpenAI names plus vLLM's top_k/min_p). */
export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 0 (or >= vocab) = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** 0 = off. */
  minP: number;
  /** 1 = off. */
  repetitionPenalty: number;
  /** 0 = off. */
  presencePenalty: number;
  /** 0 = off. */
  frequencyPenalty: number;
  /** Same seed, same draws (a safe integer, possibly negative); needed when temperature > 0. */
  seed?: number;
}

/** Parameters that change nothing (greedy decoding). */
export const GREEDY: SamplingParams = {
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
};

/** A random seed for requests that give none: a random 32-bit non-negative integer. */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/** The tokens of one sequence: ids[0..len) (prompt, then generated from genStart on). */
export interface History {
  ids: ArrayLike<number>;
  genStart: number;
}

/** Throws a RangeError naming the first parameter the algorithm cannot take (the server and CLI
 * check the same ranges on their input). The seed is checked where a draw needs it (seedOf). */
export function checkSamplingParams(p: SamplingParams): void {
  const bad = (name: string, rule: string, value: unknown) => {
    throw new RangeError(`sampling: ${name} ${rule}, got ${value}`);
  };
  if (!(p.temperature >= 0 && Number.isFinite(p.temperature))) {
    bad("temperature", "must be finite and >= 0", p.temperature);
  }
  if (!(Number.isInteger(p.topK) && p.topK >= 0)) bad("topK", "must be an integer >= 0", p.topK);
  if (!(p.topP > 0 && p.topP <= 1)) bad("topP", "must be in (0, 1]", p.topP);
  if (!(p.minP >= 0 && p.minP <= 1)) bad("minP", "must be in [0, 1]", p.minP);
  if (!(p.repetitionPenalty > 0 && Number.isFinite(p.repetitionPenalty))) {
    bad("repetitionPenalty", "must be finite and > 0", p.repetitionPenalty);
  }
  if (!Number.isFinite(p.presencePenalty)) {
    bad("presencePenalty", "must be finite", p.presencePenalty);
  }
  if (!Number.isFinite(p.frequencyPenalty)) {
    bad("frequencyPenalty", "must be finite", p.frequencyPenalty);
  }
}

/** The seed of a request that draws (temperature > 0): a RangeError when it has none. Greedy
 * requests need none (0). */
export function seedOf(p: SamplingParams): number {
  if (p.temperature === 0) return p.seed ?? 0;
  if (!Number.isSafeInteger(p.seed)) {
    throw new RangeError(
      `sampling: seed must be a safe integer when temperature > 0 (randomSeed() gives one), ` +
        `got ${p.seed}`,
    );
  }
  return p.seed!;
}

/** Whether any penalty changes a logit. */
export function hasPenalties(p: SamplingParams): boolean {
  return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
}

/** Whether top_k keeps fewer tokens than the vocabulary. */
export function topKActive(p: SamplingParams, vocab: number): boolean {
  return p.topK > 0 && p.topK < vocab;
}

/** Whether top_p keeps fewer tokens than all (its f32 value below 1). */
export function topPActive(p: SamplingParams): boolean {
  return Math.fround(p.topP) < 1;
}

const f32 = Math.fround;

/** Weights are floor(exp(d) * 2^31): 2^31 is the weight of the top token (a u32 holds it). */
const WEIGHT_SHIFT = 31;
/** u24 and P24 are multiples of 2^-24 scaled to integers. */
const UNIT_SCALE = 2 ** 24;

// expWeight's fixed-point constants (kernels/sample_common.wgsl holds the same).
/** Below this d the weight is 0 (exp(-22) * 2^31 = 0.6). */
export const EXP_WEIGHT_MIN_D = -22;
/** -d in units of 2^-26: below 22 * 2^26 < 2^31. */
const D_SHIFT = 26;
/** round(log2(e) * 2^30): D * LOG2E_Q30 is -d * log2(e) in units of 2^-56. */
const LOG2E_Q30 = Math.round(Math.LOG2E * 2 ** 30);
/** round(ln(2) * 2^32). */
const LN2_Q32 = Math.round(Math.LN2 * 2 ** 32);
/** 2^(-j/64) * 2^31, rounded, j = 0..63: the top 6 bits of the fraction of the exponent. */
export const EXP2_TABLE = Array.from({ length: 64 }, (_, j) => Math.round(2 ** (31 - j / 64)));

/** High and low words of a * b for u32 a, b. */
function mul64(a: number, b: number): [number, number] {
  return [mulhi32(a, b), Math.imul(a, b) >>> 0];
}

/**
 * The weight floor(exp(d) * 2^31) of d <= 0, give or take 64, in integer arithmetic that
 * kernels/sample_common.wgsl holds bit for bit (GPU compilers may fuse and
 * reorder float operations; integer ones have a single answer): D = floor(-d * 2^26);
 * y = D * log2(e) = k + f (64-bit, 56 fraction bits); 2^-f = 2^(-j/64) (table) * 2^(-g) with
 * exp(-g ln 2) = 1 - P, P = h - h^2/2 + h^3/6, h = g ln 2 < 0.011 (32-bit fixed point); the
 * weight is (2^31 * 2^-f) >> k. 0 for d < EXP_WEIGHT_MIN_D (and NaN).
 */
export function expWeight(d: number): number {
  if (!(d > EXP_WEIGHT_MIN_D)) return 0;
  const D = Math.floor(f32(-d * 2 ** D_SHIFT)); // exact: a power-of-two scaling, then truncation
  const [hi, lo] = mul64(D, LOG2E_Q30);
  const k = hi >>> 24;
  const frac = (((hi & 0xffffff) << 8) | (lo >>> 24)) >>> 0; // 2^-f's exponent, 32 bits
  const g = frac & 0x3ffffff; // below 2^-6, in units of 2^-32
  const h = mulhi32(g, LN2_Q32);
  const h2 = mulhi32(h, h);
  const h3 = mulhi32(h2, h);
  const p = h - (h2 >>> 1) + Math.floor(h3 / 6);
  const t = EXP2_TABLE[frac >>> 26];
  const m = t - mulhi32(t, p);
  return k >= 32 ? 0 : m >>> k;
}

/** min_p as a weight: qe >= ceil(minP * 2^31) is e >= minP (f32 minP times 2^31: exact). */
export function minWeight(p: SamplingParams): number {
  return Math.ceil(f32(p.minP) * 2 ** WEIGHT_SHIFT);
}

/** floor (or ceil when `up`) of a * b / 2^24, exactly, for integers a <= 2^24 and b < 2^50. */
export function mulFrac24(a: number, b: number, up: boolean): number {
  const bHigh = Math.floor(b / UNIT_SCALE);
  const low = a * (b - bHigh * UNIT_SCALE);
  const frac = Math.floor(low / UNIT_SCALE);
  return a * bHigh + frac + (up && frac * UNIT_SCALE !== low ? 1 : 0);
}

/** top_p as the integer P24 = ceil(topP * 2^24) (f32 topP times 2^24: exact). */
export function topP24(p: SamplingParams): number {
  return Math.ceil(f32(p.topP) * UNIT_SCALE);
}

/** Step 1: the penalised logits, f32. */
export function penalise(
  logits: ArrayLike<number>,
  p: SamplingParams,
  history: History,
): Float32Array {
  const x = Float32Array.from(logits);
  if (!hasPenalties(p)) return x;
  const V = x.length;
  const seen = new Uint8Array(V);
  const count = new Uint32Array(V);
  for (let pos = 0; pos < history.ids.length; pos++) {
    const id = history.ids[pos];
    if (!(Number.isInteger(id) && id >= 0 && id < V)) {
      throw new RangeError(`history id ${id} at position ${pos} is outside the vocabulary (${V})`);
    }
    seen[id] = 1;
    if (pos >= history.genStart) count[id]++;
  }
  const rep = f32(p.repetitionPenalty), invRep = f32(1 / rep);
  const presence = f32(p.presencePenalty), frequency = f32(p.frequencyPenalty);
  for (let i = 0; i < V; i++) {
    if (rep !== 1 && seen[i]) x[i] = x[i] > 0 ? x[i] * invRep : x[i] * rep;
    if (count[i] > 0) x[i] = x[i] - f32(f32(count[i] * frequency) + presence);
  }
  return x;
}

/** The index of the largest value; the lowest index wins ties. */
function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Indices of x in the order (x desc, index asc). Sorted as one f64 each: the complement of the
 * f32's order-preserving 32-bit key times 2^bits plus the index (below 2^53, exact). */
function descendingOrder(x: Float32Array): Uint32Array {
  const V = x.length;
  const bits = Math.max(1, Math.ceil(Math.log2(V)));
  if (32 + bits > 53) throw new RangeError(`vocabulary of ${V} is too large to order`);
  const scale = 2 ** bits;
  const u = new Uint32Array(x.buffer, x.byteOffset, V);
  const composite = new Float64Array(V);
  for (let i = 0; i < V; i++) {
    // -0 orders as +0 (equal values: ties go by index).
    const w = u[i] === 0x80000000 ? 0 : u[i];
    const key = w & 0x80000000 ? ~w >>> 0 : (w | 0x80000000) >>> 0;
    composite[i] = (0xffffffff - key) * scale + i;
  }
  composite.sort();
  const order = new Uint32Array(V);
  for (let j = 0; j < V; j++) order[j] = composite[j] % scale;
  return order;
}

/** Steps 3-6: the kept set S (any order) and M. */
function keptSet(x: Float32Array, p: SamplingParams): { kept: Uint32Array; m: number } {
  const V = x.length;
  let m = -Infinity;
  for (let i = 0; i < V; i++) if (x[i] > m) m = x[i];
  const qe = (i: number) => expWeight(f32(x[i] - m));
  let kept: Uint32Array;
  if (topKActive(p, V) || topPActive(p)) {
    const order = descendingOrder(x);
    let n = topKActive(p, V) ? p.topK : V;
    if (topPActive(p)) {
      let z = 0;
      for (let j = 0; j < n; j++) z += qe(order[j]);
      const goal = mulFrac24(topP24(p), z, true);
      let sum = 0;
      for (let j = 0; j < n; j++) {
        sum += qe(order[j]);
        if (sum >= goal) {
          n = j + 1;
          break;
        }
      }
    }
    kept = order.subarray(0, n);
  } else {
    kept = Uint32Array.from(x.keys());
  }
  if (p.minP > 0) {
    const min = minWeight(p);
    kept = kept.filter((i) => qe(i) >= min);
  }
  return { kept, m };
}

/** The tokens a draw can pick (in index order) and their probabilities (steps 1-7). Greedy gives
 * one token with probability 1. */
export function samplingDistribution(
  logits: ArrayLike<number>,
  p: SamplingParams,
  history: History,
): { ids: number[]; probs: Float64Array } {
  checkSamplingParams(p);
  const x = penalise(logits, p, history);
  if (p.temperature === 0) return { ids: [argmax(x)], probs: Float64Array.of(1) };
  const { ids, q, total } = drawWeights(x, p);
  return { ids: Array.from(ids), probs: q.map((v) => v / total) };
}

/** Step 7's weights qw over S, S in index order, and their sum W. */
function drawWeights(x: Float32Array, p: SamplingParams) {
  const { kept, m } = keptSet(x, p);
  const ids = kept.sort();
  const invT = f32(1 / p.temperature);
  const q = new Float64Array(ids.length);
  let total = 0;
  for (let j = 0; j < ids.length; j++) {
    total += q[j] = expWeight(f32(f32(x[ids[j]] - m) * invT));
  }
  return { ids, q, total };
}

/** The next token of a sequence: the token at position history.ids.length. */
export function sampleNext(
  logits: ArrayLike<number>,
  p: SamplingParams,
  history: History,
): number {
  checkSamplingParams(p);
  const seed = seedOf(p);
  if (!(Number.isInteger(history.genStart) && history.genStart >= 0)) {
    throw new RangeError(`history.genStart must be an integer >= 0, got ${history.genStart}`);
  }
  if (history.genStart > history.ids.length) {
    throw new RangeError(
      `history.genStart (${history.genStart}) is past the sequence's end (${history.ids.length})`,
    );
  }
  const x = penalise(logits, p, history);
  if (p.temperature === 0) return argmax(x);
  const { ids, q, total } = drawWeights(x, p);
  const u24 = uniform24(seed, history.ids.length - history.genStart) * UNIT_SCALE;
  const t = mulFrac24(u24, total, false);
  let sum = 0;
  for (let j = 0; j < ids.length; j++) {
    sum += q[j];
    if (sum > t) return ids[j];
  }
  throw new Error(`unreachable: t = ${t} is below W = ${total}`);
}
