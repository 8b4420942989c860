/**
 * CPU memory bandwidth reference: one large ArrayBuffer copied with Uint8Array.set, timed a few
 * times in the calling process. Benchmarks print it beside their own GB/s so a figure can be read
 * as a fraction of what this machine's memory moves at that moment (other processes share it).
 *
 * The figure is bytes copied per second; each byte is read once and written once, so the memory
 * traffic is twice that.
 */

/** Bytes copied: 256 MiB, far beyond any last-level cache, so the copy runs at DRAM speed. */
export const MEMCPY_BYTES = 256 << 20;
/** Timed copies; the best is reported as the least disturbed by other processes. */
export const MEMCPY_REPS = 5;

/** What one measurement found. */
export interface MemcpyResult {
  bytes: number;
  reps: number;
  /** Fastest copy, in milliseconds. */
  bestMs: number;
  /** Median copy, in milliseconds. */
  medianMs: number;
  /** bytes / best time, in GB/s (1e9 bytes). */
  bestGBs: number;
}

/** The median of a non-empty list (the mean of the middle two for even lengths). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Copies `bytes` from one buffer to another `reps` times after one untimed warm-up copy. */
export function measureMemcpy(bytes = MEMCPY_BYTES, reps = MEMCPY_REPS): MemcpyResult {
  // Non-zero source and an untimed first copy: every page of both buffers is faulted in before
  // timing, so the timed copies measure bandwidth rather than page faults.
  const src = new Uint8Array(bytes).fill(1);
  const dst = new Uint8Array(bytes);
  dst.set(src);
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    dst.set(src);
    times.push(performance.now() - t0);
  }
  const bestMs = Math.min(...times);
  return { bytes, reps, bestMs, medianMs: median(times), bestGBs: bytes / (bestMs / 1000) / 1e9 };
}

if (import.meta.main) {
  const r = measureMemcpy();
  console.log(
    `memcpy ${r.bytes >> 20} MiB: best ${r.bestMs.toFixed(1)} ms of ${r.reps} ` +
      `(median ${r.medianMs.toFixed(1)} ms) = ${r.bestGBs.toFixed(2)} GB/s`,
  );
}
