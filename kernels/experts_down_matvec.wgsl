// Experts, stage 2, the way a GPU reads memory (decode): y[pair, d] = down_e[d,:]·h[pair,:] as
// experts_down.wgsl, but a workgroup per (pair, ROWS consecutive d): LANES lanes a row read
// consecutive 16-byte words of it, and the workgroup adds their partial sums in workgroup memory
// (experts_down.wgsl gives a lane 4 whole rows, which llvmpipe wants and a GPU does not). Same
// Params, bindings and slot rules (absent pairs and pairs of another group write nothing).

struct Params {
  slot_base: u32,
  first_slot: u32, // the group's slots: [first_slot, first_slot + group_slots)
  group_slots: u32,
  slot_elems: u32,
  k: u32,
  hidden: u32,
  inter: u32,
  part_offset: u32, // this kernel's part (gate, or down) inside a slot, in elements of its dtype
  slots_per_pool: u32, // pool buffer b of the group holds its slots b*slots_per_pool onwards
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>; // [T*K, I/4]
@group(0) @binding(3) var<storage, read> idx: array<u32>; // [T, K]
@group(0) @binding(4) var<storage, read> slots: array<u32>; // [L*E]
@group(0) @binding(5) var<storage, read_write> y: array<f32>; // [T*K, D]
// Bindings 6..: the group's pool buffers (gate|up|down slots), weights_p<b> (src/gpu/shader.ts).

const ROWS: u32 = 8u;
// Lanes (set per adapter: 256 on GPUs, fewer on llvmpipe, which compiles large workgroups slowly).
const WG: u32 = 256u;
const LANES: u32 = WG / ROWS;

// The pair's slot, read by one lane and shared (workgroupUniformLoad), so that every branch on it
// is uniform and the barriers after them are allowed.
var<workgroup> pair_slot: u32;
// Partial sums of lane l of row r at r * LANES + l.
var<workgroup> part: array<f32, WG>;

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
  let pair = g / row_sets;
  let d0 = (g % row_sets) * ROWS;
  if (pair >= step.n_tokens * p.k) { // the whole workgroup
    return;
  }
  if (lid == 0u) {
    pair_slot = slots[p.slot_base + idx[pair]];
  }
  let s = workgroupUniformLoad(&pair_slot);
  if (s == ABSENT_SLOT || s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let local = s - p.first_slot;
  let r = lid / LANES;
  let l = lid % LANES;
  down_partials(local / p.slots_per_pool, local % p.slots_per_pool, pair, d0 + r, lid);
  workgroupBarrier();
  for (var w = LANES / 2u; w > 0u; w >>= 1u) {
    if (l < w) {
      part[lid] += part[lid + w];
    }
    workgroupBarrier();
  }
  let d = d0 + r;
  if (l == 0u && d < p.hidden) {
    y[pair * p.hidden + d] = part[lid];
  }
}

// @pool-begin
// Lane lid's partial sum of row d (rows past D re-read row D-1: valid memory, never stored) into
// part[lid]: the row's chunks of 8 columns lid % LANES, + LANES, ...
fn down_partials(slot: u32, pair: u32, d: u32, lid: u32) {
  let I = p.inter;
  let row = p.slot_elems * slot + p.part_offset + min(d, p.hidden - 1u) * I;
  let h_row = pair * (I / 4u);
  let l = lid % LANES;
  var acc = 0.0;
  let chunks = I / 8u;
  for (var c = l; c < chunks; c += LANES) {
    acc += dot8(load_w8(row + c * 8u), h[h_row + c * 2u], h[h_row + c * 2u + 1u]);
  }
  let i8 = chunks * 8u;
  if (i8 != I && l == 0u) { // I = 8m + 4: the last four columns
    acc += dot(load_w4(row + i8), h[h_row + i8 / 4u]);
  }
  part[lid] = acc;
}
// @pool-end
