// Prelude: a row's sum in one lane, in workgroup_sum.wgsl's order for its 64 lanes: the caller adds
// element i of the row into part[i % LANE_PARTS] in increasing i (lane i % 64's partial sum), then
// lane_sum_total() adds the partials in the same halving tree. A kernel that gives a row to one
// lane so equals a workgroup-per-row kernel (rmsnorm.wgsl, head_norm_rope.wgsl) bit for bit.

const LANE_PARTS: u32 = 64u;

fn lane_sum_total(part: array<f32, LANE_PARTS>) -> f32 {
  var p = part;
  for (var stride = LANE_PARTS / 2u; stride > 0u; stride >>= 1u) {
    for (var j = 0u; j < stride; j++) {
      p[j] += p[j + stride];
    }
  }
  return p[0];
}
