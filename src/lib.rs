//! ec2ami: turn an operating-system disk image into tested, public, discoverable
//! Amazon EC2 machine images.
//!
//! The modules follow the pipeline: [`image`] reads disk images, [`snapshot`] moves
//! them to and from EBS snapshots, [`ami`] registers, copies and shares machine images;
//! [`snapshot`] also compares two disks block by block (`ec2ami diff`);
//! [`boot`] proves an image boots locally in QEMU, with [`imds`] as its metadata
//! service; [`params`] and [`publish`] put a release out ([`import`] is the S3 import
//! path); [`bench`](mod@bench) times how fast an AMI boots and [`ec2test`] tests
//! published AMIs on EC2; [`history`] keeps those times, plots them and catches regressions; [`prune`]
//! deletes what is obsolete; [`state`] is the SQLite database they and the publish
//! journal share; [`userdata`] makes and checks the user data the images read at
//! first boot; [`aws`] builds the SDK clients and holds the one retry layer. The
//! command line is the `ec2ami` binary's own (`src/main.rs`, `src/cli/`).

#![warn(missing_docs)]

pub mod ami;
pub mod aws;
pub mod bench;
pub mod boot;
pub mod ec2test;
pub mod history;
pub mod image;
pub mod imds;
pub mod import;
pub mod params;
pub mod progress;
pub mod prune;
pub mod publish;
pub mod snapshot;
pub mod state;
pub mod units;
pub mod userdata;
pub mod validate_input;

#[cfg(test)]
mod fuzz_tests;
