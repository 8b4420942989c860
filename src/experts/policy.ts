/**
 * Eviction policies for the GPU expert cache: which resident expert to drop when a new one must
 * come in. Each policy is a small pure class over keys it is told about (no I/O, no clock: the
 * caller passes `now`, a monotonic step counter such as the decode token index), so a trace can be
 * replayed against it exactly (`simulate`).
 *
 * Policies here:
 *   - LruPolicy: least recently used (the baseline).
 *   - LrfuPolicy: LRFU (Lee et al., 1999): each key's "combined recency and frequency" value
 *     CRF = sum over its past accesses t_i of 2^(-lambda * (now - t_i)). lambda = 0 is LFU,
 *     large lambda approaches LRU; in between, an expert used often stays even if it skipped a
 *     few tokens, while old popularity decays away (LFU with aging).
 *   - `simulateOptimal`: Belady's offline optimum (evict the key used farthest in the future),
 *     the upper bound a bench compares the online policies against.
 */

/** The interface every eviction policy implements. K is the cache key (e.g. layer * E + e). */
export interface EvictionPolicy<K> {
  /** Short name for reports ("lru", "lrfu(0.1)"). */
  readonly name: string;
  /** A key entered the cache at time now (this counts as its first access). */
  insert(key: K, now: number): void;
  /** A resident key was used again at time now. */
  touch(key: K, now: number): void;
  /** A key left the cache; the policy forgets it. */
  remove(key: K): void;
  /**
   * The key to evict among candidates (resident keys the caller may drop, e.g. excluding experts
   * the current step still needs), or undefined when there are none. Ties go to the candidate
   * that comes first.
   */
  victim(candidates: Iterable<K>, now: number): K | undefined;
}

/** Thrown when a policy is asked about a key it was never given. */
export class UnknownKeyError extends Error {
  constructor(policy: string, key: unknown) {
    super(`${policy}: key ${String(key)} is not resident; insert() it before touch() or victim()`);
    this.name = "UnknownKeyError";
  }
}

/** Least recently used: evicts the candidate whose last access is oldest. */
export class LruPolicy<K> implements EvictionPolicy<K> {
  readonly name = "lru";
  private last = new Map<K, number>();

  insert(key: K, now: number): void {
    this.last.set(key, now);
  }

  touch(key: K, now: number): void {
    if (!this.last.has(key)) throw new UnknownKeyError(this.name, key);
    this.last.set(key, now);
  }

  remove(key: K): void {
    this.last.delete(key);
  }

  victim(candidates: Iterable<K>, _now: number): K | undefined {
    let best: K | undefined;
    let bestTime = Infinity;
    for (const k of candidates) {
      const t = this.last.get(k);
      if (t === undefined) throw new UnknownKeyError(this.name, k);
      if (t < bestTime) {
        bestTime = t;
        best = k;
      }
    }
    return best;
  }
}

/**
 * Default LRFU decay per time step. With now counted in decode tokens, 2^-0.1 per token halves a
 * past access's weight after 10 tokens: an expert used in 3 of the last 10 tokens outranks one
 * used once just now, while a burst 50 tokens ago weighs 1/32 of a fresh access.
 */
export const DEFAULT_LRFU_LAMBDA = 0.1;

/** LRFU: evicts the candidate with the smallest decayed access weight (see the module doc). */
export class LrfuPolicy<K> implements EvictionPolicy<K> {
  readonly name: string;
  /** Per key: log2 of CRF as of `at` (logs keep long idle gaps from underflowing to 0). */
  private state = new Map<K, { log2Crf: number; at: number }>();

  /** lambda >= 0: decay exponent per time step (0 = pure LFU). */
  constructor(readonly lambda: number = DEFAULT_LRFU_LAMBDA) {
    if (!(lambda >= 0) || !Number.isFinite(lambda)) {
      throw new RangeError(`LRFU lambda must be a finite number >= 0, got ${lambda}`);
    }
    this.name = `lrfu(${lambda})`;
  }

  insert(key: K, now: number): void {
    this.state.set(key, { log2Crf: 0, at: now }); // CRF = 2^0 = 1: one access at now
  }

  touch(key: K, now: number): void {
    const s = this.state.get(key);
    if (s === undefined) throw new UnknownKeyError(this.name, key);
    // CRF(now) = 1 + CRF(at) * 2^(-lambda (now - at)), computed in log2 space.
    const decayed = s.log2Crf - this.lambda * (now - s.at);
    s.log2Crf = decayed > 0 ? decayed + Math.log2(1 + 2 ** -decayed) : Math.log2(1 + 2 ** decayed);
    s.at = now;
  }

  remove(key: K): void {
    this.state.delete(key);
  }

