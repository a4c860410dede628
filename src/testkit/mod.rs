//! Test support: a local AWS-protocol world on 127.0.0.1 (moto, a fault-injecting
//! recording proxy, a strict EBS direct endpoint) and a stand-in for a booting
//! instance's TCP port (the boot fixture).

pub mod boot_fixture;
mod http_util;
pub mod moto;
pub mod proxy;
pub mod strict_ebs;

pub use boot_fixture::{BootFixture, BootSchedule, PortState};
pub use moto::{MotoOptions, MotoServer};
pub use proxy::{Fault, FaultProxy, FaultRule, ProxyConfig, RecordedRequest};
pub use strict_ebs::{SnapshotView, StrictEbs, StrictEbsConfig};
