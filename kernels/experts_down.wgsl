// Experts, stage 2: y[pair, d] = down_e[d,:]·h[pair,:], same slot rules as experts_gate_up.wgsl
// (absent pairs and pairs of another group write nothing). One invocation per (pair, ROWS consecutive d), so
// each h load serves ROWS weight rows.

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
  let row_sets = (p.hidden + ROWS - 1u) / ROWS;
  let pair = id / row_sets;
  let d0 = (id % row_sets) * ROWS;
  if (pair >= step.n_tokens * p.k) {
    return;
  }
  let s = slots[p.slot_base + idx[pair]];
  if (s == ABSENT_SLOT || s < p.first_slot || s >= p.first_slot + p.group_slots) {
    return;
  }
  let local = s - p.first_slot;
  down_rows(local / p.slots_per_pool, local % p.slots_per_pool, pair, d0);
}

// @pool-begin
fn down_rows(slot: u32, pair: u32, d0: u32) {
  let I = p.inter;
  let down = p.slot_elems * slot + p.part_offset;
  // Rows past D re-read row D-1 (valid memory) and are never stored.
  let r0 = down + min(d0, p.hidden - 1u) * I;
  let r1 = down + min(d0 + 1u, p.hidden - 1u) * I;
  let r2 = down + min(d0 + 2u, p.hidden - 1u) * I;
  let r3 = down + min(d0 + 3u, p.hidden - 1u) * I;
  let h_row = pair * (I / 4u);
  var acc = vec4<f32>(0.0);
  let i8 = I & ~7u;
  for (var c = 0u; c < i8; c += 8u) {
    let ha = h[h_row + c / 4u];
    let hb = h[h_row + c / 4u + 1u];
    acc += vec4<f32>(
      dot8(load_w8(r0 + c), ha, hb),
      dot8(load_w8(r1 + c), ha, hb),
      dot8(load_w8(r2 + c), ha, hb),
      dot8(load_w8(r3 + c), ha, hb),
    );
  }
  if (i8 != I) { // I = 8m + 4: the last four columns
    acc += h[h_row + i8 / 4u] *
      mat4x4<f32>(load_w4(r0 + i8), load_w4(r1 + i8), load_w4(r2 + i8), load_w4(r3 + i8));
  }
  for (var r = 0u; r < ROWS; r++) {
    if (d0 + r < p.hidden) {
      y[pair * p.hidden + d0 + r] = acc[r];
    }
  }
}
// @pool-end
