/**
 * Measurements of the expert cache's data path, each on a packed model:
 *   - rawSequentialRead: experts.bin read front to back with Deno.FsFile.read after its pages
 *     were dropped from the page cache (the disk's speed as this process sees it);
 *   - runtimeLoad: what ExpertCache.load does per miss, for a list of experts: ExpertStore.read
 *     (mincore, fault-in, xxhash64 on a record's first read) + ExpertPool.uploadRecord, drained
 *     with queue.onSubmittedWorkDone; cold (page cache dropped first) or warm;
 *   - writeBufferBaseline: heap copies of some of the same records (ordinary ArrayBuffers, too
 *     many bytes for any CPU cache) written with device.queue.writeBuffer into the same slots,
 *     as many times: the upload with no file behind it;
 *   - decodeRun: greedy decode tokens/s of a GpuModel with a given expert budget and policy, with
 *     the cache's hit rate and the model's prefetch and readback counters.
 * Rates are bytes / seconds in GB/s (1e9 B).
 */
import type { ExpertStore } from "../src/experts/store.ts";
import { ExpertPool, type ExpertPoolOptions, uniformLayouts } from "../src/gpu/expert_pool.ts";
import type { PackedModel } from "../src/packed_weights.ts";
import { GpuModel } from "../src/gpu/model.ts";
import type { Gpu } from "../src/gpu/device.ts";
import {
  type Access,
  type EvictionPolicy,
  LrfuPolicy,
  LruPolicy,
  policyByName,
  simulate,
  simulateOptimal,
} from "../src/experts/policy.ts";
import process from "node:process";
import { greedyToken } from "../src/greedy.ts";
import { mulberry32 } from "../weights/fixture.ts";
import type { ModelConfig } from "../src/types.ts";

/** Chunk of the raw sequential read: large enough that per-call cost vanishes (Deno caps one
 * read at what the buffer holds; the kernel's readahead works ahead of it). */
export const RAW_READ_CHUNK_BYTES = 64 << 20;
/** Uploads per empty submit in runtimeLoad and writeBufferBaseline: one layer's top-k misses
 * arrive together in a decode step before the step's own submit flushes them. */
const UPLOADS_PER_SUBMIT = 8;

/** A transfer rate measured once. */
export interface Rate {
  bytes: number;
  seconds: number;
  gbps: number;
}

function rate(bytes: number, seconds: number): Rate {
  return { bytes, seconds, gbps: bytes / seconds / 1e9 };
}

/** What dropping experts.bin from the page cache achieved, by mincore over every record. */
export interface DropCheck {
  /** posix_fadvise/madvise reported success. */
  adviceOk: boolean;
  records: number;
  /** Records still fully in the page cache afterwards; null when mincore is unavailable. */
  cachedAfter: number | null;
}

/** Drops experts.bin from the page cache, then counts records mincore still sees cached. */
export function dropPageCache(store: ExpertStore, c: ModelConfig): DropCheck {
  const adviceOk = store.dropPageCache();
  let cachedAfter: number | null = 0;
  for (let l = 0; l < c.numLayers; l++) {
    for (let e = 0; e < c.numExperts; e++) {
      const cached = store.isCached(l, e);
      if (cached === null) cachedAfter = null;
      else if (cached && cachedAfter !== null) cachedAfter++;
    }
  }
  return { adviceOk, records: c.numLayers * c.numExperts, cachedAfter };
}

/** Raw read after a drop: the whole file, sequentially, in RAW_READ_CHUNK_BYTES reads. */
export async function rawSequentialRead(
  store: ExpertStore,
  c: ModelConfig,
): Promise<Rate & { drop: DropCheck }> {
  const drop = dropPageCache(store, c);
  const buf = new Uint8Array(RAW_READ_CHUNK_BYTES);
  const f = await Deno.open(store.path, { read: true });
  let bytes = 0;
  const t0 = performance.now();
  try {
    for (;;) {
      const n = await f.read(buf);
      if (n === null) break;
      bytes += n;
    }
  } finally {
    f.close();
  }
  return { ...rate(bytes, (performance.now() - t0) / 1000), drop };
}

