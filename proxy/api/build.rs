//! Generates the protobuf types and gRPC stubs. `protox` parses the `.proto` files in Rust, so
//! building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/istio/v1/auth/ca.proto",
        "proto/remora/config/v1/routing.proto",
        "proto/remora/config/v1/security.proto",
        "proto/remora/config/v1/telemetry.proto",
        "proto/remora/config/v1/snapshot.proto",
        "proto/remora/config/v1/discovery.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The snapshot is also written by hand (a bootstrap's `staticSnapshot`) and dumped by the
    // admin endpoint, in the same camelCase names Kubernetes-style YAML uses. Messages take
    // defaults for missing fields; a oneof is an enum, written as `{exact: "/a"}`.
    let config = tonic_prost_build::configure()
        .build_transport(false)
        // Ordered maps (labels): a snapshot's encoding, and so its version hash, must not
        // depend on a hash map's iteration order.
        .btree_map(".")
        // Encoded once, shared by every push that carries them: reference-counted, not copied.
        .bytes(".remora.config.v1.Push.resources")
        .message_attribute(
            ".remora.config.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(rename_all = \"camelCase\", default, deny_unknown_fields)]",
        )
        .enum_attribute(
            ".remora.config.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(rename_all = \"camelCase\")]",
        );
    config.compile_fds(descriptors)?;
    Ok(())
}
