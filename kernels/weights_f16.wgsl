// Weight loaders for f16 weights whose rows start on 16 bytes (element offset a multiple of 8):
// `weights` (declared by the kernel as array<WeightWord>) is read 8 elements per load. Element 2i
// sits in the low half of u32 i, widened with unpack2x16float (core WGSL; shader-f16 is not
// needed). load_w4(e) returns elements e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a
// multiple of 8).

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

fn f16x2(w: vec2<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn load_w4(e: u32) -> vec4<f32> {
  let q = weights[e >> 3u];
  return select(f16x2(q.zw), f16x2(q.xy), (e & 4u) == 0u);
}

// The 8 elements of one 16-byte word.
fn word_w8(q: vec4<u32>) -> W8 {
  return W8(f16x2(q.xy), f16x2(q.zw));
}

fn load_w8(e: u32) -> W8 {
  return word_w8(weights[e >> 3u]);
}