/** The records of keys read after a drop, one read(2) each into one reused buffer, in the
 * order given: what the disk gives a cold load's reads with no runtime around them (random
 * records, unlike rawSequentialRead, get little from the kernel's readahead). */
export function randomRecordRead(
  store: ExpertStore,
  c: ModelConfig,
  keys: number[],
): Rate & { drop: DropCheck } {
  const drop = dropPageCache(store, c);
  const records = keys.map((k) => store.index.records[k]);
  const buf = new Uint8Array(Math.max(...records.map((r) => r.length)));
  const f = Deno.openSync(store.path, { read: true });
  let bytes = 0;
  const t0 = performance.now();
  try {
    for (const r of records) {
      f.seekSync(r.offset, Deno.SeekMode.Start);
      for (let done = 0; done < r.length;) {
        const n = f.readSync(buf.subarray(done, r.length));
        if (n === null || n === 0) throw new Error(`${store.path}: short read`);
        done += n;
      }
      bytes += r.length;
    }
  } finally {
    f.close();
  }
  return { ...rate(bytes, (performance.now() - t0) / 1000), drop };
}

/** n distinct (layer, expert) keys (l * E + e) in a seeded random order, as misses arrive. */
export function sampleKeys(c: ModelConfig, n: number, seed: number): number[] {
  const all = Array.from({ length: c.numLayers * c.numExperts }, (_, i) => i);
  const rand = mulberry32(seed);
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return all.slice(0, n);
}

/** A pool of `slots` expert slots on the device, for the load measurements. */
export function loadPool(
  gpu: Gpu,
  c: ModelConfig,
  slots: number,
  opts: ExpertPoolOptions = {},
): ExpertPool {
  return new ExpertPool(gpu.device, c, uniformLayouts(c, "BF16", "BF16"), slots, opts);
}

/** runtimeLoad's result: the rate, where mincore said the bytes were, time inside the store. */
export interface LoadResult extends Rate {
  experts: number;
  cold: number;
  warm: number;
  /** Seconds inside ExpertStore.read (mincore, fault-in, checksum), the rest being upload. */
  readSeconds: number;
}

/** Reads and uploads each key into slot i % pool.totalSlots, then drains the queue. With
 * `readAhead` (as ExpertCache does for a layer's misses) each burst of UPLOADS_PER_SUBMIT keys
 * is first handed to ExpertStore.readAhead. */
export async function runtimeLoad(
  store: ExpertStore,
  pool: ExpertPool,
  device: GPUDevice,
  keys: number[],
  readAhead = true,
): Promise<LoadResult> {
  const E = pool.config.numExperts;
  let bytes = 0, cold = 0, warm = 0, readMs = 0;
  const t0 = performance.now();
  for (let i = 0; i < keys.length; i++) {
    if (readAhead && i % UPLOADS_PER_SUBMIT === 0) {
      store.readAhead(keys.slice(i, i + UPLOADS_PER_SUBMIT));
    }
    const r = store.read(Math.floor(keys[i] / E), keys[i] % E, true); // as ExpertCache.load
    readMs += r.ms;
    if (r.source === "cold") cold++;
    if (r.source === "warm") warm++;
    pool.uploadRecord(i % pool.totalSlots, 0, r.bytes);
    bytes += r.bytes.byteLength;
    if ((i + 1) % UPLOADS_PER_SUBMIT === 0) device.queue.submit([]);
  }
  device.queue.submit([]);
  await device.queue.onSubmittedWorkDone();
  const seconds = (performance.now() - t0) / 1000;
  return { ...rate(bytes, seconds), experts: keys.length, cold, warm, readSeconds: readMs / 1000 };
}

