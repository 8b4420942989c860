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
 *   - ModelAwarePolicy: knows the MoE model (see its doc): per-key use probabilities learnt from
 *     every visit of the key's layer, with aging and one step of recency, combined with the fixed
 *     layer order into an expected time to next use; per-layer quotas; keys predicted for the
 *     next step (predict()) are not evicted.
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

/** The shape of the expert grid a model-aware policy keys into: key = layer * numExperts + e. */
export interface ExpertGrid {
  numLayers: number;
  numExperts: number;
}

/**
 * Default half-life of ModelAwarePolicy's use counts, in tokens. Tuned on the default model's
 * held-out routing (bench/routing.ts): 32..128 are within 0.3 points of each other at every
 * budget; shorter forgets a key's popularity between its uses, longer follows topic drift late.
 */
export const DEFAULT_MODEL_AWARE_HALF_LIFE = 64;

/**
 * Default weight of ModelAwarePolicy's layer quota (see ModelAwareOptions.quotaWeight). Tuned on
 * the same routing: 0 -> 0.5 gains 0.3 points at 25% and 0.6 at 10% of the experts (a small
 * cache keeps some experts of every layer rather than all of a few); beyond 1 it starts to
 * overrule what the keys are worth and loses at 25% and 50%.
 */
export const DEFAULT_QUOTA_WEIGHT = 0.5;

/** Tuning of ModelAwarePolicy; every field has a default measured on the default model. */
export interface ModelAwareOptions {
  /** Half-life of the use counts in tokens (one pass through all layers), > 0 (Infinity: no
   * aging). */
  halfLife?: number;
  /**
   * Per-layer quota, >= 0: each layer's share is the resident count / numLayers; a key's
   * expected time to next use is stretched by 1 + quotaWeight * (held - share) / share, where
   * held is how many keys its layer holds, so that among keys of similar worth a layer above its
   * share gives one up first and one below it keeps its keys (0: no quota).
   */
  quotaWeight?: number;
  /**
   * Strength of the prior, in visits, > 0: an estimate from n visits is blended with the prior
   * (the layer's mean use rate, then the key's base rate) as if that had been seen `prior` times,
   * so that one lucky or unlucky visit does not decide a key's fate.
   */
  prior?: number;
}

/**
 * An eviction policy that knows the MoE model: keys are layer * E + expert, a token visits the
 * layers in a fixed order, every visit of layer l uses a few of l's E experts, and the cache's
 * clock `now` counts tokens (a pass through all L layers advances it by 1; ExpertScheduler ticks
 * 1/L per layer visit). It evicts the candidate whose next use is expected farthest away: Belady's
 * rule with the future estimated from the past.
 *
 * For each key it learns, over every visit of its layer (whether or not the key was resident,
 * so popularity survives evictions: an in-cache count would forget a key the moment it leaves,
 * which is why LRFU drops to LRU behaviour on a small cache), decayed with a half-life in tokens
 * (frequency with recency):
 *   - q: the chance a visit uses it after a visit that did not (its base rate),
 *   - p1: the chance the next visit uses it, given whether the layer's last visit did (routing
 *     repeats more often from one token to the next than independent tokens would).
 * With d the time to its layer's next visit (from the fixed layer order: the layer visited just
 * now is the farthest, as its next visit is a whole token away), the expected time to next use
 * is d + (1 - p1) / q tokens. A layer's share of the cache is the resident count / L; a key of
 * a layer holding more than its share has that time stretched (ModelAwareOptions.quotaWeight),
 * so that layers hold what their keys are worth without one layer's run of misses taking
 * another's last experts. Keys passed to predict() for their layer's next visit are never
 * evicted while another candidate remains; the caller protects the current step's keys by
 * leaving them out of the candidates.
 *
 * Memory: a few numbers per key of the whole grid (L * E), each visit's bookkeeping is O(E) and
 * victim() is O(candidates).
 */
export class ModelAwarePolicy implements EvictionPolicy<number> {
  readonly name: string;
  readonly numLayers: number;
  readonly numExperts: number;
  readonly halfLife: number;
  readonly quotaWeight: number;
  readonly prior: number;
  /** Decay per visit of a layer (one visit per token). */
  private readonly g: number;
  /** Half a layer step in tokens: times closer than this belong to the same visit. */
  private readonly halfStep: number;
  // per key (layer * E + e)
  private readonly resident: Uint8Array;
  /** Used in its layer's latest visit (the one in progress, or the last complete one). */
  private readonly cur: Uint8Array;
  /** Used in the visit before that. */
  private readonly prev: Uint8Array;
  /** Decayed count of complete visits that used the key. */
  private readonly uses: Float64Array;
  /** Decayed transitions: visits after a visit that did not use it (n0) / did (n1), and of
   * those the visits that used it (u0, u1). */
  private readonly n0: Float64Array;
  private readonly u0: Float64Array;
  private readonly n1: Float64Array;
  private readonly u1: Float64Array;
  /** When predict() named the key (NaN: never); valid until its layer's next visit. */
  private readonly predictedAt: Float64Array;
  // per layer
  private readonly held: Int32Array;
  private readonly visits: Float64Array;
  private readonly layerUses: Float64Array;
  private readonly lastVisit: Float64Array;
  /** Whether the layer has a complete visit before its latest one (transitions are defined). */
  private readonly hasPrev: Uint8Array;
  private residentCount = 0;

