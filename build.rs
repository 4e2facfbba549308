//! Generates the gRPC server of containerd's snapshots service (for
//! `loci snapshotter`). Messages come from `containerd-client`, which
//! generates the same protos with clients only.

fn main() {
    let proto = "proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .extern_path(".containerd.types", "::containerd_client::types")
        .compile_protos(&[proto], &["proto"])
        .expect("generating the snapshots gRPC server");
}
