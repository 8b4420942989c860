// Weight loaders for f32 weights at any offset: one element per u32 word of `weights` (declared
// by the kernel as array<WeightWord>). load_w4(e) returns elements e..e+3, load_w8(e) e..e+7.

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

fn load_w4(e: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(
    vec4<u32>(weights[e], weights[e + 1u], weights[e + 2u], weights[e + 3u]),
  );
}

fn load_w8(e: u32) -> W8 {
  return W8(load_w4(e), load_w4(e + 4u));
}
