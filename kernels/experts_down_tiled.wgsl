// Experts, stage 2, for many tokens: same result as experts_down.wgsl, but pairs are grouped by
// expert (tiles from moe_tiles.wgsl) and each invocation computes ROWS rows d for the up to TILE
// pairs of one tile, so every weight load serves TILE pairs.

struct Params {
  slot_base: u32,
  first_slot: u32, // the group's slots: [first_slot, first_slot + group_slots)
  group_slots: u32,
  slot_elems: u32,
  k: u32,
  hidden: u32,
  inter: u32,
  num_experts: u32,
  part_offset: u32, // this kernel's part (gate, or down) inside a slot, in elements of its dtype
  slots_per_pool: u32, // pool buffer b of the group holds its slots b*slots_per_pool onwards
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>; // [T*K, I/4]
@group(0) @binding(3) var<storage, read> tiles: array<u32>; // moe_tiles.wgsl layout
@group(0) @binding(4) var<storage, read> slots: array<u32>; // [L*E]
@group(0) @binding(5) var<storage, read_write> y: array<f32>; // [T*K, D]
// Bindings 6..: the group's pool buffers (gate|up|down slots), weights_p<b> (src/gpu/shader.ts).

// Pairs per tile, set per pipeline (<= MAX_TILE); matches the tiles moe_tiles.wgsl cut.
override TILE: u32 = 8u;
const MAX_TILE: u32 = 8u;
// Workgroup order, set per pipeline: 1 interleaved, 0 tile-major (the baseline): tile_work() in
// common.wgsl.
override INTERLEAVE: u32 = 1u;
// Rows per invocation: two vec4 accumulators (lo: rows 0..3, hi: rows 4..7) per pair.
const ROWS: u32 = 8u;
const WG: u32 = 16u;

fn dot8(w: W8, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(w.lo, xa) + dot(w.hi, xb);
}

fn dot4r(w0: W8, w1: W8, w2: W8, w3: W8, xa: vec4<f32>, xb: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dot8(w0, xa, xb), dot8(w1, xa, xb), dot8(w2, xa, xb), dot8(w3, xa, xb));
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row_sets = (p.hidden + ROWS - 1u) / ROWS;
  let pairs = step.n_tokens * p.k;
  let work = tile_work(group_index(wid, nwg), lid, WG, row_sets, TILE, pairs, INTERLEAVE == 1u);
  let tile = work.x;
  if (work.y >= row_sets) {
    return;
  }
  let d0 = work.y * ROWS;
  let entry = tile_entry(tile); // (moe_tile.wgsl)
  if (entry.z == 0u) {
    return;
  }
  let s = slots[p.slot_base + entry.x];
  if (s == ABSENT_SLOT || s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let first = entry.y;
  let count = entry.z;
  let local = s - p.first_slot;
  down_tile(local / p.slots_per_pool, local % p.slots_per_pool, first, count, d0);
}

// @pool-begin
fn down_tile(slot: u32, first: u32, count: u32, d0: u32) {
  let I = p.inter;
  let i4 = I / 4u;
  let down = p.slot_elems * slot + p.part_offset;
  // Rows past D re-read row D-1 (valid memory) and are never stored.
  let last = p.hidden - 1u;
  let r0 = down + min(d0, last) * I;
  let r1 = down + min(d0 + 1u, last) * I;
  let r2 = down + min(d0 + 2u, last) * I;
  let r3 = down + min(d0 + 3u, last) * I;
  let r4 = down + min(d0 + 4u, last) * I;
  let r5 = down + min(d0 + 5u, last) * I;
  let r6 = down + min(d0 + 6u, last) * I;
  let r7 = down + min(d0 + 7u, last) * I;
  var hr: array<u32, MAX_TILE>; // h row of each pair (past count: the last pair again, never stored)
  var lo: array<vec4<f32>, MAX_TILE>; // lo[j][r]: pair j, row d0 + r
  var hi: array<vec4<f32>, MAX_TILE>; // hi[j][r]: pair j, row d0 + 4 + r
  for (var j = 0u; j < TILE; j++) {
    hr[j] = tiles[first + min(j, count - 1u)] * i4;
    lo[j] = vec4<f32>(0.0);
    hi[j] = vec4<f32>(0.0);
  }
  let i8 = I & ~7u;
  for (var c = 0u; c < i8; c += 8u) {
    let w0 = load_w8(r0 + c);
    let w1 = load_w8(r1 + c);
    let w2 = load_w8(r2 + c);
    let w3 = load_w8(r3 + c);
    let w4 = load_w8(r4 + c);
    let w5 = load_w8(r5 + c);
    let w6 = load_w8(r6 + c);
    let w7 = load_w8(r7 + c);
    for (var j = 0u; j < TILE; j++) {
      let ha = h[hr[j] + c / 4u];
      let hb = h[hr[j] + c / 4u + 1u];
      lo[j] += dot4r(w0, w1, w2, w3, ha, hb);
      hi[j] += dot4r(w4, w5, w6, w7, ha, hb);
    }
  }
  if (i8 != I) { // I = 8m + 4: the last four columns
    let wl = mat4x4<f32>(load_w4(r0 + i8), load_w4(r1 + i8), load_w4(r2 + i8), load_w4(r3 + i8));
    let wh = mat4x4<f32>(load_w4(r4 + i8), load_w4(r5 + i8), load_w4(r6 + i8), load_w4(r7 + i8));
    for (var j = 0u; j < TILE; j++) {
      let hv = h[hr[j] + i8 / 4u];
      lo[j] += hv * wl;
      hi[j] += hv * wh;
    }
  }
  for (var j = 0u; j < TILE; j++) {
    if (j < count) {
      let o = tiles[first + j] * p.hidden + d0;
      for (var r = 0u; r < ROWS; r++) {
        if (d0 + r < p.hidden) {
          y[o + r] = select(hi[j][r - 4u], lo[j][r], r < 4u);
        }
      }
    }
  }
}
// @pool-end
