/**
 * One sequence on the GPU runtime: its length and its buffers (KV cache, token ids, sampler
 * state; reused across sessions). forward() returns logits; decode() runs the decode loop
 * (src/gpu/decode_loop.ts), which samples on the GPU and reads back only tokens.
 */
import type { DecodeRequest, DecodeResult, Session } from "../types.ts";
import type { Sequence } from "./sequence.ts";
import { ContextOverflowError, type ForwardHost } from "./host.ts";
import { decodeLoop } from "./decode_loop.ts";

export { ContextOverflowError };

export class GpuSession implements Session {
  private len = 0;
  private seq: Sequence | null;

  constructor(
    private host: ForwardHost & { readonly stepsPerReadback?: number },
    readonly routerMasking: boolean,
  ) {
    this.seq = host.acquireSequence();
  }

  private get sequence(): Sequence {
    if (this.seq === null) throw new RangeError("this session was freed");
    return this.seq;
  }

  get length(): number {
    return this.len;
  }

  private checkIds(ids: number[]): void {
    if (ids.length === 0) throw new RangeError("a forward needs at least one token");
    if (this.len + ids.length > this.host.maxContext) {
      throw new ContextOverflowError(
        `${this.len + ids.length} tokens exceed the context of ${this.host.maxContext}`,
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
      const rows = await this.host.forward(seq, this.routerMasking, ids, this.len, !!opts.lastOnly);
      this.len += ids.length;
      return rows;
    });
  }

  /**
   * Feeds req.feed, then samples up to req.maxTokens tokens on the GPU; yields each readback's
   * tokens and takes back how many of them the caller keeps (see decodeLoop). Afterwards the KV
   * cache holds every kept token but the last one.
   */
  async *decode(req: DecodeRequest): AsyncGenerator<number[], DecodeResult, number | undefined> {
    const host = this.host;
    let release!: () => void;
    const turn = new Promise<void>((r) => release = r);
    // hold the GPU for the whole decode: its batches share the model's activations
    let acquired!: () => void;
    const held = new Promise<void>((r) => acquired = r);
    const done = host.exclusive(() => {
      acquired();
      return turn;
    });
    await held;
    try {
      this.checkIds(req.feed);
      const run = decodeLoop(host, this.sequence, this.routerMasking, this.len, {
        ...req,
        stepsPerReadback: req.stepsPerReadback ?? host.stepsPerReadback,
      }, (n) => this.len = n);
      return yield* run;
    } finally {
      release();
      await done;
    }
  }

  truncate(length: number): void {
    if (length < 0 || length > this.len) throw new RangeError(`cannot truncate to ${length}`);
    this.len = length;
  }

  /** Hands the buffers back to the model for the next session (no GPU allocation then). */
  free(): void {
    if (this.seq !== null) this.host.releaseSequence(this.seq);
    this.seq = null;
  }
}