  constructor(grid: ExpertGrid, options: ModelAwareOptions = {}) {
    const { numLayers: L, numExperts: E } = grid;
    if (!Number.isInteger(L) || L < 1 || !Number.isInteger(E) || E < 1) {
      throw new RangeError(
        `a model-aware policy needs integer layers and experts >= 1, got ${L} x ${E}`,
      );
    }
    const halfLife = options.halfLife ?? DEFAULT_MODEL_AWARE_HALF_LIFE;
    const quotaWeight = options.quotaWeight ?? DEFAULT_QUOTA_WEIGHT;
    const prior = options.prior ?? 1;
    if (!(halfLife > 0)) throw new RangeError(`halfLife must be > 0 tokens, got ${halfLife}`);
    if (!(quotaWeight >= 0) || !Number.isFinite(quotaWeight)) {
      throw new RangeError(`quotaWeight must be a finite number >= 0, got ${quotaWeight}`);
    }
    if (!(prior > 0) || !Number.isFinite(prior)) {
      throw new RangeError(`prior must be a finite number > 0, got ${prior}`);
    }
    this.numLayers = L;
    this.numExperts = E;
    this.halfLife = halfLife;
    this.quotaWeight = quotaWeight;
    this.prior = prior;
    this.g = Number.isFinite(halfLife) ? 2 ** (-1 / halfLife) : 1;
    this.halfStep = 0.5 / L;
    this.name = `model(${halfLife})`;
    const n = L * E;
    this.resident = new Uint8Array(n);
    this.cur = new Uint8Array(n);
    this.prev = new Uint8Array(n);
    this.uses = new Float64Array(n);
    this.n0 = new Float64Array(n);
    this.u0 = new Float64Array(n);
    this.n1 = new Float64Array(n);
    this.u1 = new Float64Array(n);
    this.predictedAt = new Float64Array(n).fill(NaN);
    this.held = new Int32Array(L);
    this.visits = new Float64Array(L);
    this.layerUses = new Float64Array(L);
    this.lastVisit = new Float64Array(L).fill(-Infinity);
    this.hasPrev = new Uint8Array(L);
  }

  private layerOf(key: number): number {
    if (!Number.isInteger(key) || key < 0 || key >= this.numLayers * this.numExperts) {
      throw new RangeError(
        `${this.name}: key ${key} is outside the ${this.numLayers} x ${this.numExperts} grid`,
      );
    }
    return Math.floor(key / this.numExperts);
  }

  /**
   * The key becomes resident; the insert counts as a use of it, unless it comes before its
   * layer's next visit is due (more than half a layer step before a token after the layer's
   * last visit): that is a speculative prefetch (the GPU cache loads later layers' guesses at
   * the missed layer's time), counted only when a touch() at the layer's visit uses it, so
   * guesses neither count as uses nor open a visit of their own.
   */
  insert(key: number, now: number): void {
    const l = this.layerOf(key);
    if (!this.resident[key]) {
      this.resident[key] = 1;
      this.held[l]++;
      this.residentCount++;
    }
    const last = this.lastVisit[l];
    if (now > last && now < last + 1 - this.halfStep) return;
    this.use(key, l, now);
  }

  touch(key: number, now: number): void {
    const l = this.layerOf(key);
    if (!this.resident[key]) throw new UnknownKeyError(this.name, key);
    this.use(key, l, now);
  }

  /** The key leaves the cache; what was learnt about it stays (see the class doc). */
  remove(key: number): void {
    const l = this.layerOf(key);
    if (!this.resident[key]) return;
    this.resident[key] = 0;
    this.held[l]--;
    this.residentCount--;
  }

  /**
   * Keys expected in their layer's next visit (e.g. from a pre-gating router, or a draft):
   * victim() passes them over while any other candidate remains, until their layer's next
   * visit starts (a later visit makes the prediction stale, used or not). Keys need not be
   * resident; a new prediction of a key replaces its old one.
   */
  predict(keys: Iterable<number>, now: number): void {
    for (const k of keys) {
      this.layerOf(k);
      this.predictedAt[k] = now;
    }
  }

