// Sampling, filter 2: the top_p cut, after kernels/sample_topk.wgsl (whose M and cut it reads
// from sel and narrows). Over the kept tokens, the weights qe_i = weight(expf(x_i - M)) (stored in
// qe, 0 elsewhere) and their exact sum Z (64-bit); goal = ceil(top_p24 * Z / 2^24); the new cut
// ends the shortest prefix of the order (x desc, index asc) whose sum of qe reaches goal. One
// workgroup of WG invocations, V = vocab:
//   - qe and Z: one strided pass;
//   - the key t of the prefix's last token: the largest t <= key(M) with sum(qe : key >= t) >=
//     goal, by bisection over the key's 32 bits (32 passes);
//   - the tokens at key t taken in index order until the sum reaches goal (a pass over
//     contiguous chunks, a scan of their sums from sum(qe : key > t), a walk of one chunk).
// About 35 * V / WG + 560 loop iterations per invocation (21,350 at V = 151936).

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
  min_p: f32,
  inv_t: f32,
  rep: f32,
  inv_rep: f32,
  presence: f32,
  frequency: f32,
  // 0.0, added to products that an addition follows: a compiler may contract a * b + c into one
  // fma (one rounding instead of two); with a * b + zero it can only fuse the harmless add.
  zero: f32,
  eos: array<vec4<u32>, 2>,
}

@group(0) @binding(1) var<uniform> req: Request;
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> sel: Sel;
@group(0) @binding(4) var<storage, read_write> qe: array<u32>; // [vocab]

// The kept set so far: M = max x and the end of the kept prefix of the order (x desc, index asc):
// tokens with key > cut_key, or key == cut_key and index <= cut_idx.
struct Sel {
  m: f32,
  cut_key: u32,
  cut_idx: u32,
  _pad: u32,
}

const WG: u32 = 256u;
var<workgroup> red_64: array<vec2<u32>, WG>;
var<workgroup> scan_64: array<vec2<u32>, WG>;
var<workgroup> picked: u32;

// A u32 whose order is the order of the f32 values (-0 maps to +0's key: equal values tie).
fn order_key(v: f32) -> u32 {
  var u = bitcast<u32>(v);
  if (u == 0x80000000u) {
    u = 0u;
  }
  return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

// Whether token i (key k) is in the kept prefix of the order (x desc, index asc) that ends at
// (cut_key, cut_idx).
fn in_cut(k: u32, i: u32, cut_key: u32, cut_idx: u32) -> bool {
  return k > cut_key || (k == cut_key && i <= cut_idx);
}

// ---- exact arithmetic: the operations of src/sampling.ts expf(), weight() and mulFrac24(), so
// the same bits (sample_topp.wgsl and sample_draw.wgsl carry identical copies of this section;
// tests/sampler_gpu_test.ts runs it against the CPU's). ----

// Below it expf is 0 (exp(-80) = 1.8e-35 is still a normal f32).
const EXPF_MIN: f32 = -80.0;
// log2(e); ln(2) = LN2_HI + LN2_LO with LN2_HI of 9 bits (n * LN2_HI is exact); Cephes' expf
// polynomial: exp(r) = 1 + r + r^2 * P(r) for |r| <= ln(2) / 2. Hex: the exact f32 values.
const LOG2E: f32 = 0x1.715476p0f;
const LN2_HI: f32 = 0x1.630000p-1f;
const LN2_LO: f32 = -0x1.bd0106p-13f;
const EXPF_P0: f32 = 0x1.a0d2cep-13f;
const EXPF_P1: f32 = 0x1.6e879cp-10f;
const EXPF_P2: f32 = 0x1.111210p-7f;
const EXPF_P3: f32 = 0x1.555382p-5f;
const EXPF_P4: f32 = 0x1.555554p-3f;
const EXPF_P5: f32 = 0x1.000000p-1f;
// Weight of e = 1: weights are floor(e * 2^31).
const WEIGHT_ONE: f32 = 2147483648.0;

// exp(d) for d <= 0, within 1 ulp; every product an addition follows gets + req.zero.
fn expf(d: f32) -> f32 {
  if (!(d >= EXPF_MIN)) {
    return 0.0;
  }
  let n = round(d * LOG2E);
  let r = (d - n * LN2_HI) - (n * LN2_LO + req.zero);
  var p = EXPF_P0;
  p = (p * r + req.zero) + EXPF_P1;
  p = (p * r + req.zero) + EXPF_P2;
  p = (p * r + req.zero) + EXPF_P3;
  p = (p * r + req.zero) + EXPF_P4;
  p = (p * r + req.zero) + EXPF_P5;
  let y = ((p * (r * r) + req.zero) + r) + 1.0;
  return y * bitcast<f32>(u32(i32(n) + 127) << 23u);
}

fn weight(e: f32) -> u32 {
  return u32(e * WEIGHT_ONE);
}

// Unsigned 64-bit integers are vec2<u32>(low word, high word).

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = a.x + b.x;
  return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn less64(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// High word of the 64-bit product a * b, from 16-bit halves.
fn mulhi(a: u32, b: u32) -> u32 {
  let a_lo = a & 0xffffu;
  let a_hi = a >> 16u;
  let b_lo = b & 0xffffu;
  let b_hi = b >> 16u;
  let lo_hi = a_lo * b_hi;
  let hi_lo = a_hi * b_lo;
  let mid = ((a_lo * b_lo) >> 16u) + (lo_hi & 0xffffu) + (hi_lo & 0xffffu);
  return a_hi * b_hi + (lo_hi >> 16u) + (hi_lo >> 16u) + (mid >> 16u);
}

// floor (or ceil when `up`) of a * b / 2^24, exactly, for a <= 2^24 and b < 2^56.
fn mul_frac24(a: u32, b: vec2<u32>, up: bool) -> vec2<u32> {
  let b_high = (b.x >> 24u) | (b.y << 8u);
  let b_low = b.x & 0xffffffu;
  let low = vec2<u32>(a * b_low, mulhi(a, b_low)); // below 2^49
  var frac = (low.x >> 24u) | (low.y << 8u);
  if (up && (low.x & 0xffffffu) != 0u) {
    frac += 1u;
  }
  return add64(vec2<u32>(a * b_high, mulhi(a, b_high)), vec2<u32>(frac, 0u));
}

// ---- end of exact arithmetic ----

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

// Inclusive prefix sums, from `base`, of v over the invocations in lid order (invocation 0 walks
// them: WG iterations); returns (sum before this invocation's, sum up to it).
fn scan64(lid: u32, base: vec2<u32>, v: vec2<u32>) -> array<vec2<u32>, 2> {
  workgroupBarrier(); // earlier readers of scan_64 are done
  scan_64[lid] = v;
  workgroupBarrier();
  if (lid == 0u) {
    var acc = base;
    for (var j = 0u; j < WG; j++) {
      acc = add64(acc, scan_64[j]);
      scan_64[j] = acc;
    }
  }
  workgroupBarrier();
  let before = select(base, scan_64[max(lid, 1u) - 1u], lid > 0u);
  return array<vec2<u32>, 2>(before, scan_64[lid]);
}

// The contiguous range of indices invocation lid walks in index-order passes.
fn chunk_range(lid: u32) -> vec2<u32> {
  let chunk = (req.vocab + WG - 1u) / WG;
  let lo = min(lid * chunk, req.vocab);
  return vec2<u32>(lo, min(lo + chunk, req.vocab));
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
      q = weight(expf(v - m));
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
