// Sampler penalties, pass 2 of 2: x[i] = logits[i] with the repetition penalty if token i occurs
// in the history (counts[i] != 0), then minus count * frequency + presence if it occurs among the
// generated tokens; counts[i] is reset to 0 for the next step. One invocation per token.

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> logits: array<f32>; // [vocab], row 0
@group(0) @binding(3) var<storage, read_write> counts: array<u32>; // [vocab]
@group(0) @binding(4) var<storage, read_write> x: array<f32>; // [vocab]

const WG: u32 = 64u;
// Generated occurrences in counts[i] (the top bit is kernels/sample_counts.wgsl's SEEN).
const GENERATED: u32 = 0x7fffffffu;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= req.vocab) {
    return;
  }
  let c = counts[i];
  counts[i] = 0u;
  var v = logits[i];
  if (c != 0u) {
    // rep = 1 gives v * 1 = v: no test of it needed.
    v = select(v * req.rep, v * req.inv_rep, v > 0.0) + req.zero;
    let generated = c & GENERATED;
    if (generated != 0u) {
      v = v - ((f32(generated) * req.frequency + req.zero) + req.presence);
    }
  }
  x[i] = v;
}
