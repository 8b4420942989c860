// Experts, stage 1, for many tokens: same result as experts_gate_up.wgsl, but pairs are grouped by
// expert (tiles from moe_tiles.wgsl) and each invocation computes ROWS rows of gate and up for
// the up to TILE pairs of one tile, so every weight load serves TILE pairs.

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
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [T, D/4]
@group(0) @binding(3) var<storage, read> tiles: array<u32>; // moe_tiles.wgsl layout
@group(0) @binding(4) var<storage, read> slots: array<u32>; // [L*E]
@group(0) @binding(5) var<storage, read_write> missed: array<u32>; // [L*E]
@group(0) @binding(6) var<storage, read_write> h: array<f32>; // [T*K, I]
// Bindings 7..: the group's pool buffers (gate|up|down slots), weights_p<b> (src/gpu/shader.ts).

// Pairs per tile, set per pipeline (<= MAX_TILE); matches the tiles moe_tiles.wgsl cut.
override TILE: u32 = 8u;
const MAX_TILE: u32 = 8u;
// Workgroup order, set per pipeline: 1 interleaved, 0 tile-major (the baseline): tile_work() in
// common.wgsl.
override INTERLEAVE: u32 = 1u;
const ROWS: u32 = 4u;
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
  let row_sets = (p.inter + ROWS - 1u) / ROWS;
  let pairs = step.n_tokens * p.k;
  let work = tile_work(group_index(wid, nwg), lid, WG, row_sets, TILE, pairs, INTERLEAVE == 1u);
  let tile = work.x;
  if (work.y >= row_sets) {
    return;
  }
  let i0 = work.y * ROWS;
  let entry = tile_entry(tile); // (moe_tile.wgsl)
  if (entry.z == 0u) {
    return;
  }
  let e = entry.x;
  let first = entry.y;
  let count = entry.z;
  let s = slots[p.slot_base + e];
  if (s == ABSENT_SLOT) {
    if (i0 == 0u) {
      missed[p.slot_base + e] = 1u;
    }
    return;
  }
  if (s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let local = s - p.first_slot;
  gate_up_tile(local / p.slots_per_pool, local % p.slots_per_pool, first, count, i0);
}

// @pool-begin
fn gate_up_tile(slot: u32, first: u32, count: u32, i0: u32) {
  let D = p.hidden;
  let d4 = D / 4u;
  let base = p.slot_elems * slot + p.part_offset;
  let up = p.inter * D; // gate [I, D] then up [I, D]
  // Rows past I re-read row I-1 (valid memory) and are never stored.
  let g0 = base + min(i0, p.inter - 1u) * D;
  let g1 = base + min(i0 + 1u, p.inter - 1u) * D;
  let g2 = base + min(i0 + 2u, p.inter - 1u) * D;
  let g3 = base + min(i0 + 3u, p.inter - 1u) * D;
  var xr: array<u32, MAX_TILE>; // x row of each pair (past count: the last pair again, never stored)
  var g: array<vec4<f32>, MAX_TILE>; // g[j][r]: pair j, row i0 + r
  var u: array<vec4<f32>, MAX_TILE>;
  for (var j = 0u; j < TILE; j++) {
    xr[j] = (tiles[first + min(j, count - 1u)] / p.k) * d4;
    g[j] = vec4<f32>(0.0);
    u[j] = vec4<f32>(0.0);
  }
  let d8 = D & ~7u;
  for (var c = 0u; c < d8; c += 8u) {
    let wg0 = load_w8(g0 + c);
    let wg1 = load_w8(g1 + c);
    let wg2 = load_w8(g2 + c);
    let wg3 = load_w8(g3 + c);
    let wu0 = load_w8(g0 + up + c);
    let wu1 = load_w8(g1 + up + c);
    let wu2 = load_w8(g2 + up + c);
    let wu3 = load_w8(g3 + up + c);
    for (var j = 0u; j < TILE; j++) {
      let xa = x[xr[j] + c / 4u];
      let xb = x[xr[j] + c / 4u + 1u];
      g[j] += dot4r(wg0, wg1, wg2, wg3, xa, xb);
      u[j] += dot4r(wu0, wu1, wu2, wu3, xa, xb);
    }
  }
  if (d8 != D) { // D = 8m + 4: the last four columns
    let wg = mat4x4<f32>(load_w4(g0 + d8), load_w4(g1 + d8), load_w4(g2 + d8), load_w4(g3 + d8));
    let wu = mat4x4<f32>(
      load_w4(g0 + up + d8),
      load_w4(g1 + up + d8),
      load_w4(g2 + up + d8),
      load_w4(g3 + up + d8),
    );
    for (var j = 0u; j < TILE; j++) {
      let xv = x[xr[j] + d8 / 4u];
      g[j] += xv * wg;
      u[j] += xv * wu;
    }
  }
  for (var j = 0u; j < TILE; j++) {
    if (j < count) {
      let act = g[j] / (vec4<f32>(1.0) + exp(-g[j])) * u[j]; // silu(g) * u
      let o = tiles[first + j] * p.inter + i0;
      for (var r = 0u; r < ROWS; r++) {
        if (i0 + r < p.inter) {
          h[o + r] = act[r];
        }
      }
    }
  }
}
// @pool-end
