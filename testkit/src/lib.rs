//! ec2ami's test world: a local AWS-protocol world on 127.0.0.1 (moto with the
//! harness's extension, a fault-injecting recording proxy, a strict EBS direct
//! endpoint) and a stand-in for a booting instance's TCP port (the boot fixture).
//!
//! This crate is never shipped (`publish = false`): `ec2ami` takes it as a
//! dev-dependency for its integration tests, and its `ec2ami-testkit` binary runs the
//! servers for the demo and benchmark scripts.

#![warn(missing_docs)]

pub mod boot_fixture;
mod http_util;
pub mod moto;
pub mod proxy;
mod rest_ops;
pub mod strict_ebs;
mod units;

pub use boot_fixture::{BootFixture, BootSchedule, PortState};
pub use moto::{MotoOptions, MotoServer};
pub use proxy::{Fault, FaultProxy, FaultRule, ProxyConfig, RecordedRequest};
pub use strict_ebs::{SnapshotView, StrictEbs, StrictEbsConfig};
pub use units::parse_duration;
