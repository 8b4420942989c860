/**
 * One sequence's place on the GPU: its slab of the KV pool (src/gpu/kv_pool.ts: every layer's K
 * and V rows and the token ids by position) and the sampler's buffers bound to that slab (the
 * request's parameters, the end flag). Made by the model once per slab and reused.
 */
import type { SamplerSequence } from "./sampler.ts";

export interface Sequence {
  /** The KV pool slab: Step.tokens entries of this sequence's tokens carry it. */
  readonly slab: number;
  /** Parameters, end flag, and the ids range of the slab (ids[position]). */
  readonly sampler: SamplerSequence;
}