/** Heap copies of the records of keys (ordinary ArrayBuffers, no file behind them). */
export function heapCopies(store: ExpertStore, E: number, keys: number[]): Uint8Array[] {
  return keys.map((k) => store.read(Math.floor(k / E), k % E).bytes.slice());
}

/** n writeBuffer calls of buffers[i % buffers.length] into slot i % pool.totalSlots, then
 * drains the queue. */
export async function writeBufferBaseline(
  pool: ExpertPool,
  device: GPUDevice,
  buffers: Uint8Array[],
  n: number,
): Promise<Rate> {
  const at = (slot: number) => {
    const p = pool.pools.find((p) => slot >= p.firstSlot && slot < p.firstSlot + p.slots)!;
    if (!p.buffer) throw new Error("the writeBuffer baseline needs pool buffers, not textures");
    return { buffer: p.buffer, offset: (slot - p.firstSlot) * pool.slotBytes };
  };
  let bytes = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const { buffer, offset } = at(i % pool.totalSlots);
    const src = buffers[i % buffers.length];
    device.queue.writeBuffer(buffer, offset, src as Uint8Array<ArrayBuffer>);
    bytes += src.byteLength;
    if ((i + 1) % UPLOADS_PER_SUBMIT === 0) device.queue.submit([]);
  }
  device.queue.submit([]);
  await device.queue.onSubmittedWorkDone();
  return rate(bytes, (performance.now() - t0) / 1000);
}

/** This process's memory from /proc/self/status, in bytes (0 where a field is missing). */
export interface ProcMemory {
  /** Peak resident set (VmHWM). */
  peak: number;
  rss: number;
  /** Anonymous memory (heap, llvmpipe's GPU buffers, staging copies). */
  anon: number;
  /** File-backed pages mapped by this process (the mapped pack: page cache, reclaimable). */
  file: number;
}

/** Reads ProcMemory now. */
export function procMemory(): ProcMemory {
  const text = Deno.readTextFileSync("/proc/self/status");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0);
  return {
    peak: kb("VmHWM") * 1024,
    rss: kb("VmRSS") * 1024,
    anon: kb("RssAnon") * 1024,
    file: kb("RssFile") * 1024,
  };
}

/** One decode configuration: every expert resident, or a budget under a policy. */
export interface DecodeConfig {
  label: string;
  /** Fraction of L x E experts given slots; null = all resident. */
  fraction: number | null;
  policy: "lru" | "lrfu";
  /** Record the routing trace (every policy touch after open), for analyseTrace. */
  trace?: boolean;
}

/** How the decode steps are run. */
export interface DecodePlan {
  prompt: number[];
  warmupSteps: number;
  steps: number;
  maxContext: number;
}

/** What decodeRun measured over the timed steps (counters are deltas over those steps). */
export interface DecodeResult {
  label: string;
  policy: string;
  slots: number;
  fraction: number;
  openS: number;
  /** Memory right after the model opened (the all-resident model is the peak). */
  memAfterOpen: ProcMemory;
  tokPerS: number;
  medianMs: number;
  hitRate: number;
  hits: number;
  misses: number;
  /** Experts uploaded per token: misses and prefetches. */
  loadsPerToken: number;
  readbacksPerToken: number;
  rerunsPerToken: number;
  prefetchIssued: number;
  /** Prefetched experts later used (ExpertCache's count: any use of a prefetched key). */
  prefetchHit: number;
  /** GpuModel.stats' count of useful prefetches (see prefetchPrecision). */
  prefetchUseful: number;
  prefetchMissed: number;
  /**
   * prefetchHit / prefetchIssued; null when nothing was prefetched. prefetchHit, not
   * stats.prefetchUseful: GpuModel.decodeOptimistic does not credit a guessed expert that is
   * already resident when its layer is the one that missed, so prefetchUseful undercounts.
   */
  prefetchPrecision: number | null;
  /** prefetchHit / (prefetchHit + stats.prefetchMissed); null when neither happened. */
  prefetchRecall: number | null;
  /** The same two from GpuModel.stats as they stand: prefetchUseful / prefetchIssued, and
   * prefetchUseful / (prefetchUseful + prefetchMissed). */
  statsPrecision: number | null;
  statsRecall: number | null;
  /** Median time of one warm load (read + upload) in the timed steps, ms. */
  warmLoadP50Ms: number;
  /** Loads whose record was not in the page cache (0 when experts.bin was warmed first). */
  coldLoads: number;
  /** Lookups that hit without a prefetch's help: (hits - prefetchHit) / lookups. */
  hitRateNoPrefetch: number;
  /** This process's user + system CPU time per timed step (llvmpipe's threads included). */
  cpuMsPerToken: number;
  /** Every generated token (warm-up and timed), to compare outputs across budgets. */
  tokens: number[];
  /** Routing trace (cfg.trace): (key, now) of every routed expert, prefill included. */
  trace?: Access<number>[];
}

