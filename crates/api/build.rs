//! Compiles the control-plane protocol with protox, so that no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "weft/config/v1/config.proto",
            "weft/identity/v1/identity.proto",
        ],
        ["proto"],
    )?;
    // Snapshot payloads are shared between proxies, not copied: `bytes::Bytes`.
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
