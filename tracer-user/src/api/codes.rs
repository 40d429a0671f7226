//! Status codes for requests tonic rejects before our handlers run.
//!
//! tonic answers a request that is not valid protobuf with INTERNAL and one
//! over the size limit with OUT_OF_RANGE. Both are the client's fault, and
//! gRPC's own guidance (and clients' retry policies) expect INVALID_ARGUMENT
//! and RESOURCE_EXHAUSTED: INTERNAL reads as an agent bug and invites
//! retries. [`CodesLayer`] rewrites exactly those answers (recognised by
//! tonic's messages, which tests/api_server.rs pins over the wire) and
//! leaves every other status alone.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderValue;
use tonic::Code;

/// The code a tonic-generated rejection should have had, if it is one.
fn corrected(code: Code, message: &str) -> Option<Code> {
    match code {
        Code::Internal
            if message.starts_with("failed to decode Protobuf message")
                || message.starts_with("Unexpected EOF decoding stream") =>
        {
            Some(Code::InvalidArgument)
        }
        Code::OutOfRange if message.starts_with("Error, decoded message length too large") => {
            Some(Code::ResourceExhausted)
        }
        _ => None,
    }
}

/// Rewrites the status of a trailers-only response (how tonic answers a
/// request it could not decode).
fn fix<B>(resp: &mut http::Response<B>) {
    let Some(status) = tonic::Status::from_header_map(resp.headers()) else {
        return;
    };
    if let Some(code) = corrected(status.code(), status.message()) {
        let value = HeaderValue::from(code as i32);
        resp.headers_mut().insert("grpc-status", value);
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CodesLayer;

impl<S> tower::Layer<S> for CodesLayer {
    type Service = Codes<S>;

    fn layer(&self, inner: S) -> Codes<S> {
        Codes(inner)
    }
}

#[derive(Clone, Debug)]
pub struct Codes<S>(S);

impl<S, Req, B> tower::Service<Req> for Codes<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            fix(&mut resp);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decode_rejections_change() {
        assert_eq!(
            corrected(Code::Internal, "failed to decode Protobuf message: x"),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            corrected(
                Code::OutOfRange,
                "Error, decoded message length too large: found 2 bytes, the limit is: 1 bytes"
            ),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(corrected(Code::Internal, "encoding failed"), None);
        assert_eq!(corrected(Code::OutOfRange, "pid: out of range"), None);
        assert_eq!(corrected(Code::InvalidArgument, "x"), None);
    }
}
