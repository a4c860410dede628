//! The instance metadata service, both sides: a local IMDSv2-compatible service
//! ([`server`]) that `ec2ami boot` gives its guests at 169.254.169.254 (through QEMU's
//! user networking and [`relay`]), and an IMDSv2 client for scripts on an instance
//! ([`client`], `ec2ami imds get`) that tries IPv4 first with 100 ms timeouts.

pub(crate) mod client;
mod http;
pub(crate) mod relay;
pub(crate) mod server;

pub use client::{Answer, GetOptions, ImdsError, get};
pub use http::{Request, Response};
pub use relay::relay;
pub use server::{Imds, ImdsRequest, ImdsServer, InstanceMetadata, TOKEN_HEADER, TTL_HEADER};
