// Experts, stage 1, for many tokens, the way a GPU reads memory: the tiles of
// experts_gate_up_tiled.wgsl (pairs grouped by expert by moe_tiles.wgsl, up to TILE pairs of one
// expert), but a workgroup per (tile, ROWS consecutive rows i): LANES lanes a row read
// consecutive 16-byte words of its gate and up rows, each word serving the tile's TILE pairs, and
// the workgroup adds the lanes' partial sums in workgroup memory, a pair at a time
// (experts_gate_up_tiled.wgsl gives a lane 4 whole rows, which llvmpipe wants and a GPU does
// not). Same Params, bindings and slot rules.

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
const ROWS: u32 = 8u;
// Lanes (set per adapter: 256 on GPUs, fewer on llvmpipe, which compiles large workgroups slowly).
const WG: u32 = 256u;
const LANES: u32 = WG / ROWS;

// The workgroup's tile, read by one lane and shared (workgroupUniformLoad): slot, first entry of
// its pairs in the ordered list, pair count (0: past the step's tiles), expert.
var<workgroup> tile_info: vec4<u32>;
// Partial sums of one pair, lane l of row r at r * LANES + l: gate, up.
var<workgroup> part_g: array<f32, WG>;
var<workgroup> part_u: array<f32, WG>;
// This lane's partial sums of the tile's pairs (written by the pool section's function).
var<private> acc_g: array<f32, MAX_TILE>;
var<private> acc_u: array<f32, MAX_TILE>;

fn dot8(w: W8, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(w.lo, xa) + dot(w.hi, xb);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let g = group_index(wid, nwg);
  let row_sets = (p.inter + ROWS - 1u) / ROWS;
  let tile = g / row_sets;
  let i0 = (g % row_sets) * ROWS;
  if (lid == 0u) {
    let entry = tile_entry(tile); // (moe_tile.wgsl; count 0: no tile)
    var info = vec4<u32>(0u);
    if (entry.z != 0u) {
      info = vec4<u32>(slots[p.slot_base + entry.x], entry.y, entry.z, entry.x);
    }
    tile_info = info;
  }
  let info = workgroupUniformLoad(&tile_info);
  let s = info.x;
  if (info.z == 0u) {
    return;
  }
  if (s == ABSENT_SLOT) {
    if (i0 == 0u && lid == 0u) {
      missed[p.slot_base + info.w] = 1u;
    }
    return;
  }
  if (s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let first = info.y;
  let count = info.z;
  let local = s - p.first_slot;
  let r = lid / LANES;
  let l = lid % LANES;
  let i = i0 + r;
  gate_up_tile_partials(local / p.slots_per_pool, local % p.slots_per_pool, first, count, i, lid);
  for (var j = 0u; j < TILE; j++) {
    if (j >= count) { // uniform: count is the workgroup's
      break;
    }
    part_g[lid] = acc_g[j];
    part_u[lid] = acc_u[j];
    workgroupBarrier();
    for (var w = LANES / 2u; w > 0u; w >>= 1u) {
      if (l < w) {
        part_g[lid] += part_g[lid + w];
        part_u[lid] += part_u[lid + w];
      }
      workgroupBarrier();
    }
    if (l == 0u && i < p.inter) {
      let gv = part_g[lid];
      h[tiles[first + j] * p.inter + i] = gv / (1.0 + exp(-gv)) * part_u[lid]; // silu(g) * u
    }
    workgroupBarrier(); // (the next pair's partials overwrite these)
  }
}

// @pool-begin
// Lane lid's partial sums of row i (rows past I re-read row I-1: valid memory, never stored) for
// each of the tile's pairs into acc_g, acc_u: the row's chunks of 8 columns lid % LANES, + LANES,
// ... (pairs past count repeat the last one, never stored).
fn gate_up_tile_partials(slot: u32, first: u32, count: u32, i: u32, lid: u32) {
  let D = p.hidden;
  let d4 = D / 4u;
  let row = p.slot_elems * slot + p.part_offset + min(i, p.inter - 1u) * D;
  let up = p.inter * D; // gate [I, D] then up [I, D]
  let l = lid % LANES;
  var xr: array<u32, MAX_TILE>; // x row of each pair
  for (var j = 0u; j < TILE; j++) {
    xr[j] = (tiles[first + min(j, count - 1u)] / p.k) * d4;
    acc_g[j] = 0.0;
    acc_u[j] = 0.0;
  }
  let chunks = D / 8u;
  for (var c = l; c < chunks; c += LANES) {
    let wg = load_w8(row + c * 8u);
    let wu = load_w8(row + up + c * 8u);
    for (var j = 0u; j < TILE; j++) {
      let xa = x[xr[j] + c * 2u];
      let xb = x[xr[j] + c * 2u + 1u];
      acc_g[j] += dot8(wg, xa, xb);
      acc_u[j] += dot8(wu, xa, xb);
    }
  }
  let d8 = chunks * 8u;
  if (d8 != D && l == 0u) { // D = 8m + 4: the last four columns
    let wg = load_w4(row + d8);
    let wu = load_w4(row + up + d8);
    for (var j = 0u; j < TILE; j++) {
      let xv = x[xr[j] + d8 / 4u];
      acc_g[j] += dot(wg, xv);
      acc_u[j] += dot(wu, xv);
    }
  }
}
// @pool-end
