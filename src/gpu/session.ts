/** One sequence on the GPU runtime: its position and its KV cache (reused across sessions). */
import type { Session } from "../types.ts";
import type { Op } from "./ops_api.ts";
import type { GpuModel } from "./model.ts";

export class ContextOverflowError extends Error {
  override name = "ContextOverflowError";
}

/** A session's KV cache (k and v per layer) and the attention ops bound to it. */
export interface KvCache {
  buffers: GPUBuffer[];
  attention: Op[][];
}

export class GpuSession implements Session {
  private len = 0;
  private kv: KvCache | null;

  constructor(private model: GpuModel, readonly routerMasking: boolean) {
    this.kv = model.acquireKv();
  }

  /** Per layer: KV store, attention over this session's cache, o_proj + residual. */
  get attention(): Op[][] {
    if (this.kv === null) throw new RangeError("this session was freed");
    return this.kv.attention;
  }

  get length(): number {
    return this.len;
  }

  forward(ids: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array[]> {
    return this.model.exclusive(async () => {
      if (ids.length === 0) throw new RangeError("forward() needs at least one token");
      if (this.len + ids.length > this.model.maxContext) {
        throw new ContextOverflowError(
          `${this.len + ids.length} tokens exceed the context of ${this.model.maxContext}`,
        );
      }
      const V = this.model.config.vocabSize;
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new RangeError(`token id ${id} is outside the vocabulary [0, ${V})`);
        }
      }
      if (this.model.layerwise(ids.length)) {
        const rows = await this.model.prefillByLayer(this, ids, this.len, !!opts.lastOnly);
        this.len += ids.length;
        return rows;
      }
      const rows: Float32Array[] = [];
      const B = this.model.maxBatch;
      for (let i = 0; i < ids.length; i += B) {
        const chunk = ids.slice(i, i + B);
        const last = i + B >= ids.length;
        const r = await this.model.step(this, chunk, this.len, !!opts.lastOnly && last);
        this.len += chunk.length;
        if (!opts.lastOnly) rows.push(...r);
        else if (last) rows.push(...r);
      }
      return rows;
    });
  }

  truncate(length: number): void {
    if (length < 0 || length > this.len) throw new RangeError(`cannot truncate to ${length}`);
    this.len = length;
  }

  /** Hands the KV cache back to the model for the next session (no GPU allocation then). */
  free(): void {
    if (this.kv !== null) this.model.releaseKv(this.kv);
    this.kv = null;
  }
}
