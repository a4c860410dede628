//! `manifest verify`: fetch every part of a manifest by its pre-signed get-url, as
//! ImportVolume does, and check its length against its byte range and its bytes against
//! its `<sha256>`. Parts are fetched concurrently; every bad part is reported.

use std::time::Duration;

use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use super::manifest::{Manifest, Part};

/// What was found about one part.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartCheck {
    /// The part's index.
    pub index: u64,
    /// Its key.
    pub key: String,
    /// `ok`, or what is wrong.
    pub result: String,
}

impl PartCheck {
    /// Whether the part is as the manifest says.
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }
}

/// The result of a verification: one check per part.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Bytes the manifest describes.
    pub size: u64,
    /// Per part, in order.
    pub parts: Vec<PartCheck>,
}

impl Verification {
    /// The parts that failed.
    pub fn failures(&self) -> Vec<&PartCheck> {
        self.parts.iter().filter(|p| !p.ok()).collect()
    }
}

/// Options of `manifest verify`.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Concurrent fetches.
    pub workers: usize,
    /// Limit for one fetch.
    pub timeout: Duration,
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn client() -> Result<Client<Https, Empty<bytes::Bytes>>, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

async fn fetch(
    client: &Client<Https, Empty<bytes::Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("get-url is not a URL: {e}"))?;
    let work = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| format!("GET failed: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            let code = text
                .split("<Code>")
                .nth(1)
                .and_then(|t| t.split("</Code>").next())
                .unwrap_or("");
            return Err(format!("GET answered {status} {code}")
                .trim_end()
                .to_string());
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("GET took more than {}s", timeout.as_secs()))?
}

fn check(part: &Part, got: Result<Vec<u8>, String>) -> PartCheck {
    let result = match got {
        Err(e) => e,
        Ok(data) if data.len() as u64 != part.len() => format!(
            "holds {} bytes; its byte range {}-{} says {}",
            data.len(),
            part.start,
            part.end,
            part.len()
        ),
        Ok(data) => match &part.sha256 {
            None => "no <sha256> in the manifest: only its length could be checked".into(),
            Some(want) => {
                let got: String = Sha256::digest(&data)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if &got == want {
                    "ok".into()
                } else {
                    format!("SHA-256 {got}, the manifest says {want}")
                }
            }
        },
    };
    PartCheck {
        index: part.index,
        key: part.key.clone(),
        result,
    }
}

/// Fetch and check every part of `manifest`.
pub async fn verify(manifest: &Manifest, opts: VerifyOptions) -> Result<Verification, String> {
    let client = client()?;
    let client = &client;
    let parts = futures_util::stream::iter(manifest.parts.iter())
        .map(|p| async move { check(p, fetch(client, &p.get_url, opts.timeout).await) })
        .buffered(opts.workers.max(1))
        .collect()
        .await;
    Ok(Verification {
        size: manifest.size,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(len: u64, sha: Option<&str>) -> Part {
        Part {
            index: 3,
            start: 100,
            end: 100 + len - 1,
            key: "k/part3".into(),
            head_url: String::new(),
            get_url: String::new(),
            delete_url: String::new(),
            sha256: sha.map(str::to_string),
        }
    }

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_part_is_ok_only_with_its_length_and_checksum() {
        assert!(check(&part(3, Some(ABC)), Ok(b"abc".to_vec())).ok());
        let r = check(&part(3, Some(ABC)), Ok(b"abd".to_vec()));
        assert!(r.result.starts_with("SHA-256 "), "{}", r.result);
        assert!(r.result.ends_with(&format!("the manifest says {ABC}")));
        let r = check(&part(4, Some(ABC)), Ok(b"abc".to_vec()));
        assert_eq!(r.result, "holds 3 bytes; its byte range 100-103 says 4");
        let r = check(&part(3, None), Ok(b"abc".to_vec()));
        assert!(!r.ok() && r.result.contains("no <sha256>"));
        let r = check(
            &part(3, Some(ABC)),
            Err("GET answered 403 Forbidden".into()),
        );
        assert_eq!(r.result, "GET answered 403 Forbidden");
    }
}
