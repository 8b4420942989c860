// Weight loaders for bf16 weights whose rows start on 16 bytes (element offset a multiple of 8):
// `weights` (declared by the kernel as array<WeightWord>) is read 8 elements per load, which on
// llvmpipe costs far less than scalar loads. Element 2i sits in the low half of u32 i; a bf16 value
// is the upper half of an f32, so widening is a shift (exact). load_w4(e) returns elements
// e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a multiple of 8).

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

fn bf16x2(w: vec2<u32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
}

fn load_w4(e: u32) -> vec4<f32> {
  let q = weights[e >> 3u];
  return select(bf16x2(q.zw), bf16x2(q.xy), (e & 4u) == 0u);
}

// The 8 elements of one 16-byte word.
fn word_w8(q: vec4<u32>) -> W8 {
  return W8(bf16x2(q.xy), bf16x2(q.zw));
}

fn load_w8(e: u32) -> W8 {
  return word_w8(weights[e >> 3u]);
}
