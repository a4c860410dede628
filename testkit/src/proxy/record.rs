//! The record of every request the proxy saw, as tests read it back.

use bytes::Bytes;

use super::{Fault, ProxyInner, lock};

/// Request bodies up to this size are kept in [`RecordedRequest::body`].
const KEEP_BODY: usize = 64 * 1024;

/// One request seen by the proxy.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Service from the SigV4 credential scope (`ebs`, `ec2`, ...) or `unknown`.
    pub service: String,
    /// Region from the SigV4 credential scope or `unknown`.
    pub region: String,
    /// AWS operation name or `Unknown`.
    pub operation: String,
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (empty if none).
    pub query: String,
    /// Request headers as received.
    pub headers: Vec<(String, String)>,
    /// Request body length.
    pub body_len: usize,
    /// Request body, kept when at most 64 KiB.
    pub body: Option<Bytes>,
    /// HTTP status sent to the client, 0 if no response was sent.
    pub status: u16,
    /// Label of the injected fault, if any.
    pub fault: Option<String>,
}

impl RecordedRequest {
    /// First value of a request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl ProxyInner {
    /// Keep `rec` (in completion order).
    pub(super) fn record(&self, rec: RecordedRequest) {
        lock(&self.requests).push(rec);
        self.recorded.notify_waiters();
    }
}

/// The record of a request as it arrived (status 0 until it is answered).
pub(super) fn recorded(
    parts: &hyper::http::request::Parts,
    body: &Bytes,
    service: String,
    region: String,
    op: &str,
    fault: Option<&Fault>,
) -> RecordedRequest {
    RecordedRequest {
        service,
        region,
        operation: op.to_string(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: body.len(),
        body: (body.len() <= KEEP_BODY).then(|| body.clone()),
        status: 0,
        fault: fault.map(Fault::label),
    }
}
