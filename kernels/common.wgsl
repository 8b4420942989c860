// Prepended to every kernel by src/gpu/shader.ts: the per-step uniform (src/gpu/ops_api.ts) and
// the index helpers of the 2-D dispatches that src/gpu/ops.ts issues past 65535 workgroups.

// MAX_STEP_TOKENS, ABSENT_SLOT, MAX_EXPERTS and MAX_HEAD_DIM come from src/gpu/kernel_interface.ts
// (SHARED_CONSTANTS), emitted ahead of this file.

struct Step {
  n_tokens: u32,
  pos0: u32,
  kv_len: u32,
  _pad: u32,
  // Token t of the step: x = its sequence's KV slab, y = its position in the sequence. One
  // sequence's tokens at pos0 + t, or one token of each of several sequences (batched decode).
  tokens: array<vec4<u32>, MAX_STEP_TOKENS>,
}

@group(0) @binding(0) var<uniform> step: Step;


// Linear workgroup index of a dispatch of (x, y, 1) workgroups, x at most 65535.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.y * nwg.x + wid.x;
}
