/**
 * The decode loop: decides how many decode steps go into each submission, when to read back, and
 * where a sequence ends. The forward pass (a ForwardHost, src/gpu/host.ts) computes; every step
 * samples its token on the GPU into the sequence's token ids and the next step embeds it from
 * there, so the CPU only reads tokens back.
 *
 *   prefill (submitted) -> loop: encode the next batch of N steps; map the current batch's
 *   readback; submit the next batch while the readback's fixed delay runs; read the tokens;
 *   settle EOS, max_tokens, the consumer's stop and aborts; repair misses under a budget.
 *
 * Deno's mapAsync blocks in a device poll until all submitted work is done and then waits a fixed
 * 10 ms: submitting the next batch between the map call and the wait keeps the GPU busy through
 * that wait. The consumer settles each readback's tokens (stop strings) and says how many it
 * keeps; tokens past the end are discarded (the speculative batch behind them is dropped) and the
 * sequence's length is rolled back to what was kept.
 */
import type { DecodeFinish, DecodeRequest, DecodeResult, DecodeStats } from "../types.ts";
import { randomSeed } from "../sampling.ts";
import type { Sequence } from "./sequence.ts";
import { type Batch, ContextOverflowError, type ForwardHost, MAX_STEPS_PER_BATCH } from "./host.ts";

/** Wall time of GPU work one batch should hold: the readback's ~10 ms fixed delay is then a
 * small part of a cycle, and a stop is noticed within about this long. */
export const TARGET_BATCH_MS = 100;
/** Steps of the first batch, before any cycle was measured: one, so the first token's readback
 * (submitted with it behind) is not delayed where submitting runs the work (llvmpipe). */
export const FIRST_BATCH_STEPS = 1;

/** The sequence ended at a readback the consumer or the signal cut short. */
interface Ending {
  keep: number;
  finish: DecodeFinish;
}

/**
 * Steps per batch: fixed, or adapted so a cycle (readback to readback) holds about
 * TARGET_BATCH_MS of work: N <- N * TARGET / cycle, within [1, MAX_STEPS_PER_BATCH]; halved after
 * a batch that missed under an expert budget (its later steps were wasted).
 */
export class StepController {
  private n: number;

  constructor(readonly fixed?: number) {
    if (fixed !== undefined && !(Number.isInteger(fixed) && fixed >= 1)) {
      throw new RangeError(`steps per readback must be a positive integer, not ${fixed}`);
    }
    this.n = Math.min(fixed ?? FIRST_BATCH_STEPS, MAX_STEPS_PER_BATCH);
  }

  /** Whether the next batch is submitted before the current one is read. */
  get pipelined(): boolean {
    return this.fixed !== 1;
  }

  get steps(): number {
    return this.n;
  }

  /** A batch of `steps` steps took `ms` from the previous readback to its own. */
  observe(steps: number, ms: number): void {
    if (this.fixed !== undefined || steps === 0 || ms <= 0) return;
    const next = Math.ceil((steps * TARGET_BATCH_MS) / ms);
    this.n = Math.max(1, Math.min(MAX_STEPS_PER_BATCH, next));
  }

  /** A step of the last batch missed: its later steps were wasted. */
  missed(): void {
    if (this.fixed === undefined) this.n = Math.max(1, Math.floor(this.n / 2));
  }
}

/**
 * Runs one decode on `seq`, whose KV cache holds `start` positions. Yields each readback's new
 * tokens (never past an EOS or max_tokens); the value passed back to next() settles them:
 * undefined keeps all and goes on, a number k keeps the first k and ends. `setLength` is called with
 * the positions the KV cache then holds: start + feed + kept - 1 (the last kept token is not in
 * it; a later forward feeds it).
 */
