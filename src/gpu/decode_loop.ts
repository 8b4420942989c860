/**
 * The decode loop, with continuous batching: decides which sequences step together, how many
 * decode steps go into each submission, when to read back, and where each sequence ends. The
 * forward pass (a ForwardHost, src/gpu/host.ts) computes: a decode step runs one token of every
 * sequence of the batch through the layers (weights read once for all of them, attention per
 * sequence over its own KV slab) and samples each sequence's next token on the GPU into its ids,
 * from which the next step embeds it. The CPU only reads tokens back.
 *
 * One cycle, holding the GPU's turn (forward() calls get theirs between cycles):
 *   1. new sequences join: their prompts are prefilled (submitted; their first token is sampled
 *      on the GPU, so they step in the very next batch);
 *   2. the next batch of N steps of every running sequence is encoded;
 *   3. the submitted batches are mapped together, the next batch is submitted between the mapAsync
 *      calls and their wait (Deno's mapAsync blocks in a device poll until all submitted work is
 *      done, then waits a fixed 10 ms: the GPU works through that wait), and their tokens are read;
 *   4. each sequence's tokens are settled: EOS and max_tokens, the consumer's verdict (stop
 *      strings: it returns how many tokens it keeps), aborts. A sequence that ends leaves; the
 *      speculative steps computed past its end are dropped (its length is rolled back to what
 *      was kept). Under an expert budget a step that missed is repaired (its experts loaded, the
 *      step redone from its first missed layer) and the speculative batch behind it dropped.
 * Consumers are called synchronously and never awaited, so a slow client cannot stall the
 * others.
 */
import type { DecodeFinish, DecodeRequest, DecodeResult, DecodeStats } from "../types.ts";
import { randomSeed, type SamplingParams } from "../sampling.ts";
import type { Sequence } from "./sequence.ts";
import {
  type Batch,
  type BatchResult,
  ContextOverflowError,
  type ForwardHost,
  MAX_STEPS_PER_BATCH,
} from "./host.ts";

/** Wall time of GPU work one batch should hold: the readback's ~10 ms fixed delay is then a
 * small part of a cycle, and a stop is noticed within about this long. */
export const TARGET_BATCH_MS = 100;
/** Steps of the first batch, before any cycle was measured: one, so the first token's readback
 * (submitted with it behind) is not delayed where submitting runs the work (llvmpipe). */
export const FIRST_BATCH_STEPS = 1;

/** Weight of the latest cycle in the miss rate (an exponential moving average). */
export const MISS_RATE_WEIGHT = 0.25;
/** Above this miss rate a cycle does not encode the next batch before its readback: the batch
 * behind a miss is discarded, and where submitting runs the work (llvmpipe) it costs its whole
 * compute time before the miss can even be repaired. */
export const PIPELINE_MAX_MISS_RATE = 0.5;

/**
 * Steps per batch: adapted so a cycle (readback to readback) holds about TARGET_BATCH_MS of work:
 * N <- N * TARGET / cycle, within [1, MAX_STEPS_PER_BATCH]; halved after a batch that missed
 * under an expert budget (its later steps were wasted). And whether to pipeline: not while
 * most recent cycles missed (missRate, a moving average of "this cycle repaired a miss").
 */
export class StepController {
  private n = FIRST_BATCH_STEPS;
  private rate = 0;

  get steps(): number {
    return this.n;
  }

  /** Moving average of the cycles that had to repair a miss (0 without an expert budget). */
  get missRate(): number {
    return this.rate;
  }

  /** Whether the next batch should be encoded before the current ones are read. */
  get pipelines(): boolean {
    return this.rate <= PIPELINE_MAX_MISS_RATE;
  }

  /** A cycle was read: whether it repaired a miss. */
  cycle(missed: boolean): void {
    this.rate += MISS_RATE_WEIGHT * ((missed ? 1 : 0) - this.rate);
  }

  /** A cycle that ran `steps` steps took `ms` from the previous readback to its own. */
  observe(steps: number, ms: number): void {
    if (steps === 0 || ms <= 0) return;
    const next = Math.ceil((steps * TARGET_BATCH_MS) / ms);
    this.n = Math.max(1, Math.min(MAX_STEPS_PER_BATCH, next));
  }

  /** A step of the last batch missed: its later steps were wasted. */
  missed(): void {
    this.n = Math.max(1, Math.floor(this.n / 2));
  }

