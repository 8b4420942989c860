// Weight loaders for bf16 weights at any even offset: two elements per u32 word of `weights`
// (declared by the kernel as array<WeightWord>), element 2i in the low half. A bf16 value is the
// upper half of an f32, so widening is a shift (exact). load_w4(e) returns elements e..e+3,
// load_w8(e) e..e+7 (e even).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

fn bf16x2(w: vec2<u32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
}

fn load_w4(e: u32) -> vec4<f32> {
  let i = e >> 1u;
  return bf16x2(vec2<u32>(weights[i], weights[i + 1u]));
}

fn load_w8(e: u32) -> W8 {
  return W8(load_w4(e), load_w4(e + 4u));
}
