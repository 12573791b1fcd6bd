//! Compiles `proto/transport.proto` with protox (pure Rust), so neither builders nor CI need `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build-script binary reused from another checkout of
    // the same sources must still find this checkout's proto file.
    let proto_dir = format!("{}/../../proto", std::env::var("CARGO_MANIFEST_DIR")?);
    let proto = format!("{proto_dir}/transport.proto");
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto.as_str()], [proto_dir.as_str()])?;
    tonic_prost_build::configure()
        // Payloads and spec values are raw bytes; `Bytes` avoids copies on the hot path.
        .bytes(".")
        // hoop's RPC is called `Connect`, which collides with the generated `connect(dst)`
        // constructor (E0592). Clients are built with `TransportClient::new(channel)` instead.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
