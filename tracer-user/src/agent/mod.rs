//! `tracer agent`: trace every Go process on the node and publish what it
//! sees through a [`hub::Hub`] to the gRPC API, Prometheus and `tracer top`.
pub mod core;
pub mod deep;
pub mod discovery;
mod flows;
pub mod hub;
mod lifecycle;
mod publish;
mod sessions;
mod shared_tables;
pub(crate) mod tables;
