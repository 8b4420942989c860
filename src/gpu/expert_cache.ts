/**
 * Which experts sit in the GPU's slots. Keys are l*E + e. Loading reads the expert's record from
 * its source (the packed file, memory-mapped), uploads it into a free or evicted slot and points
 * the GPU slot table at it. The eviction policy decides victims; keys the current step still
 * needs are protected.
 *
 * Slots belong to domains (ExpertPool.domains: the slots of a layer's own pool groups, shared
 * with the layers of the same groups): an expert only ever takes a slot of its layer's domain,
 * free or evicted from a layer of that domain, so each layer's experts stay in the groups its
 * kernels dispatch.
 *
 * Pinned keys (ExpertCache.setPinned: a context expert set, src/gpu/expert_sets.ts) are never
 * victims, except of a load that asks for it when nothing else is left (a step's demand load: a
 * step must not fail for want of slots).
 *
 * A failed load leaves the cache as it was: the record is read (and checksum-verified) before any
 * slot is taken or any expert evicted, so a damaged record (ExpertChecksumError) changes nothing
 * and later loads of other experts work. The upload runs in WebGPU error scopes; WebGPU reports
 * their errors asynchronously, so an upload that failed drops its expert from the cache (slot
 * freed, table ABSENT) and raises ExpertUploadError from the next load() or from settle().
 */
import type { ModelWeights } from "../types.ts";
import type { EvictionPolicy } from "../experts/policy.ts";
import { ExpertMetrics } from "../experts/metrics.ts";
import { ABSENT, type ExpertPool } from "./expert_pool.ts";

/** Where expert records come from (ExpertStore of a packed model, or a checkpoint's views). */
export interface ExpertSource {
  /** gate | up | down bytes of one expert, and whether they came from disk or the page cache.
   * `transient`: the caller uploads the bytes at once, so they may be overwritten by the next
   * read (a source may then reuse one buffer). */
  read(layer: number, expert: number, transient?: boolean): {
    bytes: Uint8Array;
    source: "cold" | "warm" | null;
    ms: number;
  };
  /** Starts fetching the records of keys (layer * E + expert) that read() will soon ask for, in
   * the background; how many it started (ExpertStore.readAhead). */
  readAhead?(keys: number[]): number;
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

/** The GPU refused an expert's upload (out of memory, validation); the expert is not resident. */
export class ExpertUploadError extends Error {
  constructor(readonly layer: number, readonly expert: number, gpuMessage: string) {
    super(
      `uploading expert ${expert} of layer ${layer} into its GPU slot failed (${gpuMessage}); ` +
        `the expert was dropped from the cache: lower --expert-slots or --expert-cache-mib if ` +
        `the device is out of memory`,
    );
    this.name = "ExpertUploadError";
  }
}

export class ExpertCache {
  readonly metrics = new ExpertMetrics();
  /** Expert records uploaded so far (every cause: demand, prefetch, preload). */
  loads = 0;
  /** Keys eviction passes over (see setPinned); they need not be resident. */
  private pinnedKeys = new Set<number>();
  /** Keys loaded speculatively and not yet used. */
  private prefetched = new Set<number>();
  private slotOf = new Map<number, number>();
  /** Free slots of each domain, lowest on top (pop() takes it). */
  private free: number[][];
  /** Domain index of each layer. */
  private domainOfLayer: number[];
  /** Resident keys of each layer. */
  private byLayer: Set<number>[];
  /** Uploads whose error scopes have not answered yet. */
  private pending = new Set<Promise<void>>();
  /** The first upload that failed and has not been raised yet. */
  private uploadFailure: ExpertUploadError | null = null;

  constructor(
    readonly pool: ExpertPool,
    private source: ExpertSource,
    private policy: EvictionPolicy<number>,
  ) {
    this.free = pool.domains.map((d) => {
      const free: number[] = [];
      for (let s = d.firstSlot + d.slots - 1; s >= d.firstSlot; s--) free.push(s);
      return free;
    });
    this.domainOfLayer = Array.from({ length: pool.config.numLayers }, (_, l) => pool.domainOf(l));
    this.byLayer = Array.from({ length: pool.config.numLayers }, () => new Set<number>());
  }

  /** Resident keys of layer l. */
  residentIn(l: number): ReadonlySet<number> {
    return this.byLayer[l];
  }

  /** Every slot (all domains). */
  get capacity(): number {
    return this.pool.totalSlots;
  }

  /** Slots layer l's experts may take (its domain's): the room one step of l has. */
  capacityOf(layer: number): number {
    return this.pool.domains[this.domainOfLayer[layer]].slots;
  }

  /** The smallest domain's slots: what any one layer can count on. */
  minCapacity(): number {
    return Math.min(...this.pool.domains.map((d) => d.slots));
  }

  /** Layers whose experts share layer l's slots (l included), in order. */
  domainLayers(layer: number): readonly number[] {
    return this.pool.domains[this.domainOfLayer[layer]].layers;
  }

  /** No free slot left anywhere: the next load evicts. */
  get isFull(): boolean {
    return this.free.every((f) => f.length === 0);
  }

  get residentCount(): number {
    return this.slotOf.size;
  }

  isResident(key: number): boolean {
    return this.slotOf.has(key);
  }