  /** Whether key is predicted for its layer's next visit (see predict()). */
  isPredicted(key: number): boolean {
    return this.predictedAt[key] >= this.lastVisit[this.layerOf(key)];
  }

  /** Keys resident per layer (what the quota compares against the share). */
  heldBy(layer: number): number {
    return this.held[layer];
  }

  /**
   * Probabilities learnt for key: q, that a visit of its layer uses it after one that did not,
   * and p1, that the layer's next visit uses it (given whether its latest visit did).
   */
  useChances(key: number): { q: number; p1: number } {
    const l = this.layerOf(key);
    const a = this.prior;
    // the layer's mean use rate per key and visit, then the key's rate over every visit
    const mean = this.visits[l] > 0 ? this.layerUses[l] / (this.visits[l] * this.numExperts) : 1 /
      this.numExperts;
    const base = (this.uses[key] + a * mean) / (this.visits[l] + a);
    const q = (this.u0[key] + a * base) / (this.n0[key] + a);
    const p1 = this.cur[key] ? (this.u1[key] + a * base) / (this.n1[key] + a) : q;
    return { q, p1 };
  }

  /** Tokens until key's layer is visited next, in (halfStep, 1 + halfStep]: the layer visited
   * at `now` (its visit in progress) waits a whole token. */
  untilVisit(key: number, now: number): number {
    const last = this.lastVisit[this.layerOf(key)];
    if (last === -Infinity) return 1;
    const x = last + 1 - now;
    return x - Math.floor(x - this.halfStep);
  }

  /** Expected tokens until key is used again, before the quota stretch (see the class doc). */
  expectedNextUse(key: number, now: number): number {
    const { q, p1 } = this.useChances(key);
    return this.untilVisit(key, now) + (1 - p1) / Math.max(q, 1e-12);
  }

  /** expectedNextUse stretched by the layer quota: what victim() maximises. */
  score(key: number, now: number): number {
    const t = this.expectedNextUse(key, now);
    if (this.quotaWeight === 0 || this.residentCount === 0) return t;
    const share = this.residentCount / this.numLayers;
    return t * Math.max(0, 1 + (this.quotaWeight * (this.held[this.layerOf(key)] - share)) / share);
  }

  victim(candidates: Iterable<number>, now: number): number | undefined {
    let best: number | undefined;
    let bestScore = -Infinity;
    let bestPredicted: number | undefined;
    let bestPredictedScore = -Infinity;
    for (const k of candidates) {
      if (!this.resident[k]) throw new UnknownKeyError(this.name, k);
      const s = this.score(k, now);
      if (this.isPredicted(k)) {
        if (s > bestPredictedScore || bestPredicted === undefined) {
          bestPredictedScore = s;
          bestPredicted = k;
        }
      } else if (s > bestScore || best === undefined) {
        bestScore = s;
        best = k;
      }
    }
    return best ?? bestPredicted;
  }

  /** A use of key at now; the first use at a later time than its layer's latest visit opens a
   * new visit, closing the latest one into the counts. */
  private use(key: number, l: number, now: number): void {
    if (now > this.lastVisit[l]) {
      if (this.lastVisit[l] !== -Infinity) this.closeVisit(l);
      this.lastVisit[l] = now;
    }
    this.cur[key] = 1;
  }

  /** Folds the layer's latest visit (cur) into the decayed counts and moves it to prev. */
  private closeVisit(l: number): void {
    const g = this.g;
    const E = this.numExperts;
    const had = this.hasPrev[l] === 1;
    let used = 0;
    for (let k = l * E; k < (l + 1) * E; k++) {
      const u = this.cur[k];
      used += u;
      this.uses[k] = this.uses[k] * g + u;
      if (had) {
        const p = this.prev[k];
        this.n0[k] = this.n0[k] * g + (1 - p);
        this.u0[k] = this.u0[k] * g + (1 - p) * u;
        this.n1[k] = this.n1[k] * g + p;
        this.u1[k] = this.u1[k] * g + p * u;
      }
      this.prev[k] = u;
      this.cur[k] = 0;
    }
    this.visits[l] = this.visits[l] * g + 1;
    this.layerUses[l] = this.layerUses[l] * g + used;
    this.hasPrev[l] = 1;
  }
}

/** Thrown for a policy name that policyByName() does not know. */
export class UnknownPolicyError extends Error {
  constructor(spec: string) {
    super(
      `unknown eviction policy "${spec}"; use lru, lrfu, lrfu:LAMBDA (e.g. lrfu:0.05), model or ` +
        `model:HALF_LIFE (e.g. model:64)`,
    );
    this.name = "UnknownPolicyError";
  }
}

