//! An IMDSv2 client that never stalls a boot: `ec2ami imds get PATH`.
//!
//! The seeds' bug: a metadata client that tried IPv6 first and kept the default 75 s
//! TCP connect timeout made FreeBSD boots slow where IPv6 IMDS was not enabled. This
//! one tries IPv4 (169.254.169.254) first with a 100 ms connect timeout and a 100 ms
//! reply timeout (IMDS answers from the same physical host, in well under a
//! millisecond), goes to IPv6 (fd00:ec2::254) only when IPv4 cannot be connected to,
//! and retries a bounded number of times within an overall deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::http::{self, Request};
use super::server::{TOKEN_HEADER, TTL_HEADER};

/// EC2's metadata service over IPv4.
pub const IPV4_ENDPOINT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80);
/// EC2's metadata service over IPv6 (Nitro instances with IPv6 IMDS enabled).
pub const IPV6_ENDPOINT: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    80,
);
/// Attempts at most, whatever the deadline.
const MAX_ATTEMPTS: u32 = 10;

/// How to ask.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Addresses in the order tried; the next is tried only when one cannot be
    /// connected to.
    pub endpoints: Vec<SocketAddr>,
    /// Limit for one TCP connect.
    pub connect_timeout: Duration,
    /// Limit for one answer (from the request sent to the whole response read).
    pub reply_timeout: Duration,
    /// Give up after this long, retries included.
    pub timeout: Duration,
    /// The session token's lifetime asked for, in seconds.
    pub token_ttl: u64,
}

impl Default for GetOptions {
    fn default() -> Self {
        GetOptions {
            endpoints: vec![IPV4_ENDPOINT, IPV6_ENDPOINT],
            connect_timeout: Duration::from_millis(100),
            reply_timeout: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            token_ttl: 21600,
        }
    }
}

/// What the metadata service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The value (bytes as served).
    Value(Vec<u8>),
    /// 404: there is no such path (no user data, no key...).
    NotFound,
}

/// Why there is no answer.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// Nothing answered within the deadline.
    #[error(
        "no instance metadata service answered within {timeout:?} ({attempts} attempt(s): {tried})"
    )]
    NoAnswer {
        /// The deadline.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
        /// What happened at each address, last attempt.
        tried: String,
    },
    /// The service answered with an error (after a fresh token for a 401).
    #[error("the instance metadata service answered {status} for {path}")]
    Refused {
        /// The path asked for.
        path: String,
        /// HTTP status.
        status: u16,
    },
    /// The path given cannot be asked for.
    #[error("{0}")]
    Invalid(String),
}

/// The request path for what a user typed: `instance-id` and `meta-data/instance-id`
/// are `/latest/meta-data/instance-id`; `user-data` and `dynamic/...` are under
/// `/latest/`; a full `/latest/...` (or `/1.0/...`) path is used as is.
pub fn request_path(path: &str) -> Result<String, ImdsError> {
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(ImdsError::Invalid(format!(
            "`{path}` is not a metadata path"
        )));
    }
    if path.starts_with('/') {
        return Ok(path.to_string());
    }
    let top = path.split('/').next().unwrap_or_default();
    Ok(match top {
        "meta-data" | "user-data" | "dynamic" => format!("/latest/{path}"),
        _ => format!("/latest/meta-data/{path}"),
    })
}

/// What one attempt came to.
enum Attempt {
    /// A final answer.
    Done(Result<Answer, ImdsError>),
    /// Nothing usable: why, per address.
    Failed(String),
}

/// Ask the metadata service for `path` (see [`request_path`]).
pub async fn get(path: &str, opts: &GetOptions) -> Result<Answer, ImdsError> {
    let target = request_path(path)?;
    if opts.endpoints.is_empty() {
        return Err(ImdsError::Invalid("no metadata endpoint to ask".into()));
    }
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut backoff = Duration::from_millis(20);
    let mut attempts = 0;
    let mut tried = String::new();
    while attempts < MAX_ATTEMPTS && Instant::now() < deadline {
        attempts += 1;
        match attempt(&target, opts, deadline).await {
            Attempt::Done(r) => return r,
            Attempt::Failed(why) => tried = why,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::time::sleep((backoff + jitter).min(left)).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
    Err(ImdsError::NoAnswer {
        timeout: opts.timeout,
        attempts,
        tried,
    })
}

/// Connect to the first address that accepts, in order, each within the connect
/// timeout (and the deadline).
async fn connect(
    opts: &GetOptions,
    deadline: Instant,
    why: &mut Vec<String>,
) -> Option<(SocketAddr, TcpStream)> {
    for ep in &opts.endpoints {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            why.push(format!("{ep}: deadline"));
            return None;
        }
        match timeout(opts.connect_timeout.min(left), TcpStream::connect(ep)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Some((*ep, s));
            }
            Ok(Err(e)) => why.push(format!("{ep}: {e}")),
            Err(_) => why.push(format!(
                "{ep}: no connection within {} ms",
                opts.connect_timeout.as_millis()
            )),
        }
    }
    None
}

