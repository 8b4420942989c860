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

// The tiled expert kernels' work of invocation lid of workgroup g (WG invocations a workgroup):
// x = its tile of moe_tiles.wgsl (`tile` pairs each; a step of `pairs` pairs has at most
// `grid_tiles` of them, maxTiles in src/gpu/ops.ts), y = its row set (of `row_sets`; past them
// when interleaved: nothing to do). Interleaved, workgroup g takes tile g % grid_tiles and row sets
// WG * (g / grid_tiles) onwards, so the grid's empty tile places spread over all of it (llvmpipe
// hands each of its threads one contiguous share of a grid); tile-major (the baseline) puts the
// real tiles in the first share.
fn tile_work(g: u32, lid: u32, wg: u32, row_sets: u32, tile: u32, pairs: u32, interleave: bool) -> vec2<u32> {
  if (interleave) {
    let grid_tiles = (pairs + tile - 1u) / tile + min(MAX_EXPERTS, pairs);
    return vec2<u32>(g % grid_tiles, (g / grid_tiles) * wg + lid);
  }
  let id = g * wg + lid;
  return vec2<u32>(id / row_sets, id % row_sets);
}