  /** log2 of key's CRF decayed to now (exposed for tests and reports). */
  score(key: K, now: number): number {
    const s = this.state.get(key);
    if (s === undefined) throw new UnknownKeyError(this.name, key);
    return s.log2Crf - this.lambda * (now - s.at);
  }

  victim(candidates: Iterable<K>, now: number): K | undefined {
    let best: K | undefined;
    let bestScore = Infinity;
    for (const k of candidates) {
      const sc = this.score(k, now);
      if (sc < bestScore) {
        bestScore = sc;
        best = k;
      }
    }
    return best;
  }
}

/** Thrown for a policy name that policyByName() does not know. */
export class UnknownPolicyError extends Error {
  constructor(spec: string) {
    super(`unknown eviction policy "${spec}"; use lru, lrfu or lrfu:LAMBDA (e.g. lrfu:0.05)`);
    this.name = "UnknownPolicyError";
  }
}

/** A fresh policy from a flag value: "lru", "lrfu" (DEFAULT_LRFU_LAMBDA) or "lrfu:LAMBDA". */
export function policyByName<K>(spec: string): EvictionPolicy<K> {
  if (spec === "lru") return new LruPolicy<K>();
  if (spec === "lrfu") return new LrfuPolicy<K>();
  const m = /^lrfu:([0-9]*\.?[0-9]+)$/.exec(spec);
  if (m !== null) return new LrfuPolicy<K>(Number(m[1]));
  throw new UnknownPolicyError(spec);
}

/** One access of a trace: key used at time now (several accesses may share a now). */
export interface Access<K> {
  key: K;
  now: number;
}

/** What a replayed trace did to the cache. */
export interface SimulationResult {
  hits: number;
  misses: number;
  evictions: number;
}

/** Accesses at times 0, 1, 2, ... (one key per step). */
export function sequentialTrace<K>(keys: readonly K[]): Access<K>[] {
  return keys.map((key, now) => ({ key, now }));
}

function checkCapacity(capacity: number): void {
  if (!Number.isInteger(capacity) || capacity < 1) {
    throw new RangeError(`cache capacity must be an integer >= 1, got ${capacity}`);
  }
}

/**
 * Replays trace against a cache of `capacity` keys managed by policy (which must start empty).
 * A miss with a full cache evicts the policy's victim among the resident keys not used at the
 * current `now` (the experts the current step still needs stay pinned, as in the GPU cache);
 * only when every resident key was used at `now` does the victim come from all of them.
 */
export function simulate<K>(
  trace: readonly Access<K>[],
  capacity: number,
  policy: EvictionPolicy<K>,
): SimulationResult {
  checkCapacity(capacity);
  const lastUse = new Map<K, number>(); // resident key -> last access time
  const out = { hits: 0, misses: 0, evictions: 0 };
  for (const { key, now } of trace) {
    if (lastUse.has(key)) {
      out.hits++;
      policy.touch(key, now);
      lastUse.set(key, now);
      continue;
    }
    out.misses++;
    if (lastUse.size >= capacity) {
      const unpinned = [...lastUse.keys()].filter((k) => lastUse.get(k)! < now);
      const v = policy.victim(unpinned.length > 0 ? unpinned : lastUse.keys(), now)!;
      lastUse.delete(v);
      policy.remove(v);
      out.evictions++;
    }
    lastUse.set(key, now);
    policy.insert(key, now);
  }
  return out;
}

/**
 * Belady's optimal replacement on trace: on a miss with a full cache, evicts the resident key
 * whose next use is farthest away (never used again first; ties to the earliest inserted).
 * No online policy can have fewer misses.
 */
export function simulateOptimal<K>(
  trace: readonly Access<K>[],
  capacity: number,
): SimulationResult {
  checkCapacity(capacity);
  // nextUse[i]: index of the next access of trace[i].key after i, or Infinity.
  const nextUse = new Array<number>(trace.length);
  const seen = new Map<K, number>();
  for (let i = trace.length - 1; i >= 0; i--) {
    nextUse[i] = seen.get(trace[i].key) ?? Infinity;
    seen.set(trace[i].key, i);
  }
  const resident = new Map<K, number>(); // key -> its next use
  const out = { hits: 0, misses: 0, evictions: 0 };
  for (let i = 0; i < trace.length; i++) {
    const key = trace[i].key;
    if (resident.has(key)) {
      out.hits++;
    } else {
      out.misses++;
      if (resident.size >= capacity) {
        let victim: K | undefined;
        let far = -1;
        for (const [k, next] of resident) {
          if (next > far) {
            far = next;
            victim = k;
          }
        }
        resident.delete(victim!);
        out.evictions++;
      }
    }
    resident.set(key, nextUse[i]);
  }
  return out;
}
