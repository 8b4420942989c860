/**
 * The expert scheduler: which experts are loaded, when, and what the expert cache learns from each
 * pass: the decisions of running under an expert budget, apart from the forward pass that computes
 * (src/gpu/model.ts only encodes passes and hands their read-back routing and miss flags here).
 *
 * - How a step runs: every prompt under a budget goes layer by layer (layerwise: each layer's
 *   routing read back, its experts loaded in groups that fit); a decode step runs optimistically
 *   with the slots it has, and passResult() says from which layer it must run again.
 * - How many sequences a batched step holds under a budget (maxLanes: as many as the smallest
 *   slot domain holds one layer's routed experts for).
 * - Whether a pass routes among resident experts only (startPass: router masking once the cache
 *   is full; the pinned context set made resident again first, src/gpu/expert_sets.ts, owned
 *   here as `sets`).
 * - A pass that routed to absent experts: its first missed layer saw its exact input, so exactly
 *   what that layer routed to is loaded; with prefetch, the experts later layers flagged on their
 *   approximate input are loaded along (guesses, scored when the final routing arrives).
 * - A step never loads more experts than it routes (with loadCap): its loads are the routed
 *   experts that were absent plus the guesses that proved wrong, so a guess is loaded only while
 *   the step's hits (routed experts resident before it, not loaded by it) exceed its wrong and
 *   still unscored guesses.
 * - A pass whose layers all found their experts: each layer's distinct routed experts are hits
 *   that the eviction policy hears about (its clock advances 1/L per layer visit).
 * - Router masking: each layer's share of the slots (layerQuota); a layer below it routes exactly
 *   and loads, evicting from layers above their share.
 * - Prefill under a budget: each layer's routed experts in groups that fit the slots.
 *
 * A layer's room is its slot domain's (ExpertCache.capacityOf: with layer affinity, the slots of
 * its own pool groups, shared with the layers of the same groups), not the whole cache: its loads
 * can only take and evict slots there, so every share and size below is counted in the domain.
 *
 * Context expert sets (src/gpu/expert_sets.ts) pin keys: a demand load evicts a pinned expert
 * only when its domain has no other slot (a pass never fails for want of slots; in practice an
 * exact pass, since a masked one at every layer's share loads nothing), prefetch never.
 *
 * Keys are l*E + e. Routing blocks are [L][T*K] with layers `stride` tokens apart.
 */
import type { ModelConfig } from "../types.ts";
import { ExpertBudgetError, type ExpertCache } from "./expert_cache.ts";
import { ExpertSets } from "./expert_sets.ts";
import type { StepStats } from "./host.ts";

/** How the model runs (fixed at open). */
export interface SchedulerOptions {
  /** Load the experts later layers flagged at a miss along with it. */
  prefetch: boolean;
  /** Every expert fits the slots: nothing is ever loaded after open. */
  allResident: boolean;
  /** The baseline of reading each layer's routing back in every step (GpuModelOptions). */
  perLayerRouting: boolean;
  /** Guesses only within the step's hits, so a step loads at most what it routes (false: the
   * baseline, every flagged expert loaded at a miss). */
  loadCap: boolean;
}

/** What one decode step (a token, or a batched step's tokens) has routed and loaded so far. */
class StepLoads {
  /** Keys loaded by the step (demand and guesses). */
  readonly loaded = new Set<number>();
  /** Keys the step's final routing used. */
  readonly routed = new Set<number>();
  /** Routed keys that were resident and not loaded by the step. */
  readonly hits = new Set<number>();
  /** Guesses whose layer routed without them. */
  wrong = 0;
  loads = 0;

  /** Empties it for the next step (reused: no allocation a step). */
  clear(): void {
    this.loaded.clear();
    this.routed.clear();
    this.hits.clear();
    this.wrong = 0;
    this.loads = 0;
  }
}

export class ExpertScheduler {
  /** Whether the pass being recorded or read routes among resident experts only. */
  masking = false;
  /** Experts loaded speculatively for the pass being repaired, not yet scored. */
  readonly guessed = new Set<number>();
  /** Context expert sets: pinned under router masking, the cache's starting set otherwise. */
  readonly sets: ExpertSets;
  /**
   * For studies of the repairs (bench/miss_guesses.ts): keys to guess as well when a pass first
   * missed at layer l0, after the flagged ones and within the same allowance (keys of layers
   * after l0 only; resident ones are skipped). Null: the flagged experts only.
   */
  extraGuesses: ((l0: number) => number[]) | null = null;
  /** Logical time for the eviction policy, in tokens: 1/L per layer visit. */
  private clock = 0;
  private prefetch: boolean;
  private readonly step = new StepLoads();

