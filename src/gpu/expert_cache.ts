/**
 * Which experts sit in the GPU's slots. Keys are l*E + e. Loading reads the expert's record from
 * its source (the packed file, memory-mapped), uploads it into a free or evicted slot and points
 * the GPU slot table at it. The eviction policy decides victims; keys the current step still
 * needs are protected.
 */
import type { ModelWeights } from "../types.ts";
import type { EvictionPolicy } from "../experts/policy.ts";
import { ExpertMetrics } from "../experts/metrics.ts";
import { ABSENT, type ExpertPool } from "./expert_pool.ts";

/** Where expert records come from (ExpertStore of a packed model, or a checkpoint's views). */
export interface ExpertSource {
  /** gate | up | down bytes of one expert, and whether they came from disk or the page cache. */
  read(layer: number, expert: number): {
    bytes: Uint8Array;
    source: "cold" | "warm" | null;
    ms: number;
  };
}

/** Experts straight from a checkpoint's (mapped) tensors, concatenated into one record. */
export class CheckpointExperts implements ExpertSource {
  constructor(private weights: ModelWeights) {}
  read(layer: number, expert: number) {
    const t0 = performance.now();
    const w = this.weights.layers[layer].expert(expert);
    const bytes = new Uint8Array(
      w.gate.bytes.byteLength + w.up.bytes.byteLength + w.down.bytes.byteLength,
    );
    bytes.set(w.gate.bytes, 0);
    bytes.set(w.up.bytes, w.gate.bytes.byteLength);
    bytes.set(w.down.bytes, w.gate.bytes.byteLength + w.up.bytes.byteLength);
    return { bytes, source: null, ms: performance.now() - t0 };
  }
}

export class ExpertBudgetError extends Error {
  override name = "ExpertBudgetError";
}

export class ExpertCache {
  readonly metrics = new ExpertMetrics();
  /** Expert records uploaded so far (every cause: demand, prefetch, preload). */
  loads = 0;
  /** Keys loaded speculatively and not yet used. */
  private prefetched = new Set<number>();
  private slotOf = new Map<number, number>();
  private free: number[] = [];
  /** Resident keys of each layer. */
  private byLayer: Set<number>[];

  constructor(
    readonly pool: ExpertPool,
    private source: ExpertSource,
    private policy: EvictionPolicy<number>,
  ) {
    for (let s = pool.totalSlots - 1; s >= 0; s--) this.free.push(s);
    this.byLayer = Array.from({ length: pool.config.numLayers }, () => new Set<number>());
  }

  /** Resident keys of layer l. */
  residentIn(l: number): ReadonlySet<number> {
    return this.byLayer[l];
  }

  get capacity(): number {
    return this.pool.totalSlots;
  }

  /** No free slot left: the next load evicts. */
  get isFull(): boolean {
    return this.free.length === 0;
  }

  get residentCount(): number {
    return this.slotOf.size;
  }

  isResident(key: number): boolean {
    return this.slotOf.has(key);
  }

  /** Marks keys as used at `now` (hits for the policy and the metrics). */
  touch(keys: Iterable<number>, now: number): void {
    for (const k of keys) {
      if (!this.slotOf.has(k)) continue;
      this.policy.touch(k, now);
      if (this.prefetched.delete(k)) this.metrics.prefetchHit++;
    }
  }

  /**
   * Makes `key` resident, evicting a policy victim outside `protect` if no slot is free.
   * Returns false when every slot is protected (the caller must not need more than capacity).
   */
  load(key: number, now: number, protect: Set<number>, speculative = false): boolean {
    if (this.slotOf.has(key)) return true;
    let slot = this.free.pop();
    if (slot === undefined) {
      const candidates = [...this.slotOf.keys()].filter((k) => !protect.has(k));
      const victim = this.policy.victim(candidates, now);
      if (victim === undefined) return false;
      slot = this.evict(victim);
    }
    const E = this.pool.config.numExperts;
    const layer = Math.floor(key / E);
    const expert = key % E;
    const t0 = performance.now();
    const rec = this.source.read(layer, expert);
    this.pool.uploadRecord(slot, rec.bytes);
    this.pool.assign(layer, expert, slot);
    const ms = performance.now() - t0;
    this.metrics.recordLoad(rec.source === "cold" ? "cold" : "warm", ms);
    this.metrics.bytesUploaded += rec.bytes.byteLength;
    this.loads++;
    this.slotOf.set(key, slot);
    this.byLayer[layer].add(key);
    this.policy.insert(key, now);
    if (speculative) {
      this.prefetched.add(key);
      this.metrics.prefetchIssued++;
    }
    return true;
  }

  private evict(key: number): number {
    const slot = this.slotOf.get(key)!;
    const E = this.pool.config.numExperts;
    this.pool.assign(Math.floor(key / E), key % E, ABSENT);
    this.slotOf.delete(key);
    this.byLayer[Math.floor(key / E)].delete(key);
    this.policy.remove(key);
    this.metrics.evictions++;
    if (this.prefetched.delete(key)) this.metrics.prefetchWasted++;
    return slot;
  }
}
