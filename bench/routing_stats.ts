/**
 * Pure statistics of a routing trace (no GPU, no I/O), for bench/routing.ts and its tests.
 *
 * A trace is a list of sequences; a sequence holds, per layer, the routed experts of each of its
 * T tokens, token-major: rows[l] = [T * K] expert ids (each token's top-k, as GpuModel.onRouting
 * hands them over). Sequences are independent (one held-out window each): reuse never looks
 * across a sequence boundary, while the cache trace runs them one after the other (the cache
 * persists between requests).
 *
 * Legend: L layers, E experts per layer, K experts per token, T tokens of a sequence.
 */
import type { Access, SimulationResult } from "../src/experts/policy.ts";

/** One sequence's routing: per layer, [T * K] expert ids, token-major. */
export type SequenceRouting = readonly Uint32Array[];

/** Thrown for a routing row that does not fit the shapes it is said to have. */
export class RoutingShapeError extends Error {
  override name = "RoutingShapeError";
}

function checkRow(row: Uint32Array, E: number, K: number): void {
  if (row.length % K !== 0) {
    throw new RoutingShapeError(`a routing row of ${row.length} ids is not T x top-${K}`);
  }
  for (const e of row) {
    if (e >= E) throw new RoutingShapeError(`expert id ${e} is outside [0, ${E})`);
  }
}

/**
 * Fraction of routed slots that went to each expert, over one layer's rows of every sequence
 * (sums to 1; all zeros when no token was routed).
 */
export function expertLoad(rows: readonly Uint32Array[], E: number, K: number): Float64Array {
  const counts = new Float64Array(E);
  let total = 0;
  for (const row of rows) {
    checkRow(row, E, K);
    for (const e of row) counts[e]++;
    total += row.length;
  }
  if (total > 0) { for (let e = 0; e < E; e++) counts[e] /= total; }
  return counts;
}

/** Shannon entropy in bits of a distribution (terms with p = 0 add nothing). */
export function entropyBits(p: ArrayLike<number>): number {
  let h = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > 0) h -= p[i] * Math.log2(p[i]);
  return h;
}

/** How evenly one layer spreads its routed slots over its experts. */
export interface LoadSummary {
  /** Per expert: fraction of routed slots. */
  load: Float64Array;
  entropyBits: number;
  /** log2(E): the entropy of a perfectly even load. */
  uniformBits: number;
  maxLoad: number;
  minLoad: number;
}

/** expertLoad of one layer with its entropy and extremes. */
export function loadSummary(rows: readonly Uint32Array[], E: number, K: number): LoadSummary {
  const load = expertLoad(rows, E, K);
  return {
    load,
    entropyBits: entropyBits(load),
    uniformBits: Math.log2(E),
    maxLoad: Math.max(...load),
    minLoad: Math.min(...load),
  };
}

/** How often an expert used at token t is used again soon after, in one layer. */
export interface Reuse {
  /**
   * (token, expert) uses counted: tokens t with t + horizon inside their sequence, so that both
   * fractions below are over the same uses and every use has its full look-ahead.
   */
  uses: number;
  /** Fraction of those uses whose expert is routed again at token t + 1. */
  next: number;
  /** Fraction whose expert is routed again at some token t + 1 .. t + horizon. */
  withinHorizon: number;
}

/** Reuse of one layer's rows (one per sequence) over a look-ahead of `horizon` tokens. */
export function reuse(
  rows: readonly Uint32Array[],
  E: number,
  K: number,
  horizon: number,
): Reuse {
  if (!Number.isInteger(horizon) || horizon < 1) {
    throw new RangeError(`reuse horizon must be an integer >= 1, got ${horizon}`);
  }
  let uses = 0, next = 0, within = 0;
  for (const row of rows) {
    checkRow(row, E, K);
    const T = row.length / K;
    // nextUse[t * K + j]: the first token after t that routes to row[t * K + j] (T if none)
    const nextUse = new Int32Array(row.length);
    const seenAt = new Int32Array(E).fill(T);
    for (let t = T - 1; t >= 0; t--) {
      for (let j = 0; j < K; j++) nextUse[t * K + j] = seenAt[row[t * K + j]];
      for (let j = 0; j < K; j++) seenAt[row[t * K + j]] = t;
    }
    for (let t = 0; t + horizon < T; t++) {
      for (let j = 0; j < K; j++) {
        const gap = nextUse[t * K + j] - t;
        uses++;
        if (gap === 1) next++;
        if (gap <= horizon) within++;
      }
    }
  }
  return { uses, next: uses ? next / uses : 0, withinHorizon: uses ? within / uses : 0 };
}

