// Experts, stage 1, the way a GPU reads memory (decode): h[pair, i] = silu(gate_e[i,:]·x[t,:]) *
// (up_e[i,:]·x[t,:]) as experts_gate_up.wgsl, but a workgroup per (pair, ROWS consecutive rows
// i): LANES lanes a row read consecutive 16-byte words of its gate and up rows, and the workgroup
// adds their partial sums in workgroup memory (experts_gate_up.wgsl gives a lane 4 whole rows,
// which llvmpipe wants and a GPU does not). Same Params, bindings and slot rules: pairs whose
// slot is ABSENT set missed[slot_base + e] = 1; pairs of another group are left to its op.

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
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [T, D/4]
@group(0) @binding(3) var<storage, read> idx: array<u32>; // [T, K]
@group(0) @binding(4) var<storage, read> slots: array<u32>; // [L*E]
@group(0) @binding(5) var<storage, read_write> missed: array<u32>; // [L*E]
@group(0) @binding(6) var<storage, read_write> h: array<f32>; // [T*K, I]
// Bindings 7..: the group's pool buffers (gate|up|down slots), weights_p<b> (src/gpu/shader.ts).

const ROWS: u32 = 8u;
const WG: u32 = 256u;
const LANES: u32 = WG / ROWS;

// The pair's slot, read by one lane and shared (workgroupUniformLoad), so that every branch on it
// is uniform and the barriers after them are allowed.
var<workgroup> pair_slot: u32;
// Partial sums of lane l of row r at r * LANES + l: gate, up.
var<workgroup> part_g: array<f32, WG>;
var<workgroup> part_u: array<f32, WG>;

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
  let pair = g / row_sets;
  let i0 = (g % row_sets) * ROWS;
  if (pair >= step.n_tokens * p.k) { // the whole workgroup
    return;
  }
  let e = idx[pair];
  if (lid == 0u) {
    pair_slot = slots[p.slot_base + e];
  }
  let s = workgroupUniformLoad(&pair_slot);
  if (s == ABSENT_SLOT) {
    if (i0 == 0u && lid == 0u) {
      missed[p.slot_base + e] = 1u;
    }
    return;
  }
  if (s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let local = s - p.first_slot;
  let r = lid / LANES;
  let l = lid % LANES;
  gate_up_partials(local / p.slots_per_pool, local % p.slots_per_pool, pair, i0 + r, lid);
  workgroupBarrier();
  for (var w = LANES / 2u; w > 0u; w >>= 1u) {
    if (l < w) {
      part_g[lid] += part_g[lid + w];
      part_u[lid] += part_u[lid + w];
    }
    workgroupBarrier();
  }
  let i = i0 + r;
  if (l == 0u && i < p.inter) {
    let gv = part_g[lid];
    h[pair * p.inter + i] = gv / (1.0 + exp(-gv)) * part_u[lid]; // silu(g) * u
  }
}

// @pool-begin
// Lane lid's partial sums of row i (rows past I re-read row I-1: valid memory, never stored) into
// part_g[lid], part_u[lid]: the row's chunks of 8 columns lid % LANES, + LANES, ...
fn gate_up_partials(slot: u32, pair: u32, i: u32, lid: u32) {
  let D = p.hidden;
  let row = p.slot_elems * slot + p.part_offset + min(i, p.inter - 1u) * D;
  let up = p.inter * D; // gate [I, D] then up [I, D]
  let x_row = (pair / p.k) * (D / 4u);
  let l = lid % LANES;
  var g = 0.0;
  var u = 0.0;
  let chunks = D / 8u;
  for (var c = l; c < chunks; c += LANES) {
    let xa = x[x_row + c * 2u];
    let xb = x[x_row + c * 2u + 1u];
    g += dot8(load_w8(row + c * 8u), xa, xb);
    u += dot8(load_w8(row + up + c * 8u), xa, xb);
  }
  let d8 = chunks * 8u;
  if (d8 != D && l == 0u) { // D = 8m + 4: the last four columns
    let xv = x[x_row + d8 / 4u];
    g += dot(load_w4(row + d8), xv);
    u += dot(load_w4(row + up + d8), xv);
  }
  part_g[lid] = g;
  part_u[lid] = u;
}
// @pool-end
