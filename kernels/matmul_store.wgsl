// Prelude of matmul.wgsl, matvec.wgsl and matmul_tiled.wgsl: where output row n of token t goes.
// Rows [split_k, split_v) go to out_k and [split_v, N) to out_v, each [T, its rows] (one matmul
// for q, k and v from their rows stacked); the rest to out[t, out_offset + n], added to it with
// accumulate. Reads the kernel's p (Params), out, out_k and out_v.

fn store_row(t: u32, n: u32, v: f32) {
  if (n >= p.split_v) {
    out_v[t * (p.N - p.split_v) + n - p.split_v] = v;
  } else if (n >= p.split_k) {
    out_k[t * (p.split_v - p.split_k) + n - p.split_k] = v;
  } else if (p.accumulate != 0u) {
    out[t * p.out_stride + p.out_offset + n] += v;
  } else {
    out[t * p.out_stride + p.out_offset + n] = v;
  }
}
