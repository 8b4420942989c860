// Experts, stage 1: h[pair, i] = silu(gate_e[i,:]·x[t,:]) * (up_e[i,:]·x[t,:]) for pair = t*K + j,
// e = idx[pair], the expert's weights in slot slots[slot_base + e] of this op's group of pool
// buffers. One invocation per (pair, ROWS consecutive rows i), so each x load serves 2*ROWS weight
// rows. Pairs whose slot is ABSENT set missed[slot_base + e] = 1; pairs whose slot lives in
// another group are left to that group's op. Neither writes h.

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

const ROWS: u32 = 4u;
const WG: u32 = 64u;

fn dot8(w: W8, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(w.lo, xa) + dot(w.hi, xb);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let row_sets = (p.inter + ROWS - 1u) / ROWS;
  let pair = id / row_sets;
  let i0 = (id % row_sets) * ROWS;
  if (pair >= step.n_tokens * p.k) {
    return;
  }
  let e = idx[pair];
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
  gate_up_rows(local / p.slots_per_pool, local % p.slots_per_pool, pair, i0);
}

// @pool-begin
fn gate_up_rows(slot: u32, pair: u32, i0: u32) {
  let D = p.hidden;
  let base = p.slot_elems * slot + p.part_offset;
  // Rows past I re-read row I-1 (valid memory) and are never stored.
  let g0 = base + min(i0, p.inter - 1u) * D;
  let g1 = base + min(i0 + 1u, p.inter - 1u) * D;
  let g2 = base + min(i0 + 2u, p.inter - 1u) * D;
  let g3 = base + min(i0 + 3u, p.inter - 1u) * D;
  let up = p.inter * D; // gate [I, D] then up [I, D]
  let x_row = (pair / p.k) * (D / 4u);
  var g = vec4<f32>(0.0);
  var u = vec4<f32>(0.0);
  let d8 = D & ~7u;
  for (var c = 0u; c < d8; c += 8u) {
    let xa = x[x_row + c / 4u];
    let xb = x[x_row + c / 4u + 1u];
    g += vec4<f32>(
      dot8(load_w8(g0 + c), xa, xb),
      dot8(load_w8(g1 + c), xa, xb),
      dot8(load_w8(g2 + c), xa, xb),
      dot8(load_w8(g3 + c), xa, xb),
    );
    u += vec4<f32>(
      dot8(load_w8(g0 + up + c), xa, xb),
      dot8(load_w8(g1 + up + c), xa, xb),
      dot8(load_w8(g2 + up + c), xa, xb),
      dot8(load_w8(g3 + up + c), xa, xb),
    );
  }
  if (d8 != D) { // D = 8m + 4: the last four columns
    let xv = x[x_row + d8 / 4u];
    g += xv * mat4x4<f32>(load_w4(g0 + d8), load_w4(g1 + d8), load_w4(g2 + d8), load_w4(g3 + d8));
    u += xv * mat4x4<f32>(
      load_w4(g0 + up + d8),
      load_w4(g1 + up + d8),
      load_w4(g2 + up + d8),
      load_w4(g3 + up + d8),
    );
  }
  let act = g / (vec4<f32>(1.0) + exp(-g)) * u; // silu(g) * u
  for (var r = 0u; r < ROWS; r++) {
    if (i0 + r < p.inter) {
      h[pair * p.inter + i0 + r] = act[r];
    }
  }
}
// @pool-end
