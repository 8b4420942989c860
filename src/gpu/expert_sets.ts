/**
 * Context-chosen expert sets (the seed's "SAGE" idea: choose the experts from the context). A
 * sequence that asks for `expertSet: "context"` has its prompt prefilled exactly (every routed
 * expert loaded, layer by layer); the prompt's routing then ranks each layer's experts by how many
 * of its tokens routed to them, and the first layerQuota(l) of that ranking become layer l's set:
 *
 * - with router masking the set is pinned: made resident (missing experts loaded, others of the
 *   domain evicted) and never evicted by masked passes, prefetch or another set while a sequence
 *   using it is alive, so every layer sits at its share and decode routes among the set with no
 *   load and no rerun (approximate, like masking among whatever LRU left resident, but chosen for
 *   this context). Free slots left over are filled with the next experts of the ranking so the
 *   cache is full (masking starts only then, see GpuModel.startPass);
 * - in exact mode the set is only the cache's starting set: loaded and touched (the LRU order
 *   then keeps it longest), not pinned. Exact outputs never depend on what is resident, so they
 *   stay bit-identical; pinning would only take slots from the sequence's own loads.
 *
 * Several sequences: the slots are one pool, and a pinned set already fills every layer's share,
 * so sets of different sequences cannot be pinned side by side. The pinned set is therefore one
 * set per layer, chosen from the prompts of every live masked context sequence together (each
 * prompt's routing shares, scores / its tokens, summed; with one sequence, exactly its own set).
 * It is chosen again when such a sequence's prefill ends (its prompt joins) and when one is freed
 * (its prompt leaves; what the new choice lacks is loaded before the next masked pass).
 *
 * The set comes from the tokens the prefill computes: with prompt-prefix reuse (a session started
 * on a slab caching part of its prompt), only the uncached rest of the prompt.
 *
 * Steps keep precedence: a step's demand load whose domain has no unpinned victim takes a pinned
 * slot rather than failing (strict pins would make every exact request fail while a set fills the
 * cache; a masked step at every layer's share loads nothing, so in practice these are exact
 * sequences' loads), and the pinned set is loaded back before the next masked pass (restore()).
 * So a masked context sequence decodes with zero loads unless exact sequences run alongside it.
 *
 * Keys are l*E + e (as in the expert cache).
 */
import type { ExpertSetMode, ModelConfig } from "../types.ts";
import type { ExpertCache } from "./expert_cache.ts";
import { READ_AHEAD_PER_CALL } from "../experts/store.ts";

export type { ExpertSetMode };

/** The modes a run or a request may ask for ("lru": no set, the cache's policy alone). */
export const EXPERT_SET_MODES: readonly ExpertSetMode[] = ["context", "lru"];

export function isExpertSetMode(v: unknown): v is ExpertSetMode {
  return EXPERT_SET_MODES.includes(v as ExpertSetMode);
}

/**
 * How much one layer's prompt routed to each of its `numExperts` experts: from `routed` (the
 * layer's top-k ids of every token, token-major) the count of tokens that picked each expert, or,
 * with `weights` (the same layout), the summed routing weights.
 */
export function routingScores(
  routed: ArrayLike<number>,
  numExperts: number,
  weights?: ArrayLike<number>,
): Float64Array {
  if (weights !== undefined && weights.length !== routed.length) {
    throw new RangeError(`${weights.length} routing weights for ${routed.length} routed ids`);
  }
  const scores = new Float64Array(numExperts);
  for (let i = 0; i < routed.length; i++) {
    const e = routed[i];
    if (!Number.isInteger(e) || e < 0 || e >= numExperts) {
      throw new RangeError(`routed expert ${e} is outside [0, ${numExperts})`);
    }
    scores[e] += weights === undefined ? 1 : weights[i];
  }
  return scores;
}

/** Every expert id, highest score first, ties (experts never routed to included) by lower id. */
export function rankExperts(scores: ArrayLike<number>): number[] {
  return Array.from({ length: scores.length }, (_, e) => e)
    .sort((a, b) => scores[b] - scores[a] || a - b);
}

/**
 * The set of one layer: the `quota` best-ranked experts (rankExperts), in rank order. It always
 * holds min(quota, E) experts, experts the prompt never routed to filling it by id: a layer below
 * its share would route exactly under masking and load, which a set exists to avoid.
 */
export function chooseExpertSet(scores: ArrayLike<number>, quota: number): number[] {
  if (!Number.isInteger(quota) || quota < 0) {
    throw new RangeError(`a set's quota is a whole number >= 0, got ${quota}`);
  }
  return rankExperts(scores).slice(0, quota);
}

/**
 * Per layer, the set chosen from a prefill's routing: `routing[l]` is layer l's top-k ids of every
 * prompt token (GpuModel.onRouting's layout), `quotas[l]` its share of the slots.
 */
export function chooseExpertSets(
  routing: readonly ArrayLike<number>[],
  numExperts: number,
  quotas: readonly number[],
): number[][] {
  if (routing.length !== quotas.length) {
    throw new RangeError(`routing of ${routing.length} layers for ${quotas.length} quotas`);
  }
  return routing.map((r, l) => chooseExpertSet(routingScores(r, numExperts), quotas[l]));
}

/** What ExpertSets needs from the expert scheduler (src/gpu/expert_scheduler.ts). */
export interface SetResidency {
  /** Layer l's share of its domain's slots (ExpertScheduler.layerQuota). */
  layerQuota(l: number): number;
  /** Loads key (counted in the model's stats), never evicting a pinned or protected key; false
   * when no slot of its domain can be taken. */
  load(key: number, now: number, protect: Set<number>): boolean;
  /** The eviction policy's clock now. */
  readonly now: number;
}

