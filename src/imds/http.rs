//! Just enough HTTP/1.1 for the instance metadata service and its client: requests and
//! responses with headers and a Content-Length body, keep-alive. No chunked encoding
//! (neither EC2's IMDS nor its clients use it), bounded sizes so a confused peer cannot
//! make either side buffer without end.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest request or status line plus headers accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted (EC2 user data is at most 16 KiB; answers are small).
pub(crate) const MAX_BODY: usize = 1 << 20;

/// An HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`...
    pub method: String,
    /// The request target, e.g. `/latest/meta-data/ami-id`.
    pub path: String,
    /// Headers in the order received (names as sent).
    pub headers: Vec<(String, String)>,
    /// The body (empty without Content-Length).
    pub body: Vec<u8>,
    /// HTTP/1.0, or `Connection: close`: answer, then close.
    pub close: bool,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers besides Content-Length, Connection and Server, which are added.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.into(),
        }
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Read one CRLF- (or LF-) terminated line, within what is left of the head budget.
async fn line<R: AsyncBufRead + Unpin>(r: &mut R, budget: &mut usize) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n > *budget {
        return Err(bad("header too long"));
    }
    *budget -= n;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| bad("header is not UTF-8"))
}

/// Headers up to the empty line.
async fn headers<R: AsyncBufRead + Unpin>(
    r: &mut R,
    budget: &mut usize,
) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        let l = line(r, budget).await?;
        if l.is_empty() {
            return Ok(out);
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header `{l}`")))?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
}

async fn body<R: AsyncBufRead + Unpin>(
    r: &mut R,
    headers: &[(String, String)],
) -> io::Result<Vec<u8>> {
    let Some(len) = header(headers, "content-length") else {
        return Ok(Vec::new());
    };
    let len: usize = len
        .parse()
        .map_err(|_| bad(format!("bad Content-Length `{len}`")))?;
    if len > MAX_BODY {
        return Err(bad(format!("body of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Read the next request; `None` when the peer closed the connection between requests.
pub async fn read_request<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Request>> {
    if r.fill_buf().await?.is_empty() {
        return Ok(None);
    }
    let mut budget = MAX_HEAD;
    let first = line(r, &mut budget).await?;
    let mut parts = first.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line `{first}`")));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !path.starts_with('/') {
        return Err(bad(format!("malformed request line `{first}`")));
    }
    let headers = headers(r, &mut budget).await?;
    let body = body(r, &headers).await?;
    let close = version == "HTTP/1.0"
        || header(&headers, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
        close,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

/// Write `resp`, saying whether the connection stays open.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: {}\r\nServer: EC2ws\r\n\r\n",
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Write a request (with `Content-Length: 0` for a PUT without body, as IMDS wants).
pub async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, req: &Request) -> io::Result<()> {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.body.is_empty() || req.method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Read a response (status, headers, Content-Length body).
pub async fn read_response<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Response> {
    let mut budget = MAX_HEAD;
    let first = line(r, &mut budget).await?;
    let mut parts = first.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("malformed status line `{first}`")));
    };
    let status: u16 = code
        .parse()
        .ok()
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("malformed status line `{first}`")))?;
    let headers = headers(r, &mut budget).await?;
    let body = body(r, &headers).await?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn requests_parse_and_keep_alive() {
        let raw = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
            X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n\
            GET /latest/meta-data/ HTTP/1.0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let a = read_request(&mut r).await.unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str()),
            ("PUT", "/latest/api/token")
        );
        assert_eq!(
            a.header("x-AWS-ec2-metadata-token-ttl-seconds"),
            Some("21600")
        );
        assert!(!a.close);
        let b = read_request(&mut r).await.unwrap().unwrap();
        assert_eq!(b.path, "/latest/meta-data/");
        assert!(b.close, "HTTP/1.0 closes");
        assert!(read_request(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn malformed_and_oversized_requests_are_errors() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
            b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x",
        ] {
            let mut r = BufReader::new(raw);
            assert!(read_request(&mut r).await.is_err(), "{raw:?}");
        }
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        let mut r = BufReader::new(long.as_bytes());
        assert!(read_request(&mut r).await.is_err());
    }

    #[tokio::test]
    async fn responses_round_trip() {
        let mut out = Vec::new();
        let resp = Response::text(404, "Not Found");
        write_response(&mut out, &resp, false).await.unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        let back = read_response(&mut BufReader::new(&out[..])).await.unwrap();
        assert_eq!(back.status, 404);
        assert_eq!(back.body, b"Not Found");
        assert_eq!(back.header("content-type"), Some("text/plain"));
    }
}
