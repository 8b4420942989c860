// Experts, stage 2: y[pair, d] = down_e[d,:]·h[pair,:], same slot rules as experts_gate_up.wgsl
// (absent or other-pool pairs write nothing). One invocation per (pair, d).

struct Params {
  slot_base: u32,
  pool_first_slot: u32,
  pool_slots: u32,
  slot_elems: u32,
  k: u32,
  hidden: u32,
  inter: u32,
  _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>; // [T*K, I/4]
@group(0) @binding(3) var<storage, read> idx: array<u32>; // [T, K]
@group(0) @binding(4) var<storage, read> slots: array<u32>; // [L*E]
@group(0) @binding(5) var<storage, read> weights: array<WeightWord>; // pool: slots of gate|up|down
@group(0) @binding(6) var<storage, read_write> y: array<f32>; // [T*K, D]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let pair = id / p.hidden;
  let d = id % p.hidden;
  if (pair >= step.n_tokens * p.k) {
    return;
  }
  let s = slots[p.slot_base + idx[pair]];
  if (s == ABSENT_SLOT || s < p.pool_first_slot || s >= p.pool_first_slot + p.pool_slots) {
    return;
  }
  let down_row = p.slot_elems * (s - p.pool_first_slot) + 2u * p.inter * p.hidden + d * p.inter;
  let i4 = p.inter / 4u;
  let h_row = pair * i4;
  var acc = vec4<f32>(0.0);
  for (var c = 0u; c < i4; c++) {
    acc += load_w4(down_row + c * 4u) * h[h_row + c];
  }
  y[pair * p.hidden + d] = (acc.x + acc.y) + (acc.z + acc.w);
}
