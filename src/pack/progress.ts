/**
 * Progress of a pack: bytes written of the total, and a terminal line with the rate. The line is
 * drawn on stderr only when stderr is a terminal, so logs and pipes stay clean.
 */

/** What pack() reports after each tensor or expert record it writes. */
export interface PackProgress {
  /** "base" while writing base.bin, "experts" while writing experts.bin. */
  phase: "base" | "experts";
  doneBytes: number;
  totalBytes: number;
}

/** A progress callback; throwing from it aborts the pack (which then cleans up). */
export type ProgressFn = (p: PackProgress) => void;

/** Redraws at most this often: faster redraws cost more than they tell. */
const REDRAW_MS = 200;
const MB = 1e6;

/** One progress line: "experts 1234.5/5678.9 MB (21.7%) 812.3 MB/s". */
export function formatProgress(p: PackProgress, elapsedMs: number): string {
  const pct = p.totalBytes === 0 ? 100 : (100 * p.doneBytes) / p.totalBytes;
  const rate = elapsedMs > 0 ? p.doneBytes / MB / (elapsedMs / 1000) : 0;
  return `${p.phase} ${(p.doneBytes / MB).toFixed(1)}/${(p.totalBytes / MB).toFixed(1)} MB ` +
    `(${pct.toFixed(1)}%) ${rate.toFixed(1)} MB/s`;
}

/**
 * A ProgressFn that redraws one stderr line when stderr is a terminal, else null (report
 * nothing). Call the returned finish() at the end to end the line.
 */
export function terminalProgress(): { onProgress: ProgressFn; finish(): void } | null {
  if (!Deno.stderr.isTerminal()) return null;
  const enc = new TextEncoder();
  const start = performance.now();
  let lastDraw = -Infinity;
  let last: PackProgress | null = null;
  const draw = (p: PackProgress) => {
    Deno.stderr.writeSync(enc.encode(`\r\x1b[K${formatProgress(p, performance.now() - start)}`));
  };
  return {
    onProgress(p: PackProgress) {
      last = p;
      const now = performance.now();
      if (now - lastDraw >= REDRAW_MS || p.doneBytes === p.totalBytes) {
        lastDraw = now;
        draw(p);
      }
    },
    finish() {
      if (last !== null) {
        draw(last);
        Deno.stderr.writeSync(enc.encode("\n"));
      }
    },
  };
}
