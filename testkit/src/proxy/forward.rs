//! Forwarding to the upstream: loopback only, hop-by-hop headers dropped both ways,
//! moto's answers corrected on the way back when asked.

use std::io;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{CONTENT_LENGTH, HeaderMap, HeaderValue};
use hyper::{Request, Response, Uri};

use super::{ProxyBody, ProxyInner, moto_fixups};
use crate::http_util::BoxError;

/// Headers that belong to one hop and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// Check that `upstream` is an `http://` URL on a loopback address; return `http://host:port`.
pub(super) fn loopback_base(upstream: &str) -> io::Result<String> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("proxy upstream {upstream:?}: {why}"),
        )
    };
    let uri: Uri = upstream.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(bad("only loopback upstreams are allowed"));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(bad("the upstream must not have a path"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no authority"))?;
    Ok(format!("http://{authority}"))
}

/// Drop the headers that belong to one hop (and those `Connection` names).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Also drop headers named by `Connection`.
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
}

impl ProxyInner {
    /// Send the request upstream and answer what it answers.
    pub(super) async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        op: &str,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("{}{}", self.upstream, path_and_query).parse()?;
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        if !body.is_empty() || headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(Full::new(body))?;
        *req.headers_mut() = headers;
        let resp = self.client.request(req).await?;
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let status = rparts.status.as_u16();
        if !(self.moto_fixups && moto_fixups::fixable(op, status)) {
            return Ok(Response::from_parts(rparts, Either::Right(rbody)));
        }
        moto_fixups::rewrite(rparts, rbody, op, status).await
    }
}
