// Prelude: the sum of one f32 per invocation over a workgroup of WG invocations (a power of two,
// declared by the kernel), added in a fixed tree order so every kernel that includes it sums alike.
// Call from uniform control flow; every invocation gets the total.

var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      partial[lid] += partial[lid + stride];
    }
    workgroupBarrier();
  }
  return partial[0];
}
