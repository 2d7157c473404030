//! Generates the prost types of the wire contract into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single threaded; the variable only affects this process.
    unsafe {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = ["proto/shardmerge/v1/task.proto", "proto/shardmerge/v1/cluster.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
