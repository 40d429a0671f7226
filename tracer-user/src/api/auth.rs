//! Who may call what on the gRPC TCP listener.
//!
//! The Unix socket is root-only (0600 in a 0700 directory), so it gets full
//! access and no check. TCP is reachable by every local user (and by other
//! hosts when bound beyond loopback), so its requests pass [`GuardLayer`]:
//! a bearer token when one is configured (compared in constant time), and
//! the read-only rule that refuses mutating RPCs with `PERMISSION_DENIED`.
//! The read-only side is an allow-list, so an RPC added later is refused
//! until it is classified here.

use std::{
    path::Path,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::{Context as _, Result, bail};
use futures_util::future::{Either, Ready, ready};
use subtle::ConstantTimeEq;
use tonic::Status;

/// Tokens longer than this are not tokens (and are not read into memory).
const MAX_TOKEN_BYTES: u64 = 4096;
/// A shorter token is guessable; `openssl rand -hex 32` gives 64 characters.
const MIN_TOKEN_BYTES: usize = 16;

/// RPCs that only read: allowed on a read-only endpoint.
const READ_ONLY_METHODS: &[&str] = &[
    "/tracer.v1.Tracer/Info",
    "/tracer.v1.Tracer/ListProcesses",
    "/tracer.v1.Tracer/Watch",
    "/tracer.v1.Tracer/Findings",
];

/// A bearer token clients must present (`authorization: Bearer TOKEN`).
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads a token file: one line of visible ASCII (what may travel in an
    /// HTTP/2 header), surrounding whitespace trimmed, 16..=4096 bytes.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_bounded(path)?;
        Self::parse(&text).with_context(|| format!("token file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_BYTES {
            bail!(
                "the token has {} bytes; at least {MIN_TOKEN_BYTES} are needed (e.g. `openssl rand -hex 32`)",
                t.len()
            );
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
            bail!("the token contains {c:?}; only visible ASCII characters are allowed");
        }
        Ok(Self(t.as_bytes().into()))
    }

    /// The `authorization` header value a client sends.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }

    /// Constant-time check of an `authorization` header value.
    fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Lengths may differ in time (the length is no secret); contents not.
        bool::from(given.ct_eq(&self.0))
    }
}

/// Reads a small secret file without trusting its size (a FIFO or
/// /dev/zero given by mistake must not hang or fill memory).
fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut buf = Vec::new();
    f.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    if buf.len() as u64 > MAX_TOKEN_BYTES {
        bail!(
            "{} is larger than {MAX_TOKEN_BYTES} bytes; not a token file",
            path.display()
        );
    }
    String::from_utf8(buf).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// What a TCP endpoint requires of each request.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Required bearer token, when set.
    pub token: Option<Token>,
    /// Refuse every RPC outside [`READ_ONLY_METHODS`].
    pub read_only: bool,
}

impl Policy {
    /// `Err` with the status to answer, or `Ok` to pass the request on.
    fn check<B>(&self, req: &http::Request<B>) -> Result<(), Status> {
        if let Some(token) = &self.token {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !token.accepts(header) {
                return Err(Status::unauthenticated(
                    "missing or wrong bearer token (tracer top --token-file)",
                ));
            }
        }
        if self.read_only && !READ_ONLY_METHODS.contains(&req.uri().path()) {
            return Err(Status::permission_denied(format!(
                "{} changes what the agent does; this endpoint is read-only (use the agent's Unix socket, or see docs/grpc.md)",
                req.uri().path()
            )));
        }
        Ok(())
    }
}

/// Tower layer applying a [`Policy`] before the gRPC service sees a request.
#[derive(Clone, Debug)]
pub struct GuardLayer(Arc<Policy>);

impl GuardLayer {
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(policy))
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.policy.check(&req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, auth: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(format!("http://x{path}"));
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn token_checks_are_exact() {
        let t = Token::parse("0123456789abcdef0123\n").expect("token");
        let p = Policy {
            token: Some(t.clone()),
            read_only: false,
        };
        assert!(p.check(&req("/tracer.v1.Tracer/Info", None)).is_err());
        for bad in [
            "Bearer 0123456789abcdef012",
            "Bearer 0123456789abcdef01234",
            "Bearer 0123456789abcdef0124",
            "0123456789abcdef0123",
            "bearer 0123456789abcdef0123",
        ] {
            let e = p
                .check(&req("/tracer.v1.Tracer/Info", Some(bad)))
                .expect_err(bad);
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        let good = t.header_value();
        assert!(p.check(&req("/tracer.v1.Tracer/Info", Some(&good))).is_ok());
        assert!(format!("{t:?}").contains("redacted"));
    }

    #[test]
    fn read_only_refuses_everything_but_reads() {
        let p = Policy {
            token: None,
            read_only: true,
        };
        for m in READ_ONLY_METHODS {
            assert!(p.check(&req(m, None)).is_ok(), "{m}");
        }
        for m in [
            "/tracer.v1.Tracer/StartDeepMapTrace",
            "/tracer.v1.Tracer/StopDeepMapTrace",
            "/tracer.v1.Tracer/SomethingNew",
        ] {
            let e = p.check(&req(m, None)).expect_err(m);
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{m}");
        }
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("0123456789abcdef 0123").is_err());
        assert!(Token::parse(&"x".repeat(40)).is_ok());
        let dir = std::env::temp_dir().join(format!("tracer-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let big = dir.join("big");
        std::fs::write(&big, "y".repeat(5000)).expect("write");
        let e = Token::from_file(&big).expect_err("big");
        assert!(e.to_string().contains("larger"), "{e}");
        assert!(Token::from_file(Path::new("/dev/zero")).is_err());
        assert!(Token::from_file(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
