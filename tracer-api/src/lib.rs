//! tracer's gRPC API, `tracer.v1`, generated from `proto/tracer/v1/tracer.proto`
//! at build time. The agent serves it; `tracer top --connect` and any other
//! client (grpcio, grpcurl) consume it.

/// Version 1 of the API.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tracer.v1");
}
