/**
 * One sequence's state on the GPU, made by the model and reused across sessions: its KV cache
 * (k and v per layer) with the attention ops bound to it, and the sampler's buffers (the token at
 * every position, the request's sampling parameters, the end flag) with the embedding gather bound
 * to those token ids. Nothing here computes; src/gpu/model.ts records these ops.
 */
import type { Op } from "./ops_api.ts";
import type { SamplerSequence } from "./sampler.ts";

export interface Sequence {
  /** k and v of every layer: [maxContext, Hkv*Dh] f32 each. */
  kv: GPUBuffer[];
  /** Per layer: KV store, attention over this cache, o_proj + residual. */
  attention: Op[][];
  /** Token ids by position (u32 [maxContext + 1]), sampling parameters, end flag. */
  sampler: SamplerSequence;
  /** Embedding rows of ids[pos0 .. pos0 + T) into the residual stream, one op per table chunk. */
  embed: Op[];
}