/// One exchange on a connection: send `req`, read the answer within the reply timeout.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    req: &Request,
    opts: &GetOptions,
    deadline: Instant,
) -> Result<http::Response, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let limit = opts.reply_timeout.min(left);
    let work = async {
        http::write_request(stream.get_mut(), req).await?;
        http::read_response(stream).await
    };
    match timeout(limit, work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

fn token_request(opts: &GetOptions) -> Request {
    Request {
        method: "PUT".into(),
        path: "/latest/api/token".into(),
        headers: vec![
            ("Host".into(), "169.254.169.254".into()),
            (TTL_HEADER.into(), opts.token_ttl.to_string()),
        ],
        ..Request::default()
    }
}

fn get_request(path: &str, token: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        headers: vec![
            ("Host".into(), "169.254.169.254".into()),
            (TOKEN_HEADER.into(), token.into()),
        ],
        ..Request::default()
    }
}

/// Connect, get a token, get the path (with one fresh token on a 401).
async fn attempt(target: &str, opts: &GetOptions, deadline: Instant) -> Attempt {
    let mut why = Vec::new();
    let Some((ep, stream)) = connect(opts, deadline, &mut why).await else {
        return Attempt::Failed(why.join("; "));
    };
    let mut stream = BufReader::new(stream);
    let mut refreshed = false;
    loop {
        let tok = match exchange(&mut stream, &token_request(opts), opts, deadline).await {
            Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).trim().to_string(),
            Ok(r) => {
                return Attempt::Done(Err(ImdsError::Refused {
                    path: "/latest/api/token".into(),
                    status: r.status,
                }));
            }
            Err(e) => return Attempt::Failed(format!("{ep}: token: {e}")),
        };
        let answer = match exchange(&mut stream, &get_request(target, &tok), opts, deadline).await {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(format!("{ep}: {target}: {e}")),
        };
        match answer.status {
            200 => return Attempt::Done(Ok(Answer::Value(answer.body))),
            404 => return Attempt::Done(Ok(Answer::NotFound)),
            // The token expired or the service restarted between the two requests.
            401 if !refreshed => {
                tracing::debug!("{ep}: 401 with a fresh token; asking for another");
                refreshed = true;
                if answer
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    return Attempt::Failed(format!("{ep}: {target}: 401, connection closed"));
                }
            }
            status => {
                return Attempt::Done(Err(ImdsError::Refused {
                    path: target.to_string(),
                    status,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_as_users_type_them() {
        let p = |s| request_path(s).unwrap();
        assert_eq!(p("instance-id"), "/latest/meta-data/instance-id");
        assert_eq!(p("placement/region"), "/latest/meta-data/placement/region");
        assert_eq!(p("meta-data/ami-id"), "/latest/meta-data/ami-id");
        assert_eq!(p("user-data"), "/latest/user-data");
        assert_eq!(
            p("dynamic/instance-identity/document"),
            "/latest/dynamic/instance-identity/document"
        );
        assert_eq!(p("/1.0/meta-data/ami-id"), "/1.0/meta-data/ami-id");
        assert!(request_path("a b").is_err());
        assert!(request_path("x?y").is_err());
    }

    #[test]
    fn default_endpoints_are_ec2s_ipv4_first() {
        let o = GetOptions::default();
        assert_eq!(o.endpoints[0].to_string(), "169.254.169.254:80");
        assert_eq!(o.endpoints[1].to_string(), "[fd00:ec2::254]:80");
        assert_eq!(o.connect_timeout, Duration::from_millis(100));
    }
}