  constructor(
    private config: ModelConfig,
    private cache: ExpertCache,
    private stats: StepStats,
    private opts: SchedulerOptions,
    /** The routing hook of the model (GpuModel.onRouting), read at each use. */
    private onRouting: () => ((layer: number, experts: Uint32Array) => void) | undefined,
  ) {
    this.prefetch = opts.prefetch;
    this.sets = new ExpertSets(config, cache, this, !opts.allResident);
  }

  /**
   * Whether a forward of T tokens goes layer by layer over the whole prompt (routing read back
   * per layer, each routed expert loaded once per layer per prompt): prefill under a budget, and
   * every step of the perLayerRouting baseline.
   */
  layerwise(T: number): boolean {
    return this.opts.perLayerRouting || (!this.opts.allResident && T > 1);
  }

  /** Most sequences one batched step holds: under a budget, as many as the smallest slot domain
   * holds one layer's routed experts for (at least 1). */
  maxLanes(maxBatch: number): number {
    if (this.opts.allResident) return maxBatch;
    return Math.max(1, Math.min(maxBatch, Math.floor(this.cache.minCapacity() / this.config.topK)));
  }

  /**
   * Before a pass is recorded: whether it routes among resident experts only (the session asked
   * for router masking and the cache is full; free slots are filled by normal loads first, so the
   * mask never leaves budget unused). A masked pass first makes the pinned context set resident
   * again (exact passes may have taken its slots).
   */
  startPass(masked: boolean): void {
    if (masked) this.sets.restore();
    this.masking = masked && this.cache.isFull;
  }

  /**
   * What a pass that started at layer `from` read back: the first layer that routed to an absent
   * expert (-1 when none did, or `missed` is null: no flags kept). When none missed, the layers
   * [counted, L) are final: counted as hits, and the guesses loaded for this pass scored and
   * settled. On a miss the caller hands the same to loadForMiss().
   */
  passResult(
    routing: Uint32Array,
    missed: Uint32Array | null,
    stride: number,
    counted: number,
    from: number,
    T: number,
    missOffset = 0,
  ): number {
    const l0 = missed === null ? -1 : this.firstMissedLayer(missed, from, missOffset);
    if (l0 < 0) {
      const L = this.config.numLayers;
      this.countHits(routing, stride, counted, L, T);
      this.scoreGuesses(routing, stride, counted, L, T);
      this.endStep();
    }
    return l0;
  }

  /** A step ended (every layer final) or was dropped: checks its loads against its routing. */
  endStep(): void {
    const s = this.step;
    if (s.loads > 0 || s.routed.size > 0) {
      this.stats.stepRouted += s.routed.size;
      if (s.loads > s.routed.size) this.stats.stepsOverRouted++;
    }
    this.startStep();
  }

  /** Guesses the step may still load: its hits less its wrong and unscored guesses (unbounded
   * without loadCap). */
  private guessAllowance(): number {
    if (!this.opts.loadCap) return Infinity;
    return this.step.hits.size - this.step.wrong - this.guessed.size;
  }

  /** A step starts: what an abandoned one routed and loaded is forgotten. */
  startStep(): void {
    this.guessed.clear();
    this.step.clear();
  }

  /** Layer l's final routing (keys) for the step's accounting. */
  private finalKeys(keys: number[]): void {
    if (this.opts.allResident) return;
    for (const k of keys) {
      this.step.routed.add(k);
      if (this.cache.isResident(k) && !this.step.loaded.has(k)) this.step.hits.add(k);
    }
  }

  /** The policy's clock now (without advancing it). */
  get now(): number {
    return this.clock;
  }

  tick(): number {
    this.clock += 1 / this.config.numLayers;
    return this.clock;
  }

  /** Distinct expert keys routed at layer l for the T rows of a routing block whose layers are
   * `stride` entries apart. */
  routedKeys(routing: Uint32Array, stride: number, l: number, T: number): number[] {
    const { numExperts: E, topK: K } = this.config;
    const base = l * stride * K;
    const keys = new Set<number>();
    for (let i = 0; i < T * K; i++) keys.add(l * E + routing[base + i]);
    return [...keys];
  }

