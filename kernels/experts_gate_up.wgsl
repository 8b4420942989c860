// Experts, stage 1: h[pair, i] = silu(gate_e[i,:]·x[t,:]) * (up_e[i,:]·x[t,:]) for pair = t*K + j,
// e = idx[pair], the expert's weights in slot slots[slot_base + e] of this pool buffer. One
// invocation per (pair, i). Pairs whose slot is ABSENT set missed[slot_base + e] = 1; pairs whose
// slot lives in another pool buffer are left to that buffer's op.

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
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [T, D/4]
@group(0) @binding(3) var<storage, read> idx: array<u32>; // [T, K]
@group(0) @binding(4) var<storage, read> slots: array<u32>; // [L*E]
@group(0) @binding(5) var<storage, read_write> missed: array<u32>; // [L*E]
@group(0) @binding(6) var<storage, read> weights: array<WeightWord>; // pool: slots of gate|up|down
@group(0) @binding(7) var<storage, read_write> h: array<f32>; // [T*K, I]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let pair = id / p.inter;
  let i = id % p.inter;
  if (pair >= step.n_tokens * p.k) {
    return;
  }
  let e = idx[pair];
  let s = slots[p.slot_base + e];
  if (s == ABSENT_SLOT) {
    if (i == 0u) {
      missed[p.slot_base + e] = 1u;
    }
    return;
  }
  if (s < p.pool_first_slot || s >= p.pool_first_slot + p.pool_slots) {
    return;
  }
  let base = p.slot_elems * (s - p.pool_first_slot);
  let gate_row = base + i * p.hidden;
  let up_row = base + p.inter * p.hidden + i * p.hidden;
  let d4 = p.hidden / 4u;
  let x_row = (pair / p.k) * d4;
  var g = vec4<f32>(0.0);
  var u = vec4<f32>(0.0);
  for (var c = 0u; c < d4; c++) {
    let xv = x[x_row + c];
    g += load_w4(gate_row + c * 4u) * xv;
    u += load_w4(up_row + c * 4u) * xv;
  }
  let gs = (g.x + g.y) + (g.z + g.w);
  let us = (u.x + u.y) + (u.z + u.w);
  h[pair * p.inter + i] = gs / (1.0 + exp(-gs)) * us;
}
