//! Integration tests: the real `ec2ami` binary against a local AWS-protocol world on
//! 127.0.0.1 (moto and the strict EBS endpoint, behind the recording fault proxy), and
//! checks that the harness's moto keeps the AMI state AWS keeps.

mod bad_input;
mod bench;
mod boot;
mod clear_failures;
mod common;
mod compat;
mod diff;
mod ec2test;
mod faults;
mod flag_coverage;
mod flags;
mod history;
mod hostile;
mod hostile_table;
mod images;
mod imds;
mod incremental;
mod lifecycle;
mod lineage;
mod moto_ext;
mod plan_agrees;
mod prune;
mod publish;
mod realism;
mod republish;
mod roundtrip;
mod s3_import;
mod shipped;
mod snapshot_index;
mod userdata;
