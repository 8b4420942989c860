// Sampling, the draw, after kernels/sample_topk.wgsl (and sample_topp.wgsl): over the kept tokens
// (sel's cut, then min_p: exp_weight(x - M) >= min_q), the weights qw_i = exp_weight((x_i - M) *
// inv_t) and their exact sum W (64-bit); t = floor(u24 * W / 2^24) with u24 the top 24 bits of
// Philox4x32-10's first word at counter kv_len - gen_start (src/philox.ts); walking the kept
// tokens in index order, the token is the first where the running sum of qw exceeds t. One
// workgroup: each invocation sums a contiguous chunk, invocation 0 scans the chunk sums in order,
// the invocation whose chunk holds t walks it. About 2 * V / WG + WG + 20 loop iterations per
// invocation (1,460 at V = 151936).

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read> sel: Sel;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>; // [capacity]
@group(0) @binding(5) var<storage, read_write> state: array<u32>; // [4]: end, unused

const WG: u32 = 256u;
var<workgroup> picked: u32;

// The token goes to ids[kv_len]; state[0] = its length once it ends the sequence (see
// ends_sequence). Ids below kv_len are never written.
fn finish(token: u32) {
  let len = step.kv_len;
  if (len < req.capacity) {
    ids[len] = token;
  }
  if (state[0] == NONE && ends_sequence(token, len)) {
    state[0] = len + 1u;
  }
}

// Philox4x32-10 (Salmon et al., SC11; Random123's philox4x32): multipliers and key increments.
const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// The first output word of Philox4x32-10 at counter (counter, 0, 0, 0) and key.
fn philox_word0(counter: u32, key: vec2<u32>) -> u32 {
  var c = vec4<u32>(counter, 0u, 0u, 0u);
  var k = key;
  for (var round = 0u; round < 10u; round++) {
    if (round > 0u) {
      k = k + vec2<u32>(PHILOX_W0, PHILOX_W1);
    }
    let hi0 = mulhi(PHILOX_M0, c.x);
    let lo0 = PHILOX_M0 * c.x;
    let hi1 = mulhi(PHILOX_M1, c.z);
    let lo1 = PHILOX_M1 * c.z;
    c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
  }
  return c.x;
}

// Whether token i (value v) survives the filters: in the cut, and its weight at least min_q.
fn kept(v: f32, i: u32, m: f32, cut_key: u32, cut_idx: u32) -> bool {
  return in_cut(order_key(v), i, cut_key, cut_idx) && (req.min_q == 0u || exp_weight(v - m) >= req.min_q);
}

// Its weight in the draw.
fn draw_weight(v: f32, m: f32) -> vec2<u32> {
  return vec2<u32>(exp_weight((v - m) * req.inv_t), 0u);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let m = sel.m;
  let cut_key = sel.cut_key;
  let cut_idx = sel.cut_idx;
  let r = chunk_range(lid);
  var w = vec2<u32>(0u, 0u);
  for (var i = r.x; i < r.y; i++) {
    let v = x[i];
    if (kept(v, i, m, cut_key, cut_idx)) {
      w = add64(w, draw_weight(v, m));
    }
  }
  if (lid == 0u) {
    picked = NONE; // stays so only if the walk below failed: a visible error
  }
  let span = scan64(lid, vec2<u32>(0u, 0u), w);
  let u24 = philox_word0(step.kv_len - req.gen_start, vec2<u32>(req.seed_lo, req.seed_hi)) >> 8u;
  let t = mul_frac24(u24, workgroupUniformLoad(&scan_64[WG - 1u]), false);
  if (!less64(t, span[0]) && less64(t, span[1])) {
    var run = span[0];
    for (var i = r.x; i < r.y; i++) {
      let v = x[i];
      if (kept(v, i, m, cut_key, cut_idx)) {
        run = add64(run, draw_weight(v, m));
        if (less64(t, run)) {
          picked = i;
          break;
        }
      }
    }
  }
  workgroupBarrier();
  if (lid == 0u) {
    finish(picked);
  }
}
