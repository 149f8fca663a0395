// One thread per output element i < P.COUNT; BODY is generated (SwiGLU gating, label gather, guidance...).

{{BINDINGS}}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * 65535u * 64u;
  if (i >= P.COUNT) {
    return;
  }
  {{BODY}}
}
