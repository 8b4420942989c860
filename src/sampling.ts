/**
 * Next-token sampling from one row of logits.
 *
 * Order (llama.cpp's default sampler chain, the same as vLLM's for these samplers):
 *   1. penalties on the raw logits: repetition_penalty (Hugging Face: over every token id seen in
 *      prompt + output, positive logits are divided by it and negative ones multiplied), then
 *      frequency_penalty and presence_penalty (OpenAI: over generated tokens only,
 *      logit -= count * frequency + (count > 0) * presence);
 *   2. temperature 0 -> greedy: the largest penalised logit, lowest id on ties; done;
 *   3. top_k: keep the k largest logits (ties broken by lowest id);
 *   4. top_p: keep the smallest prefix (by descending probability, softmax of the kept logits)
 *      whose mass reaches top_p;
 *   5. min_p: drop tokens whose probability is below min_p times the largest probability;
 *   6. temperature: softmax(logit / temperature) over the survivors, then draw with the request's
 *      seeded PRNG.
 */

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
  /** Same seed, same draws; absent = a random seed. */
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

/** The largest seed the PRNG state holds exactly (it is a 32-bit generator). */
const SEED_MODULUS = 2 ** 32;

/** mulberry32: a small, fast 32-bit PRNG; same seed, same sequence of uniforms in [0, 1). */
export class Prng {
  #state: number;

  constructor(seed: number) {
    this.#state = ((seed % SEED_MODULUS) + SEED_MODULUS) % SEED_MODULUS >>> 0;
  }

  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / SEED_MODULUS;
  }
}

/** A random seed for requests that give none. */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/** Tokens seen so far in one sequence, for the penalties. */
export class TokenHistory {
  /** Every id in prompt + output (repetition_penalty's set). */
  readonly seen = new Set<number>();
  /** Count of each id among generated tokens (presence/frequency penalties). */
  readonly generated = new Map<number, number>();

  constructor(promptIds: Iterable<number> = []) {
    for (const id of promptIds) this.seen.add(id);
  }

  addGenerated(id: number): void {
    this.seen.add(id);
    this.generated.set(id, (this.generated.get(id) ?? 0) + 1);
  }
}

/** Step 1: the penalised logits (a copy; the input is not changed). */
export function applyPenalties(
  logits: ArrayLike<number>,
  p: SamplingParams,
  history: TokenHistory,
): Float32Array {
  const out = Float32Array.from(logits);
  if (p.repetitionPenalty !== 1) {
    for (const id of history.seen) {
      out[id] = out[id] > 0 ? out[id] / p.repetitionPenalty : out[id] * p.repetitionPenalty;
    }
  }
  if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    for (const [id, count] of history.generated) {
      out[id] -= count * p.frequencyPenalty + p.presencePenalty;
    }
  }
  return out;
}

/** The index of the largest value; the lowest index wins ties. */
function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Softmax of `logits[ids]` (divided by `scale`), in the order of ids. */
function softmaxOf(logits: Float32Array, ids: number[], scale = 1): Float64Array {
  let max = -Infinity;
  for (const id of ids) max = Math.max(max, logits[id] / scale);
  const p = new Float64Array(ids.length);
  let sum = 0;
  for (let i = 0; i < ids.length; i++) sum += p[i] = Math.exp(logits[ids[i]] / scale - max);
  for (let i = 0; i < ids.length; i++) p[i] /= sum;
  return p;
}

/**
 * Logits this far below the largest have probability below e^-TAIL_CUTOFF relative to the top
 * token, so all of them together (vocab * e^-30 < 2e-8 for 152k ids) cannot change which prefix
 * top_p keeps while 1 - top_p exceeds TOP_P_EXACT_MARGIN. Cutting them first spares sorting the
 * whole vocabulary at every step.
 */
const TAIL_CUTOFF = 30;
const TOP_P_EXACT_MARGIN = 1e-6;

/** Ids that filtering can keep: those >= the k-th largest logit, and not in the negligible tail. */
function candidates(x: Float32Array, p: SamplingParams): number[] {
  let floor = -Infinity;
  if (p.topK > 0 && p.topK < x.length) floor = x.slice().sort()[x.length - p.topK];
  if (p.topP < 1 - TOP_P_EXACT_MARGIN) {
    let max = -Infinity;
    for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
    floor = Math.max(floor, max - TAIL_CUTOFF);
  }
  const ids: number[] = [];
  for (let i = 0; i < x.length; i++) if (x[i] >= floor) ids.push(i);
  return ids;
}

/** The tokens a draw can pick and their probabilities (steps 1-6). Greedy gives one token, p=1. */
export function samplingDistribution(
  logits: ArrayLike<number>,
  p: SamplingParams,
  history: TokenHistory,
): { ids: number[]; probs: Float64Array } {
  const x = applyPenalties(logits, p, history);
  if (p.temperature === 0) return { ids: [argmax(x)], probs: Float64Array.of(1) };
  const filtering = (p.topK > 0 && p.topK < x.length) || p.topP < 1 || p.minP > 0;
  let ids = filtering ? candidates(x, p) : Array.from(x.keys());
  ids = ids.filter((i) => x[i] !== -Infinity);
  if (filtering) ids.sort((a, b) => x[b] - x[a] || a - b);
  if (p.topK > 0 && p.topK < ids.length) ids = ids.slice(0, p.topK);
  if (p.topP < 1) {
    const probs = softmaxOf(x, ids);
    let mass = 0;
    let keep = 0;
    while (keep < ids.length && mass < p.topP) mass += probs[keep++];
    ids = ids.slice(0, Math.max(1, keep));
  }
  if (p.minP > 0) {
    const probs = softmaxOf(x, ids);
    const floor = p.minP * probs[0];
    ids = ids.filter((_, i) => probs[i] >= floor);
  }
  return { ids, probs: softmaxOf(x, ids, p.temperature) };
}

/** Draws one token id from `logits` under `p`; `rng` is the request's seeded generator. */
export function sampleToken(
  logits: ArrayLike<number>,
  p: SamplingParams,
  history: TokenHistory,
  rng: Prng,
): number {
  const { ids, probs } = samplingDistribution(logits, p, history);
  if (ids.length === 1) return ids[0];
  const u = rng.next();
  let cum = 0;
  for (let i = 0; i < ids.length; i++) {
    cum += probs[i];
    if (u < cum) return ids[i];
  }
  return ids[ids.length - 1]; // rounding left cum just below 1
}
