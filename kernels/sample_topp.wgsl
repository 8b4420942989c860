// Sampling, filter 2: the top_p cut, after kernels/sample_topk.wgsl (whose M and cut it reads
// from sel and narrows). Over the kept tokens, the weights qe_i = exp_weight(x_i - M) (stored in
// qe, 0 elsewhere) and their exact sum Z (64-bit); goal = ceil(top_p24 * Z / 2^24); the new cut
// ends the shortest prefix of the order (x desc, index asc) whose sum of qe reaches goal. One
// workgroup of WG invocations, V = vocab:
//   - qe and Z: one strided pass;
//   - the key t of the prefix's last token: the largest t <= key(M) with sum(qe : key >= t) >=
//     goal, by a radix select a byte at a time from the top, each pass summing qe of the tokens of
//     the prefix found so far per next byte in a workgroup histogram (4 passes; RADIX = 0, the
//     baseline: bisection over the key's 32 bits, 32 passes);
//   - the tokens at key t taken in index order until the sum reaches goal (a pass over
//     contiguous chunks, a scan of their sums from sum(qe : key > t), a walk of one chunk).
// About 7 * V / WG + 1,600 loop iterations per invocation (5,800 at V = 151936; the baseline
// 35 * V / WG + 530: 21,320).

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> sel: Sel;
@group(0) @binding(4) var<storage, read_write> qe: array<u32>; // [vocab]

const WG: u32 = 256u;
// The radix select's histograms have a bucket per byte value, one per invocation.
const_assert WG == 256u;
var<workgroup> red_64: array<vec2<u32>, WG>;
var<workgroup> picked: u32;
// The radix select's histogram (64-bit sums of qe per next byte of the prefix's tokens: low
// words, and high words taking the carries) and its choice.
var<workgroup> hist_lo: array<atomic<u32>, 256>;
var<workgroup> hist_hi: array<atomic<u32>, 256>;
var<workgroup> chosen: array<vec2<u32>, 2>;

// 1: radix select (default); 0: bisection, the baseline (GpuSampler's radixSelect: false).
override RADIX: u32 = 1u;

// The largest t <= key_m with sum(qe : key >= t) >= goal, a byte at a time from the top: with the
// prefix p of its first bytes known and `above` = sum(qe : key's first bytes > p's), the next byte
// is the largest d (at most key_m's while p is key_m's prefix) with above + sum(qe : prefix p,
// next byte >= d) >= goal, or the smallest allowed when none reaches it (as the bisection, which
// keeps t = 0 then). Exact: the sums are integers, so the atomic adds' order does not matter.
fn cut_key_radix(lid: u32, V: u32, goal: vec2<u32>, key_m: u32) -> u32 {
  var t = 0u;
  var above = vec2<u32>(0u, 0u);
  for (var round = 0u; round < 4u; round++) {
    let shift = 24u - 8u * round;
    // the prefix's bits: none in the first round (a shift by 32 would be taken mod 32)
    let high = select(0u, 0xffffffffu << (shift + 8u), round > 0u);
    atomicStore(&hist_lo[lid], 0u); // (WG = 256 invocations, one bucket each)
    atomicStore(&hist_hi[lid], 0u);
    workgroupBarrier();
    for (var i = lid; i < V; i += WG) {
      let q = qe[i];
      if (q == 0u) { // (tokens outside the top_k cut, or too unlikely: no weight to add)
        continue;
      }
      let key = order_key(x[i]);
      if ((key & high) == t) {
        let d = (key >> shift) & 255u;
        let old = atomicAdd(&hist_lo[d], q);
        if (old + q < old) {
          atomicAdd(&hist_hi[d], 1u);
        }
      }
    }
    workgroupBarrier();
    if (lid == 0u) {
      // the largest byte allowed: key_m's while t is key_m's prefix, else any
      var d = select(255u, (key_m >> shift) & 255u, (key_m & high) == t);
      var acc = above;
      loop {
        let n = vec2<u32>(atomicLoad(&hist_lo[d]), atomicLoad(&hist_hi[d]));
        let with_d = add64(acc, n);
        if (!less64(with_d, goal) || d == 0u) {
          chosen[0] = vec2<u32>(d, 0u);
          chosen[1] = acc;
          break;
        }
        acc = with_d;
        d--;
      }
    }
    let c = workgroupUniformLoad(&chosen);
    t = t | (c[0].x << shift);
    above = c[1];
  }
  return t;
}

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
  if (RADIX == 1u) {
    t = cut_key_radix(lid, V, goal, key_m); // (its strided passes read the qe they wrote)
  } else {
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
