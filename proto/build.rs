//! Compiles the wire protocol with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "fedcare/v1/fedcare.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    // The encoded descriptor set, for gRPC server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fedcare_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Chunks of a large model are slices of one shared buffer, sent to every site without
        // a copy each.
        .bytes(".fedcare.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}
