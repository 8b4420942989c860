/**
 * Counters of the expert cache, read by the server's /metrics and by the benches: hits, misses,
 * evictions, prefetches (issued / used / wasted), bytes uploaded to the GPU, and load latencies
 * split by where the expert's bytes came from.
 */

/**
 * Where an expert's bytes were when it was needed:
 *   "cold": not in the OS page cache (read from disk),
 *   "warm": in the page cache (a memory copy),
 *   "unknown": read where the page cache cannot be asked (pread mode, the compiled binary),
 *   "resident": already in a GPU slot (no load at all).
 */
export type LoadSource = "cold" | "warm" | "unknown" | "resident";

/** The sources a load can come from, in the order figures list them. */
export const LOAD_SOURCES = ["cold", "warm", "unknown"] as const;

const MS_PER_SECOND = 1000;

/** Latency samples kept per source: enough for stable p99 over the recent past, bounded memory. */
export const LATENCY_WINDOW = 4096;

/** Summary of one source's latency samples, in milliseconds. */
export interface LatencySummary {
  /** Samples ever recorded. */
  count: number;
  /** Their total, in milliseconds (all samples, not only the window): the time decode stood still
   * waiting for experts of this source. */
  totalMs: number;
  /** Over the last LATENCY_WINDOW samples (0 when there are none). */
  meanMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** A plain-object copy of every counter, safe to JSON.stringify. */
export interface ExpertMetricsSnapshot {
  hits: number;
  misses: number;
  /** hits / (hits + misses), 0 before any lookup. */
  hitRate: number;
  evictions: number;
  prefetchIssued: number;
  /** Prefetched experts that were used before being evicted. */
  prefetchHit: number;
  /** Prefetched experts evicted (or dropped) without being used. */
  prefetchWasted: number;
  bytesUploaded: number;
  /** Records whose reading the cache started ahead of their load (ExpertStore.readAhead). */
  readAheads: number;
  latency: Record<LoadSource, LatencySummary>;
}

/** Fixed-size ring of the most recent samples. */
class SampleRing {
  private buf = new Float64Array(LATENCY_WINDOW);
  count = 0;
  totalMs = 0;

  add(ms: number): void {
    this.buf[this.count % LATENCY_WINDOW] = ms;
    this.count++;
    this.totalMs += ms;
  }

  summary(): LatencySummary {
    const n = Math.min(this.count, LATENCY_WINDOW);
    if (n === 0) {
      return { count: 0, totalMs: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, maxMs: 0 };
    }
    const s = this.buf.slice(0, n).sort();
    let sum = 0;
    for (let i = 0; i < n; i++) sum += s[i];
    // Nearest-rank percentile: the smallest sample with at least q of the samples at or below it.
    const pct = (q: number) => s[Math.max(0, Math.ceil(q * n) - 1)];
    return {
      count: this.count,
      totalMs: this.totalMs,
      meanMs: sum / n,
      p50Ms: pct(0.5),
      p90Ms: pct(0.9),
      p99Ms: pct(0.99),
      maxMs: s[n - 1],
    };
  }
}

/** Mutable counters of one expert cache. */
export class ExpertMetrics {
  hits = 0;
  misses = 0;
  evictions = 0;
  prefetchIssued = 0;
  prefetchHit = 0;
  prefetchWasted = 0;
  bytesUploaded = 0;
  readAheads = 0;
  private latency = ExpertMetrics.rings();

  private static rings(): Record<LoadSource, SampleRing> {
    return {
      cold: new SampleRing(),
      warm: new SampleRing(),
      unknown: new SampleRing(),
      resident: new SampleRing(),
    };
  }

  /** Records how long making one expert available took, by where its bytes were (null: the
   * reader could not tell, counted as "unknown"). */
  recordLoad(source: LoadSource | null, ms: number): void {
    this.latency[source ?? "unknown"].add(ms);
  }

  /** Zeroes every counter and drops every sample (e.g. after warm-up, before a bench). */
  reset(): void {
    this.hits = this.misses = this.evictions = 0;
    this.prefetchIssued = this.prefetchHit = this.prefetchWasted = 0;
    this.bytesUploaded = this.readAheads = 0;
    this.latency = ExpertMetrics.rings();
  }

  snapshot(): ExpertMetricsSnapshot {
    const lookups = this.hits + this.misses;
    return {
      hits: this.hits,
      misses: this.misses,
      hitRate: lookups === 0 ? 0 : this.hits / lookups,
      evictions: this.evictions,
      prefetchIssued: this.prefetchIssued,
      prefetchHit: this.prefetchHit,
      prefetchWasted: this.prefetchWasted,
      bytesUploaded: this.bytesUploaded,
      readAheads: this.readAheads,
      latency: {
        cold: this.latency.cold.summary(),
        warm: this.latency.warm.summary(),
        unknown: this.latency.unknown.summary(),
        resident: this.latency.resident.summary(),
      },
    };
  }
}

/**
 * The loads of a snapshot as flat figures for /metrics and /stats, per source S of LOAD_SOURCES:
 * SLoads (count), SLoadSeconds (their total: decode's stall waiting for experts),
 * SLoadMeanSeconds and SLoadP99Seconds (over the recent window).
 */
export function loadFigures(s: ExpertMetricsSnapshot): Record<string, number> {
  const out: Record<string, number> = {};
  for (const source of LOAD_SOURCES) {
    const l = s.latency[source];
    out[`${source}Loads`] = l.count;
    out[`${source}LoadSeconds`] = l.totalMs / MS_PER_SECOND;
    out[`${source}LoadMeanSeconds`] = l.meanMs / MS_PER_SECOND;
    out[`${source}LoadP99Seconds`] = l.p99Ms / MS_PER_SECOND;
  }
  return out;
}
