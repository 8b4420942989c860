// Router masking (the approximate mode): before top-k, the logits of experts that are not
// resident in GPU slots become a huge negative number, so softmax gives them zero probability:
// top-k then picks the resident experts first and, when fewer than k are resident, absent ones
// with weight exactly 0 (their pairs are skipped and add nothing). A layer with fewer than
// min_resident (at least 1) resident experts is left unmasked (exact routing), so it can load
// its share of the budget.
//
// logits[t, e] for t < n_tokens, e < num_experts; slots[slot_base + e] == ABSENT_SLOT when absent.

struct Params {
  num_experts: u32,
  slot_base: u32,
  min_resident: u32,
  _pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> slots: array<u32>; // [L * E]
@group(0) @binding(3) var<storage, read_write> logits: array<f32>; // [T, E]

// Finite stand-in for -infinity (WGSL has no infinity literal): exp(MASKED - max) is exactly 0.
const MASKED: f32 = -3.0e38;
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = group_index(wid, nwg) * WG + lid;
  if (i >= step.n_tokens * p.num_experts) {
    return;
  }
  var resident = 0u;
  for (var e = 0u; e < p.num_experts; e++) {
    if (slots[p.slot_base + e] != ABSENT_SLOT) {
      resident++;
    }
  }
  if (resident < max(p.min_resident, 1u)) {
    return;
  }
  if (slots[p.slot_base + i % p.num_experts] == ABSENT_SLOT) {
    logits[i] = MASKED;
  }
}
