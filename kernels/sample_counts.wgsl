// Sampler penalties, pass 1 of 2: over the sequence's ids[0..kv_len), counts[id] += 1 for each
// occurrence at a generated position (>= gen_start) and counts[id] |= SEEN for one in the prompt.
// One invocation per position, enough workgroups for the sequence's capacity. counts is all zero
// before (kernels/sample_penalize.wgsl clears what this adds).

// The request (src/gpu/sampler.ts writes it; every kernels/sample_*.wgsl declares the same struct).
struct Request {
  vocab: u32,
  capacity: u32,
  gen_start: u32,
  max_end: u32,
  top_k: u32,
  // ceil(top_p * 2^24)
  top_p24: u32,
  seed_lo: u32,
  seed_hi: u32,
  n_eos: u32,
  // ceil(min_p * 2^31): the least weight min_p keeps
  min_q: u32,
  inv_t: f32,
  rep: f32,
  inv_rep: f32,
  presence: f32,
  frequency: f32,
  // 0.0, added to the penalties' products that a subtraction follows: a compiler may contract
  // a * b - c into one fma (one rounding instead of two); with (a * b + zero) - c it can only fuse
  // the harmless add.
  zero: f32,
  eos: array<vec4<u32>, 2>,
}

@group(0) @binding(1) var<uniform> req: Request;
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
