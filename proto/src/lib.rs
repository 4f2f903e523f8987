//! The fedcare wire protocol (`fedcare.v1`), generated from `proto/fedcare/v1/fedcare.proto`.
//!
//! The `.proto` file is the single source of truth for what crosses the network. It is compiled
//! by `protox` in pure Rust, so building needs no system `protoc`.

/// Wire protocol version carried in `JoinRequest`; bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The encoded `FileDescriptorSet` of `fedcare.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fedcare_descriptor.bin"));

/// Generated messages, clients and servers of package `fedcare.v1`.
pub mod v1 {
    tonic::include_proto!("fedcare.v1");
}