  /** Hands a layer's final routing (experts [T*K], token-major) to onRouting. */
  emitRouting(routing: Uint32Array, stride: number, l: number, T: number): void {
    const onRouting = this.onRouting();
    if (!onRouting) return;
    const base = l * stride * this.config.topK;
    onRouting(l, routing.slice(base, base + T * this.config.topK));
  }

  /** Layers [from, to) ran with all their experts resident: hits for the policy and metrics. */
  countHits(
    routing: Uint32Array,
    stride: number,
    from: number,
    to: number,
    T: number,
  ): void {
    for (let l = from; l < to; l++) {
      this.emitRouting(routing, stride, l, T);
      // (with router masking, absent experts picked with weight 0 are not uses)
      const keys = this.routedKeys(routing, stride, l, T).filter((k) => this.cache.isResident(k));
      this.finalKeys(keys);
      this.cache.metrics.hits += keys.length;
      this.cache.touch(keys, this.tick());
    }
  }

  /** Loads key (counted in the stats); `evictPinned` as ExpertCache.load. */
  load(
    key: number,
    now: number,
    protect: Set<number>,
    speculative = false,
    evictPinned = false,
  ): boolean {
    const before = this.cache.loads;
    const ok = this.cache.load(key, now, protect, speculative, evictPinned);
    const n = this.cache.loads - before;
    this.stats.expertLoads += n;
    if (n > 0) {
      this.step.loads += n;
      this.step.loaded.add(key);
    }
    return ok;
  }

  /**
   * A pass that started at layer `from` found its first real miss at layer l0: counts the final
   * layers [counted, l0), then loads exactly what l0 routed to (its input was exact) and, with
   * prefetch, the experts later layers flagged on their approximate input.
   */
  loadForMiss(
    routing: Uint32Array,
    missed: Uint32Array,
    stride: number,
    counted: number,
    l0: number,
    from: number,
    T: number,
  ): void {
    const { numLayers: L, numExperts: E } = this.config;
    this.countHits(routing, stride, counted, l0, T);
    this.scoreGuesses(routing, stride, counted, l0, T);
    // layer l0 saw its true input: load exactly what it routed to
    this.emitRouting(routing, stride, l0, T);
    const routed = this.routedKeys(routing, stride, l0, T);
    this.finalKeys(routed);
    this.scoreLayerGuesses(l0, new Set(routed));
    const protect = this.protectedKeys(routed, l0);
    const now = this.tick();
    this.cache.readAhead(routed);
    for (const key of routed) {
      if (this.cache.isResident(key)) {
        this.cache.metrics.hits++;
        continue;
      }
      this.cache.metrics.misses++;
      if (l0 > 0 || from > 0) this.stats.prefetchMissed++;
      if (!this.load(key, now, protect, false, true)) {
        throw new ExpertBudgetError(`no slot free for layer ${l0}'s experts`);
      }
    }
    this.cache.touch(routed, now);
    // later layers ran on an approximate input: their flagged experts are good guesses, loaded
    // with prefetch (nearest layers first, within the step's allowance), and read ahead (into
    // the page cache only) either way; guesses of earlier repairs stay until their layer is final
    const flagged: number[] = [];
    for (let key = (l0 + 1) * E; key < L * E; key++) if (missed[key]) flagged.push(key);
    if (this.extraGuesses) {
      const more = this.extraGuesses(l0).filter((k) =>
        k >= (l0 + 1) * E && k < L * E && !missed[k] && !this.cache.isResident(k)
      );
      flagged.push(...new Set(more));
    }
    this.cache.readAhead(flagged);
    if (this.prefetch && !this.masking) {
      for (let l = l0 + 1; l < L; l++) {
        for (const key of this.routedKeys(routing, stride, l, T)) {
          if (this.cache.isResident(key)) protect.add(key);
        }
      }
      for (const key of flagged) {
        if (this.guessAllowance() <= 0 || !this.load(key, now, protect, true)) break;
        protect.add(key);
        this.guessed.add(key);
      }
    }
    this.stats.reruns++;
  }

