// out[0] = index of the largest x[T-1, 0..n) (lowest index on ties): one workgroup, each
// invocation scans a stride of the row, then a tree reduction keeps (value, index) pairs.

struct Params {
  n: u32,
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>; // [T, n]
@group(0) @binding(3) var<storage, read_write> out: array<u32>; // [1]

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let base = (step.n_tokens - 1u) * p.n;
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  for (var i = lid; i < p.n; i += WG) {
    let v = x[base + i];
    if (v > bv || bi == 0xffffffffu) {
      bv = v;
      bi = i;
    }
  }
  best_v[lid] = bv;
  best_i[lid] = bi;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      let ov = best_v[lid + stride];
      let oi = best_i[lid + stride];
      let mine_i = best_i[lid];
      if (oi != 0xffffffffu && (mine_i == 0xffffffffu || ov > best_v[lid] ||
          (ov == best_v[lid] && oi < mine_i))) {
        best_v[lid] = ov;
        best_i[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    out[0] = best_i[0];
  }
}