/** Wraps a policy and, while `recording`, logs every touch: the routing of each layer visit. */
class TracingPolicy<K> implements EvictionPolicy<K> {
  readonly trace: Access<K>[] = [];
  recording = false;
  constructor(private inner: EvictionPolicy<K>) {}
  get name(): string {
    return this.inner.name;
  }
  insert(key: K, now: number): void {
    this.inner.insert(key, now);
  }
  touch(key: K, now: number): void {
    if (this.recording) this.trace.push({ key, now });
    this.inner.touch(key, now);
  }
  remove(key: K): void {
    this.inner.remove(key);
  }
  victim(candidates: Iterable<K>, now: number): K | undefined {
    return this.inner.victim(candidates, now);
  }
}

/** The median of a non-empty list. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Slots for a fraction of every layer's experts, at least one layer's top-k. */
export function budgetSlots(c: ModelConfig, fraction: number | null): number {
  const total = c.numLayers * c.numExperts;
  if (fraction === null) return total;
  return Math.max(c.topK, Math.round(fraction * total));
}

/**
 * Opens a GpuModel over the packed model with cfg's budget on its own device (destroyed after,
 * with everything on it), prefills the prompt, runs warm-up steps, then times plan.steps greedy
 * decode steps.
 */
export async function decodeRun(
  packed: PackedModel,
  openDevice: () => Promise<Gpu>,
  cfg: DecodeConfig,
  plan: DecodePlan,
): Promise<DecodeResult> {
  const c = packed.config;
  const gpu = await openDevice();
  const slots = budgetSlots(c, cfg.fraction);
  const tracing = cfg.trace ? new TracingPolicy(policyByName<number>(cfg.policy)) : null;
  const policy = tracing ?? policyByName<number>(cfg.policy);
  let t0 = performance.now();
  const model = await GpuModel.open(packed.weights, {
    gpu,
    maxContext: plan.maxContext,
    expertSlots: slots,
    expertSource: packed.experts,
    policy,
    prefetch: true,
  });
  await gpu.device.queue.onSubmittedWorkDone();
  const openS = (performance.now() - t0) / 1000;
  const memAfterOpen = procMemory();
  const session = model.newSession();
  try {
    const tokens: number[] = [];
    if (tracing) tracing.recording = true;
    let [logits] = await session.forward(plan.prompt, { lastOnly: true });
    const next = async () => {
      tokens.push(greedyToken(logits));
      [logits] = await session.forward([tokens[tokens.length - 1]], { lastOnly: true });
    };
    for (let i = 0; i < plan.warmupSteps; i++) await next();
    model.cache.metrics.reset();
    const s0 = { ...model.stats };
    const times: number[] = [];
    const cpu0 = process.cpuUsage();
    t0 = performance.now();
    for (let i = 0; i < plan.steps; i++) {
      const ts = performance.now();
      await next();
      times.push(performance.now() - ts);
    }
    const totalS = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    tokens.push(greedyToken(logits));
    const m = model.cache.metrics.snapshot();
    const st = model.stats;
    const useful = st.prefetchUseful - s0.prefetchUseful;
    const missed = st.prefetchMissed - s0.prefetchMissed;
    const n = plan.steps;
    return {
      label: cfg.label,
      policy: policy.name,
      slots,
      fraction: slots / (c.numLayers * c.numExperts),
      openS,
      memAfterOpen,
      tokPerS: n / totalS,
      medianMs: median(times),
      hitRate: m.hitRate,
      hits: m.hits,
      misses: m.misses,
      loadsPerToken: m.bytesUploaded / model.pool.expertBytes / n,
      readbacksPerToken: (st.readbacks - s0.readbacks) / n,
      rerunsPerToken: (st.reruns - s0.reruns) / n,
      prefetchIssued: m.prefetchIssued,
      prefetchHit: m.prefetchHit,
      prefetchUseful: useful,
      prefetchMissed: missed,
      prefetchPrecision: m.prefetchIssued > 0 ? m.prefetchHit / m.prefetchIssued : null,
      prefetchRecall: m.prefetchHit + missed > 0 ? m.prefetchHit / (m.prefetchHit + missed) : null,
      statsPrecision: m.prefetchIssued > 0 ? useful / m.prefetchIssued : null,
      statsRecall: useful + missed > 0 ? useful / (useful + missed) : null,
      warmLoadP50Ms: m.latency.warm.p50Ms,
      coldLoads: m.latency.cold.count,
      hitRateNoPrefetch: m.hits + m.misses > 0 ? (m.hits - m.prefetchHit) / (m.hits + m.misses) : 0,
      cpuMsPerToken: (cpu.user + cpu.system) / 1000 / n,
      tokens,
      ...(tracing ? { trace: tracing.trace } : {}),
    };
  } finally {
    session.free();
    model.destroy();
    gpu.device.destroy();
  }
}

