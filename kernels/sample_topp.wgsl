// Sampling, filter 2: the top_p cut, after kernels/sample_topk.wgsl (whose M and cut it reads
// from sel and narrows). Over the kept tokens, the weights qe_i = exp_weight(x_i - M) (stored in
// qe, 0 elsewhere) and their exact sum Z (64-bit); goal = ceil(top_p24 * Z / 2^24); the new cut
// ends the shortest prefix of the order (x desc, index asc) whose sum of qe reaches goal. One
// workgroup of WG invocations, V = vocab:
//   - qe and Z: one strided pass;
//   - the key t of the prefix's last token: the largest t <= key(M) with sum(qe : key >= t) >=
//     goal, by bisection over the key's 32 bits (32 passes);
//   - the tokens at key t taken in index order until the sum reaches goal (a pass over
//     contiguous chunks, a scan of their sums from sum(qe : key > t), a walk of one chunk).
// About 35 * V / WG + 530 loop iterations per invocation (21,320 at V = 151936).

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> sel: Sel;
@group(0) @binding(4) var<storage, read_write> qe: array<u32>; // [vocab]

const WG: u32 = 256u;
var<workgroup> red_64: array<vec2<u32>, WG>;
var<workgroup> picked: u32;

// Sum (64-bit) of v over the workgroup, the same value in every invocation (a fixed tree).
fn sum64(lid: u32, v: vec2<u32>) -> vec2<u32> {
  workgroupBarrier(); // earlier readers of red_64 are done
  red_64[lid] = v;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      red_64[lid] = add64(red_64[lid], red_64[lid + s]);
    }
  }
  return workgroupUniformLoad(&red_64[0]);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let V = req.vocab;
  let m = sel.m;
  let cut_key = sel.cut_key;
  let cut_idx = sel.cut_idx;
  var z = vec2<u32>(0u, 0u);
  for (var i = lid; i < V; i += WG) {
    let v = x[i];
    var q = 0u;
    if (in_cut(order_key(v), i, cut_key, cut_idx)) {
      q = exp_weight(v - m);
    }
    qe[i] = q;
    z = add64(z, vec2<u32>(q, 0u));
  }
  let goal = mul_frac24(req.top_p24, sum64(lid, z), true);
  // The largest t <= key(M) with sum(qe : key >= t) >= goal, built from the top bit down (the
  // sums only shrink as t grows: every t below the answer passes, every t above fails).
  let key_m = order_key(m);
  var t = 0u;
  for (var b = 0u; b < 32u; b++) {
    let cand = t | (0x80000000u >> b);
    var s = vec2<u32>(0u, 0u);
    for (var i = lid; i < V; i += WG) {
      if (order_key(x[i]) >= cand) {
        s = add64(s, vec2<u32>(qe[i], 0u));
      }
    }
    let total = sum64(lid, s);
    if (cand <= key_m && !less64(total, goal)) {
      t = cand;
    }
  }
  // Sum above t, and of each chunk's tokens at t (tokens outside the cut have qe = 0).
  storageBarrier(); // qe written by other invocations is read below
  let r = chunk_range(lid);
  var above = vec2<u32>(0u, 0u);
  var ties = vec2<u32>(0u, 0u);
  for (var i = r.x; i < r.y; i++) {
    let k = order_key(x[i]);
    if (k > t) {
      above = add64(above, vec2<u32>(qe[i], 0u));
    } else if (k == t) {
      ties = add64(ties, vec2<u32>(qe[i], 0u));
    }
  }
  // sum(qe : key > t) < goal <= sum(qe : key >= t): one chunk's tokens at t reach goal.
  let span = scan64(lid, sum64(lid, above), ties);
  if (less64(span[0], goal) && !less64(span[1], goal)) {
    var run = span[0];
    for (var i = r.x; i < r.y; i++) {
      if (order_key(x[i]) == t) {
        run = add64(run, vec2<u32>(qe[i], 0u));
        if (!less64(run, goal)) {
          picked = i;
          break;
        }
      }
    }
  }
  let idx = workgroupUniformLoad(&picked);
  if (lid == 0u) {
    sel.cut_key = t;
    sel.cut_idx = idx;
  }
}
