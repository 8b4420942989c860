// Experts, stage 2, for many tokens, the way a GPU reads memory: the tiles of
// experts_down_tiled.wgsl (pairs grouped by expert, up to TILE pairs of one expert), but a
// workgroup per (tile, ROWS consecutive rows d): LANES lanes a row read consecutive 16-byte words
// of it, each word serving the tile's TILE pairs, and the workgroup adds the lanes' partial sums
// in workgroup memory, a pair at a time. Same Params, bindings and slot rules as
// experts_down_tiled.wgsl (absent pairs and pairs of another group write nothing).

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
const ROWS: u32 = 8u;
// Lanes (set per adapter: 256 on GPUs, fewer on llvmpipe, which compiles large workgroups slowly).
const WG: u32 = 256u;
const LANES: u32 = WG / ROWS;

// The workgroup's tile, read by one lane and shared (workgroupUniformLoad): slot, first entry of
// its pairs in the ordered list, pair count (0: past the step's tiles).
var<workgroup> tile_info: vec4<u32>;
// Partial sums of one pair, lane l of row r at r * LANES + l.
var<workgroup> part: array<f32, WG>;
// This lane's partial sums of the tile's pairs (written by the pool section's function).
var<private> acc: array<f32, MAX_TILE>;

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
  let row_sets = (p.hidden + ROWS - 1u) / ROWS;
  let tile = g / row_sets;
  let d0 = (g % row_sets) * ROWS;
  if (lid == 0u) {
    let entry = tile_entry(tile); // (moe_tile.wgsl; count 0: no tile)
    var info = vec4<u32>(0u);
    if (entry.z != 0u) {
      info = vec4<u32>(slots[p.slot_base + entry.x], entry.y, entry.z, 0u);
    }
    tile_info = info;
  }
  let info = workgroupUniformLoad(&tile_info);
  let s = info.x;
  if (info.z == 0u || s == ABSENT_SLOT || s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let first = info.y;
  let count = info.z;
  let local = s - p.first_slot;
  let r = lid / LANES;
  let l = lid % LANES;
  let d = d0 + r;
  down_tile_partials(local / p.slots_per_pool, local % p.slots_per_pool, first, count, d, lid);
  for (var j = 0u; j < TILE; j++) {
    if (j >= count) { // uniform: count is the workgroup's
      break;
    }
    part[lid] = acc[j];
    workgroupBarrier();
    for (var w = LANES / 2u; w > 0u; w >>= 1u) {
      if (l < w) {
        part[lid] += part[lid + w];
      }
      workgroupBarrier();
    }
    if (l == 0u && d < p.hidden) {
      y[tiles[first + j] * p.hidden + d] = part[lid];
    }
    workgroupBarrier(); // (the next pair's partials overwrite these)
  }
}

// @pool-begin
// Lane lid's partial sums of row d (rows past D re-read row D-1: valid memory, never stored) for
// each of the tile's pairs into acc: the row's chunks of 8 columns lid % LANES, + LANES, ...
// (pairs past count repeat the last one, never stored).
fn down_tile_partials(slot: u32, first: u32, count: u32, d: u32, lid: u32) {
  let I = p.inter;
  let i4 = I / 4u;
  let row = p.slot_elems * slot + p.part_offset + min(d, p.hidden - 1u) * I;
  let l = lid % LANES;
  var hr: array<u32, MAX_TILE>; // h row of each pair
  for (var j = 0u; j < TILE; j++) {
    hr[j] = tiles[first + min(j, count - 1u)] * i4;
    acc[j] = 0.0;
  }
  let chunks = I / 8u;
  for (var c = l; c < chunks; c += LANES) {
    let w = load_w8(row + c * 8u);
    for (var j = 0u; j < TILE; j++) {
      acc[j] += dot8(w, h[hr[j] + c * 2u], h[hr[j] + c * 2u + 1u]);
    }
  }
  let i8 = chunks * 8u;
  if (i8 != I && l == 0u) { // I = 8m + 4: the last four columns
    let w = load_w4(row + i8);
    for (var j = 0u; j < TILE; j++) {
      acc[j] += dot(w, h[hr[j] + i8 / 4u]);
    }
  }
}
// @pool-end