export async function* decodeLoop(
  host: ForwardHost,
  seq: Sequence,
  masked: boolean,
  start: number,
  req: DecodeRequest,
  setLength: (n: number) => void,
): AsyncGenerator<number[], DecodeResult, number | undefined> {
  if (req.feed.length === 0) throw new RangeError("decode needs at least one token to feed");
  if (!(Number.isInteger(req.maxTokens) && req.maxTokens >= 1)) {
    throw new RangeError(`maxTokens must be a positive integer, not ${req.maxTokens}`);
  }
  const genStart = start + req.feed.length;
  const maxEnd = genStart + req.maxTokens;
  // inputs sit at positions < maxEnd - 1: the KV cache must hold them
  if (maxEnd - 1 > host.maxContext) {
    throw new ContextOverflowError(
      `${genStart} tokens and ${req.maxTokens} to generate exceed the context of ` +
        `${host.maxContext}`,
    );
  }
  const sampling = { ...req.sampling, seed: req.sampling.seed ?? randomSeed() };
  const eos = new Set(req.eosIds);
  const control = new StepController(req.stepsPerReadback);
  host.setRequest(seq, { sampling, genStart, maxEnd, eosIds: [...eos] });
  const kept: number[] = [];
  let ending: Ending | null = null;
  const stats: DecodeStats = { tokens: 0, readbacks: 0, submits: 0, ms: 0, expertLoads: 0 };
  let decodeFrom: { t: number; loads: number } | null = null;

  let pending: Batch = await host.prefill(seq, masked, req.feed, start, sampling);
  /** Position of the last token that submitted (or encoded) work samples. */
  let front = genStart;
  let lastRead = performance.now();
  try {
    while (true) {
      // encode the next batch before reading this one; submit it while the readback waits
      let next: Batch | null = null;
      const remaining = maxEnd - 1 - front;
      if (control.pipelined && remaining > 0 && !req.signal?.aborted) {
        next = host.encodeSteps(seq, masked, front, Math.min(control.steps, remaining), sampling);
        front += next.count;
      }
      const r = await host.read(pending, next ? () => host.submit(next!) : undefined);
      const now = performance.now();
      if (decodeFrom === null) {
        decodeFrom = { t: now, loads: host.stats.expertLoads };
      } else {
        stats.readbacks++;
      }
      if (next) stats.submits++;
      // the GPU ran the batch being read and the one submitted behind it during this cycle (which
      // one dominates depends on whether submit() runs the work); credit the larger
      control.observe(Math.max(pending.steps, next?.steps ?? 0), now - lastRead);
      lastRead = now;

      const valid = r.invalidAt < 0 ? r.tokens : r.tokens.slice(0, r.invalidAt);
      // the sequence's own end inside this batch: an EOS or the max_tokens-th token
      let end = valid.length;
      let finish: DecodeFinish | null = null;
      for (let i = 0; i < valid.length; i++) {
        const pos = pending.first + i;
        if (eos.has(valid[i])) finish = "eos";
        else if (pos + 1 >= maxEnd) finish = "length";
        if (finish) {
          end = i + 1;
          break;
        }
      }
      const gpuEnd = r.end < 0 ? -1 : r.end - pending.first;
      if (r.invalidAt < 0 && (finish ? gpuEnd !== end : gpuEnd >= 0 && gpuEnd < end)) {
        throw new Error(
          `the GPU's end flag (${r.end}) disagrees with the tokens read back ` +
            `(end at position ${finish ? pending.first + end : "none"})`,
        );
      }
      if (req.signal?.aborted) {
        ending = { keep: kept.length, finish: "abort" };
        break;
      }
      const batch = valid.slice(0, end);
      if (batch.length > 0) {
        const keep = yield batch;
        kept.push(...batch.slice(0, keep));
        if (keep !== undefined) {
          ending = { keep: kept.length, finish: "stop" };
          break;
        }
      }
      if (finish) {
        ending = { keep: kept.length, finish };
        break;
      }
      if (r.invalidAt >= 0) {
        // a step routed to an absent expert: load, redo it from its first missed layer, and
        // drop the speculative batch (it ran on the invalid token)
        control.missed();
        pending = host.repair(pending, r, sampling);
        stats.submits++;
        front = pending.first;
        continue;
      }
      if (next === null) {
        // unpipelined: encode and submit now (a batch that reached maxEnd ended above)
        const n = Math.min(control.steps, maxEnd - 1 - front);
        if (n < 1) throw new Error(`decode loop: nothing left to request at ${front}`);
        next = host.encodeSteps(seq, masked, front, n, sampling);
        front += next.count;
        host.submit(next);
        stats.submits++;
      }
      pending = next;
    }
  } finally {
    // the KV cache holds every kept token but the last (fed by the next forward)
    setLength(genStart + Math.max(0, kept.length - 1));
  }
  if (decodeFrom !== null) {
    stats.ms = lastRead - decodeFrom.t;
    stats.expertLoads = host.stats.expertLoads - decodeFrom.loads;
  }
  stats.tokens = Math.max(0, kept.length - 1);
  return { tokens: kept, finish: ending!.finish, stats };
}