/**
 * The reuse expected when tokens are routed independently of each other, each token picking
 * expert e with probability q_e = K * load[e] (the measured marginals; any routing with those
 * marginals and independent tokens): next = sum q_e^2 / K, withinHorizon =
 * sum q_e (1 - (1 - q_e)^horizon) / K. The uses field is 0 (nothing was counted).
 */
export function independentReuse(load: ArrayLike<number>, K: number, horizon: number): Reuse {
  let next = 0, within = 0;
  for (let e = 0; e < load.length; e++) {
    const q = Math.min(1, K * load[e]);
    next += q * q;
    within += q * (1 - (1 - q) ** horizon);
  }
  return { uses: 0, next: next / K, withinHorizon: within / K };
}

/** independentReuse of uniform random top-K of E: next = K/E, within = 1 - (1 - K/E)^horizon. */
export function uniformReuse(E: number, K: number, horizon: number): Reuse {
  return independentReuse(new Float64Array(E).fill(1 / E), K, horizon);
}

/**
 * The expert cache's access trace: sequences one after the other, token by token, layer by
 * layer; key l * E + e for each distinct expert a token routed to at layer l, all at one `now`
 * per layer visit (the GPU model's clock ticks the same way).
 */
export function cacheTrace(
  sequences: readonly SequenceRouting[],
  E: number,
  K: number,
): Access<number>[] {
  const trace: Access<number>[] = [];
  let now = 0;
  for (const rows of sequences) {
    for (const row of rows) checkRow(row, E, K);
    const T = rows.length > 0 ? rows[0].length / K : 0;
    if (rows.some((r) => r.length !== T * K)) {
      throw new RoutingShapeError("a sequence's layers route different numbers of tokens");
    }
    for (let t = 0; t < T; t++) {
      for (let l = 0; l < rows.length; l++, now++) {
        const seen = new Set<number>();
        for (let j = 0; j < K; j++) {
          const key = l * E + rows[l][t * K + j];
          if (seen.has(key)) continue;
          seen.add(key);
          trace.push({ key, now });
        }
      }
    }
  }
  return trace;
}

/**
 * The trace on the GPU model's clock: cacheTrace counts one `now` per layer visit, ExpertScheduler
 * counts tokens (tick() adds 1/L per layer visit, so visit i happens at (i + 1) / L). Policies
 * whose time constants are in tokens (ModelAwarePolicy) replay this one.
 */
export function tokenClock<K>(trace: readonly Access<K>[], L: number): Access<K>[] {
  if (!Number.isInteger(L) || L < 1) throw new RangeError(`layers must be >= 1, got ${L}`);
  return trace.map(({ key, now }) => ({ key, now: (now + 1) / L }));
}

/** The keys of each step of a trace (consecutive accesses sharing a now), in order. */
export function traceSteps<K>(trace: readonly Access<K>[]): K[][] {
  const steps: K[][] = [];
  let last: number | undefined;
  for (const { key, now } of trace) {
    if (now !== last) {
      steps.push([]);
      last = now;
    }
    steps[steps.length - 1].push(key);
  }
  return steps;
}

/** What an oracle predictor needs of a policy. */
export interface Predicting<K> {
  predict(keys: Iterable<K>, now: number): void;
}

/**
 * An idealised predictor for simulate()'s onStep, over a trace's steps (traceSteps): after each
 * step s it tells `policy` the exact keys of step s + ahead (with ahead = L, the routing of the same layer at the next token;
 * with ahead = 2, the next layer's, known before the current layer loads, as pre-gating would
 * give it). Read from the trace itself, so it is an upper bound for a real predictor.
 */
