// Weight loader for f32 weights: one element per u32 of `weights` (declared by the kernel).
// load_w4(e) returns elements e..e+3 (e a multiple of 4 within a row).
fn load_w4(e: u32) -> vec4<f32> {
  return vec4<f32>(
    bitcast<f32>(weights[e]),
    bitcast<f32>(weights[e + 1u]),
    bitcast<f32>(weights[e + 2u]),
    bitcast<f32>(weights[e + 3u]),
  );
}