  /** Back to the first batch's size (nothing is running); the miss rate is kept (it describes
   * the budget, not the sequences). */
  reset(): void {
    this.n = FIRST_BATCH_STEPS;
  }
}

/** Decides what a sequence keeps of the tokens just read back: undefined keeps all and goes on;
 * k keeps the first k and ends the sequence (a stop string completed at token k). */
export type Settle = (tokens: number[]) => number | undefined;

/** One sequence being decoded. */
interface Lane {
  seq: Sequence;
  masked: boolean;
  sampling: SamplingParams;
  eos: Set<number>;
  /** Fixed steps per readback the request asked for, if any. */
  fixed?: number;
  signal?: AbortSignal;
  start: number;
  feed: number[];
  genStart: number;
  maxEnd: number;
  /** Position of the last token that submitted work samples. */
  front: number;
  /** Position of the next token to hand out. */
  expect: number;
  kept: number[];
  settle: Settle;
  setLength: (n: number) => void;
  stats: DecodeStats;
  /** performance.now() and the model's expert loads when the first token was handed out. */
  since: { t: number; loads: number } | null;
  lastRead: number;
  done: (r: DecodeResult) => void;
  fail: (e: unknown) => void;
  finished: boolean;
}

/** A submitted batch and the lanes it computes for (in the batch's lane order). */
interface InFlight {
  batch: Batch;
  lanes: Lane[];
  kind: "prefill" | "steps" | "repair";
}

export class DecodeLoop {
  private joining: Lane[] = [];
  private running: Lane[] = [];
  private inFlight: InFlight[] = [];
  private control = new StepController();
  private driving: Promise<void> | null = null;
  private lastCycle = 0;
  /** Alternates between router-masking groups when both run (they cannot share a step). */
  private maskedTurn = false;

  constructor(private host: ForwardHost) {}

  /** Sequences decoding or waiting for their prefill. */
  get active(): number {
    return this.joining.length + this.running.length;
  }

  /**
   * Decodes one sequence on `seq`, whose KV cache holds `start` positions (prefix), together
   * with every other sequence decoding at the time. `settle` is called with each readback's new
   * tokens (never past an EOS or max_tokens); `setLength` at the end with the positions the KV
   * cache then holds: start + feed + kept - 1 (the last kept token is fed by the next forward).
   */
  decode(
    seq: Sequence,
    masked: boolean,
    start: number,
    req: DecodeRequest,
    settle: Settle,
    setLength: (n: number) => void,
  ): Promise<DecodeResult> {
    if (req.feed.length === 0) throw new RangeError("decode needs at least one token to feed");
    if (!(Number.isInteger(req.maxTokens) && req.maxTokens >= 1)) {
      throw new RangeError(`maxTokens must be a positive integer, not ${req.maxTokens}`);
    }
    const fixed = req.stepsPerReadback;
    if (fixed !== undefined && !(Number.isInteger(fixed) && fixed >= 1)) {
      throw new RangeError(`steps per readback must be a positive integer, not ${fixed}`);
    }
    const genStart = start + req.feed.length;
    const maxEnd = genStart + req.maxTokens;
    // inputs sit at positions < maxEnd - 1: the KV slab must hold them
    if (maxEnd - 1 > this.host.maxContext) {
      throw new ContextOverflowError(
        `${genStart} tokens and ${req.maxTokens} to generate exceed the context of ` +
          `${this.host.maxContext}`,
      );
    }
    return new Promise<DecodeResult>((done, fail) => {
      this.joining.push({
        seq,
        masked,
        sampling: { ...req.sampling, seed: req.sampling.seed ?? randomSeed() },
        eos: new Set(req.eosIds),
        fixed: fixed === undefined ? undefined : Math.min(fixed, MAX_STEPS_PER_BATCH),
        signal: req.signal,
        start,
        feed: req.feed,
        genStart,
        maxEnd,
        front: genStart,
        expect: genStart,
        kept: [],
        settle,
        setLength,
        stats: { tokens: 0, readbacks: 0, submits: 0, ms: 0, expertLoads: 0 },
        since: null,
        lastRead: 0,
        done,
        fail,
        finished: false,
      });
      this.driving ??= this.drive();
    });
  }

  /** Cycles while anything runs; each cycle holds the GPU's turn. */
  private async drive(): Promise<void> {
    try {
      while (this.active > 0) {
        await this.host.exclusive(() => this.cycle());
      }
    } catch (e) {
      for (const lane of [...this.joining, ...this.running]) this.finish(lane, null, e);
      this.joining = [];
      this.running = [];
    } finally {
      for (const f of this.inFlight) this.host.discard(f.batch);
      this.inFlight = [];
      this.control.reset();
      this.driving = null;
    }
    if (this.active > 0) this.driving ??= this.drive(); // joined while the last cycle failed
  }

