//! hoop's wire model: the generated protobuf types of `proto/transport.proto`, the spec keys,
//! and the typed packets that the rest of the workspace uses instead of strings and raw maps.
//!
//! Packets are decoded here, at the edge: [`AgentPacket`] for what the gateway sends an agent,
//! [`ClientPacket`] for what an agent sends back. This crate does not dial or serve gRPC
//! (that is `gateway-link` on the agent side) and does not interpret environment values.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod go_duration;
pub mod packet;
pub mod spec;
pub mod system;

pub use packet::{
    AgentPacket, ClientPacket, DecodeError, DecodeErrorKind, RawPacket, SessionId, SessionOpen,
    TermSize,
};
pub use system::SysKind;

/// Generated protobuf and tonic types (package `protobuf`).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("protobuf");
}

/// Full gRPC path of the bidirectional `Connect` RPC.
pub const CONNECT_PATH: &str = "/protobuf.Transport/Connect";