export function oraclePredictor<K>(
  steps: readonly (readonly K[])[],
  ahead: number,
  policy: Predicting<K>,
): (step: number, now: number) => void {
  if (!Number.isInteger(ahead) || ahead < 1) {
    throw new RangeError(`an oracle looks ahead >= 1 steps, got ${ahead}`);
  }
  return (step, now) => {
    const keys = steps[step + ahead];
    if (keys !== undefined) policy.predict(keys, now);
  };
}

/** hits / (hits + misses); 0 for an empty replay. */
export function hitRate(r: SimulationResult): number {
  const n = r.hits + r.misses;
  return n ? r.hits / n : 0;
}

/** Cache slots for a budget: round(fraction * total), at least K (one token's experts). */
export function budgetSlots(fraction: number, total: number, K: number): number {
  if (!(fraction > 0 && fraction <= 1)) {
    throw new RangeError(`a budget is a fraction in (0, 1], got ${fraction}`);
  }
  return Math.min(total, Math.max(K, Math.round(fraction * total)));
}

/**
 * Splits one layer's concatenated routing rows (as onRouting delivers them across steps and
 * windows) into one row per sequence of the given token counts.
 */
export function splitRows(row: Uint32Array, lengths: readonly number[], K: number): Uint32Array[] {
  const total = lengths.reduce((a, b) => a + b, 0);
  if (row.length !== total * K) {
    throw new RoutingShapeError(`${row.length} routed ids are not ${total} tokens x top-${K}`);
  }
  const out: Uint32Array[] = [];
  let at = 0;
  for (const n of lengths) {
    out.push(row.slice(at, at + n * K));
    at += n * K;
  }
  return out;
}

/** The shapes a routing trace is read against. */
export interface RoutingShape {
  numLayers: number;
  numExperts: number;
  topK: number;
}

/**
 * A recorded routing as bench/routing.ts --save-routing writes it (JSON), so that the policy
 * replay can be rerun and tuned without the GPU pass that produced it (--routing FILE).
 */
export interface SavedRouting {
  format: "moe-routing-v1";
  /** Where it came from (model directory, perplexity of the recording pass...), for reports. */
  source: Record<string, unknown>;
  shape: RoutingShape;
  /** Per sequence, per layer: the [T * K] routed expert ids, token-major. */
  sequences: number[][][];
}

/** The JSON form of a routing (shapes checked as cacheTrace checks them). */
export function encodeRouting(
  sequences: readonly SequenceRouting[],
  shape: RoutingShape,
  source: Record<string, unknown> = {},
): SavedRouting {
  checkSequences(sequences, shape);
  return {
    format: "moe-routing-v1",
    source,
    shape: { numLayers: shape.numLayers, numExperts: shape.numExperts, topK: shape.topK },
    sequences: sequences.map((rows) => rows.map((r) => [...r])),
  };
}

/** A routing back from its JSON form; RoutingShapeError when it does not fit its own shape. */
export function decodeRouting(
  json: unknown,
): { sequences: SequenceRouting[]; saved: SavedRouting } {
  const saved = json as SavedRouting;
  if (saved?.format !== "moe-routing-v1" || !Array.isArray(saved.sequences)) {
    throw new RoutingShapeError("not a saved routing (format moe-routing-v1)");
  }
  const { numLayers, numExperts, topK } = saved.shape ?? {};
  for (const n of [numLayers, numExperts, topK]) {
    if (!Number.isInteger(n) || n < 1) {
      throw new RoutingShapeError(`a saved routing's shape needs positive integers, got ${n}`);
    }
  }
  const sequences = saved.sequences.map((rows) => rows.map((r) => Uint32Array.from(r)));
  checkSequences(sequences, saved.shape);
  return { sequences, saved };
}

function checkSequences(sequences: readonly SequenceRouting[], shape: RoutingShape): void {
  for (const rows of sequences) {
    if (rows.length !== shape.numLayers) {
      throw new RoutingShapeError(`a sequence has ${rows.length} layers, not ${shape.numLayers}`);
    }
    for (const row of rows) checkRow(row, shape.numExperts, shape.topK);
    if (rows.some((r) => r.length !== rows[0].length)) {
      throw new RoutingShapeError("a sequence's layers route different numbers of tokens");
    }
  }
}