  private async cycle(): Promise<void> {
    const host = this.host;
    // 1. joiners: prefill (submitted); they step in the next batch
    const joined = this.joining.length > 0;
    const joiners = this.joining.splice(0).filter((lane) => {
      if (lane.signal?.aborted) this.finish(lane, "abort");
      return !lane.finished;
    });
    for (const lane of joiners) {
      host.setRequest(lane.seq, {
        sampling: lane.sampling,
        genStart: lane.genStart,
        maxEnd: lane.maxEnd,
        eosIds: [...lane.eos],
      });
    }
    if (host.prefillsTogether) {
      // every prompt of a router-masking group in one batch
      for (const masked of [false, true]) {
        const group = joiners.filter((l) => l.masked === masked);
        if (group.length === 0) continue;
        const batch = host.prefillTogether(
          group.map((l) => ({ seq: l.seq, ids: l.feed, pos0: l.start, sampling: l.sampling })),
          masked,
        );
        this.inFlight.push({ batch, lanes: group, kind: "prefill" });
      }
    } else {
      for (const lane of joiners) {
        const batch = await host.prefill(
          lane.seq,
          lane.masked,
          lane.feed,
          lane.start,
          lane.sampling,
        );
        this.inFlight.push({ batch, lanes: [lane], kind: "prefill" });
      }
    }
    this.running.push(...joiners);
    // batches computed only for sequences that have ended since: not worth a readback
    this.inFlight = this.inFlight.filter((f) => {
      const live = f.lanes.some((l) => !l.finished);
      if (!live) host.discard(f.batch);
      return live;
    });
    // 2. the next batch, encoded before the current ones are read (pipelined)
    const pipelined = this.running.every((l) => l.fixed !== 1) &&
      (this.control.pipelines || this.host.alwaysPipeline ||
        this.running.every((l) => l.fixed !== undefined));
    // (when sequences joined, the batch behind their prefills is one step, so their first tokens
    // are not held up by a long batch)
    let next = pipelined ? this.plan(joined) : null;
    if (this.inFlight.length === 0) {
      next ??= this.plan();
      if (next === null) return;
      this.submit(next);
      next = null;
    }
    // 3. read what was submitted; the next batch runs meanwhile
    const reading = this.inFlight;
    this.inFlight = [];
    const results = await host.read(
      reading.map((f) => f.batch),
      next ? () => this.submit(next!) : undefined,
    );
    const now = performance.now();
    // 4. settle each sequence's tokens; repair misses
    const repaired = new Set<Lane>();
    for (const [i, f] of reading.entries()) {
      const r = results[i];
      this.settleBatch(f, r, now);
      if (r.invalidAt < 0) continue;
      if (f.lanes.every((l) => l.finished)) {
        host.discard(f.batch); // nobody needs the step redone
        continue;
      }
      const repair = host.repair(f.batch);
      f.lanes.forEach((lane, b) => {
        lane.front = repair.lanes[b].first;
        if (!lane.finished) lane.stats.submits++;
        repaired.add(lane);
      });
      this.inFlight.push({ batch: repair, lanes: f.lanes, kind: "repair" });
    }
    if (next && next.lanes.some((l) => repaired.has(l))) {
      // it ran on invalid tokens: its lanes request again from their (reset) fronts
      next.lanes.forEach((lane, b) => {
        if (!repaired.has(lane)) lane.front -= next!.batch.lanes[b].count;
      });
      this.inFlight = this.inFlight.filter((f) => f !== next);
      host.discard(next.batch);
    }
    // steps per batch: fewer after a miss (the steps behind it were wasted), else from the cycle
    this.control.cycle(repaired.size > 0);
    if (repaired.size > 0) {
      this.control.missed();
    } else if (this.lastCycle > 0) {
      const steps = Math.max(next?.batch.steps ?? 0, ...reading.map((f) => f.batch.steps));
      this.control.observe(steps, now - this.lastCycle);
    }
    this.lastCycle = now;
    this.running = this.running.filter((l) => !l.finished);
    // unpipelined: the next batch now, read next cycle
    if (!pipelined && this.inFlight.length === 0) {
      const later = this.plan();
      if (later) this.submit(later);
    }
    if (this.running.length === 0 && this.joining.length === 0) this.lastCycle = 0;
  }

