// Sampler penalties, pass 1 of 2: over the sequence's ids[0..kv_len), counts[id] += 1 for each
// occurrence at a generated position (>= gen_start) and counts[id] |= SEEN for one in the prompt.
// One invocation per position, enough workgroups for the sequence's capacity. counts is all zero
// before (kernels/sample_penalize.wgsl clears what this adds).

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> ids: array<u32>; // [capacity]
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>; // [vocab]

const WG: u32 = 64u;
// Set in counts[id] when id occurs in the prompt; the low bits count generated occurrences.
const SEEN: u32 = 0x80000000u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let pos = gid.x;
  if (pos >= step.kv_len || pos >= req.capacity) {
    return;
  }
  let id = ids[pos];
  if (id >= req.vocab) {
    return;
  }
  if (pos >= req.gen_start) {
    atomicAdd(&counts[id], 1u);
  } else {
    atomicOr(&counts[id], SEEN);
  }
}