/** What the resident run's routing says about locality, and what policies could do with it. */
export interface TraceAnalysis {
  lookups: number;
  /** Mean share of a decode step's experts (per layer) that the previous step also used. */
  reuse: number;
  /** What a uniform, independent router would give: K / E. */
  uniformReuse: number;
  /** Hit rates replaying the trace (no prefetch) per slot count: LRU, LRFU, Belady's optimum. */
  simulated: { slots: number; lru: number; lrfu: number; optimal: number }[];
}

/** Reuse between consecutive decode steps and simulated hit rates of the routing trace. */
export function analyseTrace(
  trace: Access<number>[],
  c: ModelConfig,
  slotCounts: number[],
): TraceAnalysis {
  const visits = new Map<number, number[]>(); // now -> keys of one layer visit
  for (const a of trace) {
    const v = visits.get(a.now);
    if (v) v.push(a.key);
    else visits.set(a.now, [a.key]);
  }
  const prevOfLayer = new Map<number, Set<number>>();
  let shared = 0, counted = 0;
  for (const keys of visits.values()) {
    const layer = Math.floor(keys[0] / c.numExperts);
    const prev = prevOfLayer.get(layer);
    const decode = keys.length <= c.topK; // a prefill visit routes several tokens at once
    if (decode && prev !== undefined && prev.size <= c.topK) {
      shared += keys.filter((k) => prev.has(k)).length / keys.length;
      counted++;
    }
    prevOfLayer.set(layer, new Set(keys));
  }
  const hitRate = (r: { hits: number; misses: number }) => r.hits / (r.hits + r.misses);
  return {
    lookups: trace.length,
    reuse: counted > 0 ? shared / counted : 0,
    uniformReuse: c.topK / c.numExperts,
    simulated: slotCounts.map((slots) => ({
      slots,
      lru: hitRate(simulate(trace, slots, new LruPolicy<number>())),
      lrfu: hitRate(simulate(trace, slots, new LrfuPolicy<number>())),
      optimal: hitRate(simulateOptimal(trace, slots)),
    })),
  };
}
