//! Integration tests: the real `ec2ami` binary against a local AWS-protocol world on
//! 127.0.0.1 (moto and the strict EBS endpoint, behind the recording fault proxy), and
//! checks that the harness's moto keeps the AMI state AWS keeps.

mod bad_input;
mod bench;
mod boot;
mod common;
mod compat;
mod ec2test;
mod faults;
mod flag_coverage;
mod history;
mod hostile;
mod images;
mod imds;
mod lifecycle;
mod moto_ext;
mod plan_agrees;
mod prune;
mod publish;
mod realism;
mod roundtrip;
mod s3_import;
mod shipped;
mod userdata;