  /**
   * The first layer from `from` on whose missed flags mean a real miss: any flag in exact mode;
   * with router masking only in a layer below its share of slots (elsewhere the flags come from
   * absent experts picked with weight 0, which add nothing).
   */
  firstMissedLayer(missed: Uint32Array, from: number, at = 0): number {
    const { numLayers: L, numExperts: E } = this.config;
    for (let l = from; l < L; l++) {
      if (this.masking && this.cache.residentIn(l).size >= this.layerQuota(l)) continue;
      for (let e = 0; e < E; e++) if (missed[at + l * E + e]) return l;
    }
    return -1;
  }

  /** With router masking, layer l's share of its domain's slots (split evenly among the
   * domain's layers): a layer with fewer resident experts routes exactly and loads (evicting
   * from layers above their share), one with at least this many routes among its resident
   * experts. */
  layerQuota(l: number): number {
    return Math.max(1, Math.floor(this.cache.capacityOf(l) / this.cache.domainLayers(l).length));
  }

  /** With router masking: up to their layerQuota resident experts of each other layer of l's
   * domain (the only ones l's loads can evict), kept so that loads for l evict from layers above
   * their share (empty when they and `need` more slots do not fit the domain together). */
  lastOfOtherLayers(l: number, need: number): number[] {
    if (!this.masking) return [];
    const keep: number[] = [];
    for (const other of this.cache.domainLayers(l)) {
      if (other === l) continue;
      const quota = this.layerQuota(other);
      let n = 0;
      for (const k of this.cache.residentIn(other)) {
        if (n++ === quota) break;
        keep.push(k);
      }
    }
    return keep.length + need <= this.cache.capacityOf(l) ? keep : [];
  }

  /** Keys a load for layer l must not evict: l's routed experts (and see lastOfOtherLayers). */
  protectedKeys(routed: number[], l: number): Set<number> {
    return new Set([...routed, ...this.lastOfOtherLayers(l, routed.length)]);
  }

  /** Prefetch accounting: the guesses of layers [from, to) scored against their final routing
   * (used ones are useful, the others wrong). */
  scoreGuesses(
    routing: Uint32Array,
    stride: number,
    from: number,
    to: number,
    T: number,
  ): void {
    if (this.guessed.size === 0) return;
    for (let l = from; l < to; l++) {
      this.scoreLayerGuesses(l, new Set(this.routedKeys(routing, stride, l, T)));
    }
  }

  /** The guesses of layer l against its final routed keys: a guess evicted before its layer
   * used it is wrong too (its load served no use; the use loads it again). */
  private scoreLayerGuesses(l: number, routed: Set<number>): void {
    const E = this.config.numExperts;
    for (const key of this.guessed) {
      if (Math.floor(key / E) !== l) continue;
      this.guessed.delete(key);
      if (routed.has(key) && this.cache.isResident(key)) this.stats.prefetchUseful++;
      else this.step.wrong++;
    }
  }

  /**
   * Prefill under a budget: the keys layer l's prompt routed to (idx [T*K]), in groups that fit
   * l's domain, resident experts first (they need no load). With router masking, a layer at its
   * share routes among resident experts only: absent picks carry weight 0 and need no load.
   */
  prefillGroups(l: number, idx: Uint32Array): number[][] {
    const E = this.config.numExperts;
    let keys = [...new Set(idx)].map((e) => l * E + e);
    if (this.masking && this.cache.residentIn(l).size >= this.layerQuota(l)) {
      keys = keys.filter((k) => this.cache.isResident(k));
    }
    keys.sort((x, y) => Number(this.cache.isResident(y)) - Number(this.cache.isResident(x)));
    this.stats.prefillRouted += keys.length;
    const groupSize = this.cache.capacityOf(l) - this.lastOfOtherLayers(l, 1).length;
    const groups: number[][] = [];
    for (let g = 0; g < keys.length; g += groupSize) groups.push(keys.slice(g, g + groupSize));
    return groups;
  }

  /** Makes a prefill group of layer l resident (the group fits: prefillGroups sized it). */
  loadGroup(l: number, group: number[], now: number): void {
    const protect = this.protectedKeys(group, l);
    this.cache.readAhead(group);
    for (const key of group) {
      if (this.cache.isResident(key)) {
        this.cache.metrics.hits++;
        continue;
      }
      this.cache.metrics.misses++;
      this.stats.prefillLoads++;
      if (!this.load(key, now, protect, false, true)) {
        throw new ExpertBudgetError(`no slot free for layer ${l}'s experts`);
      }
    }
    this.cache.touch(group, now);
  }
}
