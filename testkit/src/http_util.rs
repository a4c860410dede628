//! Small shared helpers for the test servers: a loopback accept loop running hyper
//! HTTP/1.1 connections, bounded body reading, SigV4 scope parsing, form decoding,
//! XML escaping and timestamp formatting.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Error type a handler returns to close the connection without answering.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-connection context handed to a handler.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnCtx {
    /// Raw descriptor of the accepted socket; valid while the handler runs.
    pub fd: RawFd,
}

impl ConnCtx {
    /// Arrange for the connection to be closed with a TCP RST (SO_LINGER 0) when it is
    /// dropped.
    pub(crate) fn arm_reset(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `fd` is the descriptor of a socket owned by the hyper connection that
        // is currently polling the handler, so it is open; the option value points to a
        // properly sized `linger` struct.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// Bind a listener on 127.0.0.1 (never any other address); `port` 0 picks a free one.
pub(crate) async fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Run an HTTP/1.1 keep-alive accept loop; aborting the returned task also aborts every
/// connection task it spawned.
pub(crate) fn serve<H, Fut, B>(listener: TcpListener, handler: Arc<H>) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>, ConnCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let (stream, _peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("testkit accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ctx = ConnCtx {
                fd: stream.as_raw_fd(),
            };
            let handler = handler.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| handler(req, ctx));
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.keep_alive(true).max_buf_size(2 * 1024 * 1024);
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::trace!("testkit connection ended: {e}");
                }
            });
        }
    })
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The body is larger than the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("reading request body: {0}")]
    Read(#[from] hyper::Error),
}

/// Read a whole request body (at most `limit` bytes), preallocating from Content-Length.
pub(crate) async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let hint = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if hint > limit {
        return Err(BodyError::TooLarge(limit));
    }
    let mut buf: Option<BytesMut> = None;
    let mut first: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let have = first.as_ref().map_or(0, Bytes::len) + buf.as_ref().map_or(0, BytesMut::len);
        if have + data.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        match (&mut buf, &first) {
            (None, None) => first = Some(data),
            (None, Some(f)) => {
                let mut b = BytesMut::with_capacity(hint.max(f.len() + data.len()));
                b.extend_from_slice(f);
                b.extend_from_slice(&data);
                first = None;
                buf = Some(b);
            }
            (Some(b), _) => b.extend_from_slice(&data),
        }
    }
    Ok(match (buf, first) {
        (Some(b), _) => b.freeze(),
        (None, Some(f)) => f,
        (None, None) => Bytes::new(),
    })
}

/// Service and region from a SigV4 `Authorization` header's credential scope.
pub(crate) fn credential_scope(headers: &HeaderMap) -> Option<(String, String)> {
    let auth = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = auth.split("Credential=").nth(1)?;
    let cred = rest.split([',', ' ']).next()?;
    // AKID/DATE/REGION/SERVICE/aws4_request
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() < 5 {
        return None;
    }
    let n = parts.len();
    Some((parts[n - 2].to_string(), parts[n - 3].to_string()))
}

/// Decode an `application/x-www-form-urlencoded` string into key/value pairs.
pub(crate) fn parse_form(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-decode a form component (`+` means space); invalid escapes are kept as-is.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escape text for inclusion in XML element content or attribute values.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the Unix epoch, as a float.
pub(crate) fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Format epoch seconds as ISO 8601 UTC with milliseconds (`2026-01-01T00:00:00.000Z`).
pub(crate) fn iso8601(epoch: f64) -> String {
    let total_ms = (epoch * 1000.0).max(0.0) as i64;
    let secs = total_ms.div_euclid(1000);
    let ms = total_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// A fresh request id.
pub(crate) fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Build a response with a full body; never fails for the static header names used here.
pub(crate) fn full_response(
    status: u16,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<http_body_util::Full<Bytes>> {
    let mut resp = Response::new(http_body_util::Full::new(body.into()));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    resp
}

#[cfg(test)]
pub(crate) mod test_client {
    //! A minimal hyper client for the unit tests.

    use super::*;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    /// Test HTTP client type.
    pub(crate) type TestClient = Client<HttpConnector, Full<Bytes>>;

    /// A keep-alive client.
    pub(crate) fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// A fake SigV4 Authorization header value for `service`.
    pub(crate) fn auth(service: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=0000"
        )
    }

    /// Send a request and collect the answer.
    pub(crate) async fn send(
        client: &TestClient,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Result<(u16, HeaderMap, Bytes), BoxError> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(body.into()))?;
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats() {
        assert_eq!(iso8601(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_767_225_600.5), "2026-01-01T00:00:00.500Z");
        assert_eq!(iso8601(951_782_400.0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn form_decoding() {
        let f = parse_form("Action=DescribeSnapshots&SnapshotId.1=snap-1&X=a+b%2Fc&Bad=%zz");
        assert_eq!(f[0], ("Action".into(), "DescribeSnapshots".into()));
        assert_eq!(f[2], ("X".into(), "a b/c".into()));
        assert_eq!(f[3], ("Bad".into(), "%zz".into()));
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn scope_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/ebs/aws4_request, SignedHeaders=host, Signature=x"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            credential_scope(&h),
            Some(("ebs".to_string(), "eu-west-1".to_string()))
        );
        assert_eq!(credential_scope(&HeaderMap::new()), None);
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