  /** Asks the source to start fetching those of keys that are not resident, in order (a burst
   * of loads about to happen); how many reads it started. */
  readAhead(keys: Iterable<number>): number {
    if (this.source.readAhead === undefined) return 0;
    const absent = [...keys].filter((k) => !this.slotOf.has(k));
    const started = absent.length > 1 ? this.source.readAhead(absent) : 0;
    this.metrics.readAheads += started;
    return started;
  }

  /** Marks keys as used at `now` (hits for the policy and the metrics). */
  touch(keys: Iterable<number>, now: number): void {
    for (const k of keys) {
      if (!this.slotOf.has(k)) continue;
      this.policy.touch(k, now);
      if (this.prefetched.delete(k)) this.metrics.prefetchHit++;
    }
  }

  /** Free slots of layer l's domain. */
  freeIn(layer: number): number {
    return this.free[this.domainOfLayer[layer]].length;
  }

  /** Keys no load evicts unless it asks to (they stay pinned when a load that asked took them). */
  get pinned(): ReadonlySet<number> {
    return this.pinnedKeys;
  }

  /** Replaces the pinned keys (loads nothing: the caller makes them resident). */
  setPinned(keys: Iterable<number>): void {
    this.pinnedKeys = new Set(keys);
  }

  /** Free slots of every domain (the capacity minus the resident experts). */
  get freeCount(): number {
    return this.free.reduce((n, f) => n + f.length, 0);
  }

  /**
   * Makes `key` resident in a slot of its layer's domain, evicting a policy victim of that
   * domain's layers outside `protect` and the pinned keys if none is free (with `evictPinned`, a
   * pinned one when nothing else is left). Returns false when every slot of the domain is
   * protected (the caller must not need more than capacityOf(layer)) or pinned.
   * Throws, changing nothing, when the record cannot be read (ExpertChecksumError, ...), and
   * ExpertUploadError for an earlier upload the GPU refused.
   */
  load(
    key: number,
    now: number,
    protect: Set<number>,
    speculative = false,
    evictPinned = false,
  ): boolean {
    if (this.slotOf.has(key)) return true;
    this.raiseUploadFailure();
    const E = this.pool.config.numExperts;
    const layer = Math.floor(key / E);
    const expert = key % E;
    const domain = this.domainOfLayer[layer];
    const free = this.free[domain];
    let victim: number | undefined;
    if (free.length === 0) {
      // (in residency order, as the policy's ties expect)
      const inDomain = [...this.slotOf.keys()].filter((k) =>
        this.domainOfLayer[Math.floor(k / E)] === domain && !protect.has(k)
      );
      let candidates = inDomain.filter((k) => !this.pinnedKeys.has(k));
      if (candidates.length === 0 && evictPinned) candidates = inDomain;
      victim = this.policy.victim(candidates, now);
      if (victim === undefined) return false;
    }
    const t0 = performance.now();
    // read (and verify) before taking a slot: a record that cannot be read changes nothing
    const rec = this.source.read(layer, expert, true);
    this.pool.checkRecord(layer, rec.bytes);
    const slot = victim === undefined ? free.pop()! : this.evict(victim);
    let scope: Promise<string | null>;
    try {
      scope = this.pool.uploadRecord(slot, layer, rec.bytes);
    } catch (e) {
      free.push(slot);
      throw e;
    }
    this.pool.assign(layer, expert, slot);
    const ms = performance.now() - t0;
    this.metrics.recordLoad(rec.source, ms);
    this.metrics.bytesUploaded += rec.bytes.byteLength;
    this.loads++;
    this.slotOf.set(key, slot);
    this.byLayer[layer].add(key);
    this.policy.insert(key, now);
    if (speculative) {
      this.prefetched.add(key);
      this.metrics.prefetchIssued++;
    }
    this.watch(key, slot, scope);
    return true;
  }

  /**
   * Waits for the error scopes of every upload issued so far; throws ExpertUploadError when one
   * failed (its expert is then no longer resident).
   */
  async settle(): Promise<void> {
    await Promise.all(this.pending);
    this.raiseUploadFailure();
  }

  /** When an upload's scopes report an error: drop its expert, remember the error. */
  private watch(key: number, slot: number, scope: Promise<string | null>): void {
    const done: Promise<void> = scope.then((message) => {
      this.pending.delete(done);
      if (message === null) return;
      const E = this.pool.config.numExperts;
      this.uploadFailure ??= new ExpertUploadError(Math.floor(key / E), key % E, message);
      try {
        if (this.slotOf.get(key) === slot) {
          this.free[this.domainOfLayer[Math.floor(key / E)]].push(this.unassign(key));
        }
      } catch {
        // the device is gone (destroyed or lost): nothing is uploaded any more
      }
    });
    this.pending.add(done);
  }

  private raiseUploadFailure(): void {
    const failure = this.uploadFailure;
    if (failure === null) return;
    this.uploadFailure = null;
    throw failure;
  }

  private evict(key: number): number {
    this.metrics.evictions++;
    if (this.prefetched.has(key)) this.metrics.prefetchWasted++;
    return this.unassign(key);
  }

  /** Takes key out of the slot table, the policy and the bookkeeping; returns its slot. */
  private unassign(key: number): number {
    const slot = this.slotOf.get(key)!;
    const E = this.pool.config.numExperts;
    this.pool.assign(Math.floor(key / E), key % E, ABSENT);
    this.slotOf.delete(key);
    this.byLayer[Math.floor(key / E)].delete(key);
    this.policy.remove(key);
    this.prefetched.delete(key);
    return slot;
  }
}
