/**
 * One sequence on the GPU runtime: its length, the tokens its KV rows hold, and its slab of the
 * KV pool (reused across sessions; a session may start on a slab that already holds a prefix of
 * its prompt). forward() returns logits; decode() joins the decode loop (src/gpu/decode_loop.ts),
 * which batches every decoding sequence, samples on the GPU and reads back only tokens.
 */
import type { DecodeRequest, DecodeResult, ExpertSetMode, Session } from "../types.ts";
import type { Sequence } from "./sequence.ts";
import { ContextOverflowError, type ForwardHost } from "./host.ts";
import type { DecodeLoop } from "./decode_loop.ts";

export { ContextOverflowError };

/** What a session needs from the model. */
export interface SessionHost extends ForwardHost {
  readonly loop: DecodeLoop;
  /** Steps per readback of sessions whose requests do not choose. */
  readonly stepsPerReadback?: number;
  /** The sequence on `seq` chooses its experts this way (src/gpu/expert_sets.ts); masked: it
   * routes among resident experts only. Undone by releaseSequence(). */
  useExpertSet(seq: Sequence, mode: ExpertSetMode, masked: boolean): void;
}

export class GpuSession implements Session {
  /** Tokens whose KV rows the slab holds, from position 0 (their count is the length). */
  private tokens: number[];
  private seq: Sequence | null;

  /**
   * With `prefix`, the session starts on the free slab caching the longest prefix of it. With
   * expertSet "context" its first forward or decode (the prompt's prefill; with prefix reuse, the
   * uncached rest of it) chooses its expert set from its routing.
   */
  constructor(
    private host: SessionHost,
    readonly routerMasking: boolean,
    prefix: readonly number[] = [],
    readonly expertSet: ExpertSetMode = "lru",
  ) {
    const { seq, reuse } = host.acquireSequence(prefix);
    this.seq = seq;
    this.tokens = prefix.slice(0, reuse);
    host.useExpertSet(seq, expertSet, routerMasking);
  }

  private get sequence(): Sequence {
    if (this.seq === null) throw new RangeError("this session was freed");
    return this.seq;
  }

  /** Positions the KV cache holds. */
  get length(): number {
    return this.tokens.length;
  }

  /** Positions reused from a cached prefix when the session started (0 for a fresh slab). */
  get cachedTokens(): readonly number[] {
    return this.tokens;
  }

  private checkIds(ids: number[], extra = 0): void {
    if (ids.length === 0) throw new RangeError("a forward needs at least one token");
    if (this.length + ids.length + extra > this.host.maxContext) {
      throw new ContextOverflowError(
        `${this.length + ids.length + extra} tokens exceed the context of ${this.host.maxContext}`,
      );
    }
    const V = this.host.config.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new RangeError(`token id ${id} is outside the vocabulary [0, ${V})`);
      }
    }
  }

  forward(ids: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array[]> {
    return this.host.exclusive(async () => {
      this.checkIds(ids);
      const seq = this.sequence;
      const start = this.length;
      const rows = await this.host.forward(seq, this.routerMasking, ids, start, !!opts.lastOnly);
      this.tokens.push(...ids);
      return rows;
    });
  }

  /**
   * Feeds req.feed, then samples up to req.maxTokens tokens on the GPU, batched with every other
   * decoding sequence; `settle` gets each readback's tokens and says what is kept (see
   * Session.decode). Afterwards the KV cache holds every kept token but the last one.
   */
  decode(
    req: DecodeRequest,
    settle: (tokens: number[]) => number | undefined,
  ): Promise<DecodeResult> {
    this.checkIds(req.feed);
    const seq = this.sequence;
    const start = this.length;
    let result: number[] = [];
    const stepsPerReadback = req.stepsPerReadback ?? this.host.stepsPerReadback;
    return this.host.loop.decode(
      seq,
      this.routerMasking,
      start,
      { ...req, stepsPerReadback },
      (tokens) => {
        const keep = settle(tokens);
        result = [...result, ...tokens.slice(0, keep)];
        return keep;
      },
      (n) => {
        // every fed token and every kept token but the last are in the KV cache now
        this.tokens = [...this.tokens, ...req.feed, ...result].slice(0, n);
      },
    );
  }

  truncate(length: number): void {
    if (length < 0 || length > this.length) throw new RangeError(`cannot truncate to ${length}`);
    this.tokens.length = length;
  }

  /** Hands the slab back to the model, with the tokens it caches for a later prefix reuse. */
  free(): void {
    if (this.seq !== null) this.host.releaseSequence(this.seq, this.tokens);
    this.seq = null;
  }
}
