//! The agent's network front ends: the `tracer.v1` gRPC service, the
//! Prometheus `/metrics` endpoint and health probes, all read from one
//! [`Hub`](crate::agent::hub::Hub). See docs/grpc.md.

pub mod auth;
pub mod codes;
pub mod convert;
pub mod filter;
pub mod limits;
pub mod metrics;
pub mod otlp;
pub mod pprof_http;
pub mod serve;
pub mod server;
pub mod synthetic;

pub use serve::{Bound, ServeOptions, TlsOptions, bind, check_exposure, serve, tcp_policy};