  /** The next decode batch of the running sequences of one router-masking group: as many steps
   * as the controller (or the smallest fixed choice) says, never past any sequence's end. */
  private plan(short = false): InFlight | null {
    let lanes = this.running.filter((l) => !l.finished && l.front < l.maxEnd - 1);
    if (lanes.some((l) => l.masked) && lanes.some((l) => !l.masked)) {
      this.maskedTurn = !this.maskedTurn;
      lanes = lanes.filter((l) => l.masked === this.maskedTurn);
    }
    lanes = lanes.slice(0, this.host.maxLanes);
    if (lanes.length === 0) return null;
    // more sequences than a step holds take turns
    this.running = [...this.running.filter((l) => !lanes.includes(l)), ...lanes];
    const fixed = lanes.flatMap((l) => l.fixed === undefined ? [] : [l.fixed]);
    let n = fixed.length > 0 ? Math.min(...fixed) : short ? 1 : this.control.steps;
    n = Math.min(
      n,
      this.host.maxStepsFor(lanes.length),
      ...lanes.map((l) => l.maxEnd - 1 - l.front),
    );
    const batch = this.host.encodeSteps(
      lanes.map((l) => ({ seq: l.seq, front: l.front, sampling: l.sampling })),
      lanes[0].masked,
      n,
    );
    for (const l of lanes) l.front += n;
    return { batch, lanes, kind: "steps" };
  }

  private submit(f: InFlight): void {
    this.host.submit(f.batch);
    for (const l of f.lanes) l.stats.submits++;
    this.inFlight.push(f);
  }

  /** Hands each lane of a read batch its valid tokens and ends the lanes that are done. */
  private settleBatch(f: InFlight, r: BatchResult, now: number): void {
    f.lanes.forEach((lane, b) => {
      if (lane.finished) return;
      const part = f.batch.lanes[b];
      if (part.first !== lane.expect) return; // a speculative batch behind a repair: dropped
      const tokens = r.invalidAt < 0 ? r.lanes[b].tokens : r.lanes[b].tokens.slice(0, r.invalidAt);
      if (f.kind !== "prefill" && lane.since !== null) lane.stats.readbacks++;
      lane.lastRead = now;
      if (lane.signal?.aborted) return this.finish(lane, "abort");
      // the sequence's own end: an EOS or the max_tokens-th token
      let end = tokens.length;
      let finish: DecodeFinish | null = null;
      for (let i = 0; i < tokens.length; i++) {
        if (lane.eos.has(tokens[i])) finish = "eos";
        else if (part.first + i + 1 >= lane.maxEnd) finish = "length";
        if (finish) {
          end = i + 1;
          break;
        }
      }
      const gpuEnd = r.lanes[b].end < 0 ? -1 : r.lanes[b].end - part.first;
      if (r.invalidAt < 0 && (finish ? gpuEnd !== end : gpuEnd >= 0 && gpuEnd < end)) {
        throw new Error(
          `the GPU's end flag (${r.lanes[b].end}) disagrees with the tokens read back ` +
            `(end at position ${finish ? part.first + end : "none"})`,
        );
      }
      const batch = tokens.slice(0, end);
      lane.expect += batch.length;
      if (batch.length > 0) {
        if (lane.since === null) {
          lane.since = { t: now, loads: this.host.stats.expertLoads };
        }
        let keep: number | undefined;
        try {
          keep = lane.settle(batch);
        } catch (e) {
          return this.finish(lane, null, e);
        }
        lane.kept.push(...batch.slice(0, keep));
        if (keep !== undefined) return this.finish(lane, "stop");
      }
      if (finish) this.finish(lane, finish);
    });
  }

  /** Ends a lane: rolls its length back to what it kept and resolves (or rejects) its decode. */
  private finish(lane: Lane, finish: DecodeFinish | null, error?: unknown): void {
    if (lane.finished) return;
    lane.finished = true;
    // the KV cache holds every kept token but the last (fed by the next forward)
    lane.setLength(lane.genStart + Math.max(0, lane.kept.length - 1));
    if (finish === null) return lane.fail(error);
    const s = lane.stats;
    if (lane.since !== null) {
      s.ms = lane.lastRead - lane.since.t;
      s.expertLoads = this.host.stats.expertLoads - lane.since.loads;
    }
    s.tokens = Math.max(0, lane.kept.length - 1);
    lane.done({ tokens: lane.kept, finish, stats: s });
  }
}