/**
 * Checks a --policy value now and builds the policy later, once the model's grid is known (the
 * model-aware policy needs it; the others ignore it): "lru", "lrfu" (DEFAULT_LRFU_LAMBDA),
 * "lrfu:LAMBDA", "model" (ModelAwarePolicy, defaults) or "model:HALF_LIFE" (tokens).
 */
export function policyFactory(spec: string): (grid: ExpertGrid) => EvictionPolicy<number> {
  if (spec === "lru") return () => new LruPolicy<number>();
  if (spec === "lrfu") return () => new LrfuPolicy<number>();
  const lrfu = /^lrfu:([0-9]*\.?[0-9]+)$/.exec(spec);
  if (lrfu !== null) {
    const lambda = Number(lrfu[1]);
    return () => new LrfuPolicy<number>(lambda);
  }
  if (spec === "model") return (grid) => new ModelAwarePolicy(grid);
  const model = /^model:([0-9]*\.?[0-9]+)$/.exec(spec);
  if (model !== null && Number(model[1]) > 0) {
    const halfLife = Number(model[1]);
    return (grid) => new ModelAwarePolicy(grid, { halfLife });
  }
  throw new UnknownPolicyError(spec);
}

/** Thrown when policyByName() is asked for a model-aware policy without the model's grid. */
export class PolicyNeedsModelError extends Error {
  constructor(spec: string) {
    super(`eviction policy "${spec}" needs the model's layers and experts (pass the grid)`);
    this.name = "PolicyNeedsModelError";
  }
}

/**
 * A fresh policy from a flag value (see policyFactory). "model" policies key into the grid
 * (number keys only) and need it: PolicyNeedsModelError without.
 */
export function policyByName<K>(spec: string, grid?: ExpertGrid): EvictionPolicy<K> {
  const make = policyFactory(spec);
  if (spec.startsWith("model")) {
    if (grid === undefined) throw new PolicyNeedsModelError(spec);
    return make(grid) as unknown as EvictionPolicy<K>;
  }
  return make({ numLayers: 1, numExperts: 1 }) as unknown as EvictionPolicy<K>;
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
 * Accesses sharing a `now` form one step (one layer visit), which the trace must list together.
 * A miss with a full cache evicts the policy's victim among the resident keys the step does not
 * access, before or after the miss: the GPU cache protects every expert a layer routed to
 * before it loads any of them, and so does this replay. Only when every resident key belongs to
 * the step does the victim come from all of them.
 *
 * `onStep(step, now)`, when given, runs after each step (index 0, 1, ...): the bench feeds
 * predictions to a policy through it.
 */
export function simulate<K>(
  trace: readonly Access<K>[],
  capacity: number,
  policy: EvictionPolicy<K>,
  onStep?: (step: number, now: number) => void,
): SimulationResult {
  checkCapacity(capacity);
  const resident = new Set<K>();
  const out = { hits: 0, misses: 0, evictions: 0 };
  let step = 0;
  for (let i = 0; i < trace.length; step++) {
    const now = trace[i].now;
    let end = i;
    const stepKeys = new Set<K>();
    while (end < trace.length && trace[end].now === now) stepKeys.add(trace[end++].key);
    for (; i < end; i++) {
      const key = trace[i].key;
      if (resident.has(key)) {
        out.hits++;
        policy.touch(key, now);
        continue;
      }
      out.misses++;
      if (resident.size >= capacity) {
        const unpinned = [...resident].filter((k) => !stepKeys.has(k));
        const v = policy.victim(unpinned.length > 0 ? unpinned : resident, now)!;
        resident.delete(v);
        policy.remove(v);
        out.evictions++;
      }
      resident.add(key);
      policy.insert(key, now);
    }
    onStep?.(step, now);
  }
  return out;
}

/**
 * Belady's optimal replacement on trace: on a miss with a full cache, evicts the resident key
 * whose next use is farthest away (never used again first; ties to the earliest inserted).
 * No online policy can have fewer misses. Hits and misses are counted from access `countFrom` on
 * (the cache still runs through the earlier ones: a warm start).
 */
export function simulateOptimal<K>(
  trace: readonly Access<K>[],
  capacity: number,
  countFrom = 0,
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
    const counts = i >= countFrom;
    if (resident.has(key)) {
      if (counts) out.hits++;
    } else {
      if (counts) out.misses++;
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
        if (counts) out.evictions++;
      }
    }
    resident.set(key, nextUse[i]);
  }
  return out;
}