/** One sequence that asked for a context set. */
interface Member {
  /** Whether it routes among resident experts only (then its set is pinned). */
  masked: boolean;
  /** Per layer its prompt's routing shares (scores / tokens), once its prefill was seen. */
  shares: Float64Array[] | null;
}

/** The context sets of a model's sequences, by KV slab, and the pinned set they share. */
export class ExpertSets {
  private members = new Map<number, Member>();

  constructor(
    private config: ModelConfig,
    private cache: ExpertCache,
    private res: SetResidency,
    /** False when every expert is resident: sets then change nothing and are not kept. */
    private enabled: boolean,
  ) {}

  /** A sequence on `slab` starts; with "context" its set is chosen after its prefill. */
  open(slab: number, mode: ExpertSetMode, masked: boolean): void {
    this.close(slab);
    if (this.enabled && mode === "context") this.members.set(slab, { masked, shares: null });
  }

  /** Whether the sequence on `slab` waits for its prefill to choose its set: that prefill runs
   * exactly (unmasked, layer by layer) so its routing is the model's own. */
  pending(slab: number): boolean {
    return this.members.get(slab)?.shares === null;
  }

  /**
   * The prefill of the sequence on `slab` routed `routing` ([L][T*K] ids): its set is chosen and
   * applied (pinned with the other masked members' when masked, else loaded as a starting set).
   */
  prefilled(slab: number, routing: readonly Uint32Array[]): void {
    const m = this.members.get(slab);
    if (m === undefined || m.shares !== null) return;
    const E = this.config.numExperts;
    m.shares = routing.map((r) => {
      const s = routingScores(r, E);
      const tokens = r.length / this.config.topK;
      return s.map((x) => x / tokens);
    });
    if (m.masked) {
      this.repin();
      this.restore();
    } else {
      this.warm(this.sets(m.shares));
    }
  }

  /** The sequence on `slab` ended: its prompt no longer counts for the pinned set. */
  close(slab: number): void {
    const m = this.members.get(slab);
    if (m === undefined) return;
    this.members.delete(slab);
    // (the new choice is loaded by the next masked pass's restore(), inside the GPU's turn)
    if (m.masked && m.shares !== null) this.repin();
  }

  /** Layer l's pinned set (empty when no masked context sequence is alive). */
  pinnedIn(l: number): number[] {
    const E = this.config.numExperts;
    return [...this.cache.pinned].filter((k) => Math.floor(k / E) === l).map((k) => k % E)
      .sort((a, b) => a - b);
  }

  /**
   * Before a masked pass: loads the pinned experts that are not resident (exact passes took their
   * slots, or the set changed), then fills free slots so the cache is full and masking applies.
   */
  restore(): void {
    const pinned = this.cache.pinned;
    if (pinned.size === 0) return;
    const now = this.res.now;
    const none = new Set<number>();
    for (const key of pinned) {
      // (pinned keys are never victims, and a domain's pinned set fits its slots: each layer
      // pins its share)
      if (!this.cache.isResident(key) && !this.res.load(key, now, none)) {
        throw new Error(
          `no unpinned slot for pinned expert ${key}: the pinned set outgrew a domain`,
        );
      }
    }
    this.cache.touch(pinned, now);
    if (this.cache.freeCount > 0) this.fill(this.sets(this.pinnedShares(), Infinity), now);
  }

  /** Per layer the ranking cut at its quota (or at `limit` when given). */
  private sets(shares: readonly Float64Array[], limit?: number): number[][] {
    return shares.map((s, l) =>
      chooseExpertSet(s, Math.min(limit ?? this.res.layerQuota(l), s.length))
    );
  }

  /** Summed shares of the masked members whose prefill was seen, per layer. */
  private pinnedShares(): Float64Array[] {
    const { numLayers: L, numExperts: E } = this.config;
    const sum = Array.from({ length: L }, () => new Float64Array(E));
    for (const m of this.members.values()) {
      if (!m.masked || m.shares === null) continue;
      m.shares.forEach((s, l) => s.forEach((x, e) => sum[l][e] += x));
    }
    return sum;
  }

  /** Chooses the pinned set again from the live masked members (none: nothing pinned). */
  private repin(): void {
    const E = this.config.numExperts;
    const live = [...this.members.values()].some((m) => m.masked && m.shares !== null);
    const sets = live ? this.sets(this.pinnedShares()) : [];
    this.cache.setPinned(sets.flatMap((set, l) => set.map((e) => l * E + e)));
  }

  /** Exact mode: loads a set as the cache's starting set, as far as unpinned slots allow. */
  private warm(sets: number[][]): void {
    const E = this.config.numExperts;
    const keys = sets.flatMap((set, l) => set.map((e) => l * E + e));
    const protect = new Set(keys);
    const now = this.res.now;
    // (a load that finds its domain pinned or protected is skipped: a starting set is a hint)
    for (const [i, key] of keys.entries()) {
      if (i % READ_AHEAD_PER_CALL === 0) {
        this.cache.readAhead(keys.slice(i, i + 2 * READ_AHEAD_PER_CALL));
      }
      if (!this.cache.isResident(key)) this.res.load(key, now, protect);
    }
    this.cache.touch(keys, now);
  }

  /** Fills free slots with the next-ranked experts of each domain's layers, in turn. */
  private fill(rankings: number[][], now: number): void {
    const E = this.config.numExperts;
    const none = new Set<number>();
    for (let rank = 0; rank < E && this.cache.freeCount > 0; rank++) {
      for (let l = 0; l < rankings.length; l++) {
        const key = l * E + rankings[l][rank];
        if (this.cache.freeIn(l) === 0 || this.cache.isResident(key)) continue;
        this.res.load(key, now, none);
      }
    }
  }
}
