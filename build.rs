//! Generates the `grpc` transform's client (and a server, for processors written in Rust and
//! for the tests) from Portcullis's own proto. protoc comes from the `protoc-bin-vendored`
//! crate, so a build needs nothing installed beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/portcullis/processor/v1/processor.proto";
    println!("cargo:rerun-if-changed={proto}");
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the
    // environment and offers no other way to pass it.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
