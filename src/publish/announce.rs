//! The release announcement: one SNS message for the whole release, sent once every
//! image is in every region (available, shared, its parameters written), as
//! bsdec2-image-upload sends it with its `TOPICARN RELEASEVERSION IMAGEVERSION`
//! arguments: subject `New <RELEASEVERSION> AMIs`, body the JSON document
//!
//! ```json
//! {
//!   "v1": {
//!     "ReleaseVersion": "15.0-RELEASE",
//!     "ImageVersion": "releng/15.0@abc1234",
//!     "Regions": {
//!       "us-east-1": [
//!         {
//!           "Name": "FreeBSD 15.0-RELEASE-amd64 base UFS",
//!           "Architecture": "x86_64",
//!           "ImageId": "ami-..."
//!         }
//!       ]
//!     }
//!   }
//! }
//! ```
//!
//! published in the topic ARN's region. A failure to announce is a warning (the AMIs
//! are published), as there. The journal records the message once SNS accepted it, so
//! a rerun never sends it again; a run that stopped before it sends it once.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::aws::{AwsError, Clients, RetryPolicy};
use crate::state::journal::{Journal, Status, Step, StepKey};

/// Where and what to announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announce {
    /// The SNS topic ARN (`arn:aws:sns:REGION:ACCOUNT:NAME`).
    pub topic: String,
    /// RELEASEVERSION, e.g. `15.0-RELEASE`.
    pub release: String,
    /// IMAGEVERSION, e.g. `releng/15.0@abc1234`.
    pub image: String,
}

/// The longest subject SNS accepts.
const MAX_SUBJECT: usize = 100;

impl Announce {
    /// Check the topic ARN and the versions; the error says what is wrong.
    pub fn new(topic: &str, release: &str, image: &str) -> Result<Announce, String> {
        topic_region(topic)?;
        for (what, v) in [("release version", release), ("image version", image)] {
            if v.is_empty() {
                return Err(format!("the announcement's {what} is empty"));
            }
            if v.chars().any(char::is_control) {
                return Err(format!(
                    "the announcement's {what} `{}` contains a control character",
                    v.escape_debug()
                ));
            }
        }
        let a = Announce {
            topic: topic.to_string(),
            release: release.to_string(),
            image: image.to_string(),
        };
        if a.subject().chars().count() > MAX_SUBJECT {
            return Err(format!(
                "the announcement subject `{}` is longer than the {MAX_SUBJECT} characters SNS \
                 accepts",
                a.subject()
            ));
        }
        Ok(a)
    }

    /// The region the topic lives in (the message is published there).
    pub fn region(&self) -> &str {
        topic_region(&self.topic).expect("checked by Announce::new")
    }

    /// `New <RELEASEVERSION> AMIs`.
    pub fn subject(&self) -> String {
        format!("New {} AMIs", self.release)
    }

    /// The message body for `amis` (region, AMI name, architecture, AMI id), grouped
    /// by region in the order the regions first appear.
    pub fn message(&self, amis: &[Entry]) -> String {
        let doc = Document {
            v1: V1 {
                release_version: &self.release,
                image_version: &self.image,
                regions: Regions(amis),
            },
        };
        serde_json::to_string_pretty(&doc).expect("the announcement serialises")
    }

    /// The journal step that records the message.
    pub fn step(&self) -> StepKey {
        StepKey::new("", "announce", self.region(), &self.topic)
    }
}

/// The region of an SNS topic ARN, or why it is not one.
pub fn topic_region(arn: &str) -> Result<&str, String> {
    let bad = |why: &str| {
        format!(
            "`{arn}` is not an SNS topic ARN ({why}; expected arn:aws:sns:REGION:ACCOUNT:TOPIC)"
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" {
        return Err(bad("it has not the six fields of an ARN"));
    }
    let (partition, service, region, account, name) =
        (parts[1], parts[2], parts[3], parts[4], parts[5]);
    if !partition.starts_with("aws") {
        return Err(bad("unknown partition"));
    }
    if service != "sns" {
        return Err(bad(&format!("its service is `{service}`, not sns")));
    }
    if region == "all" || !super::release::looks_like_region(region) {
        return Err(bad(&format!("`{region}` is not a region")));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the account is not 12 digits"));
    }
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if base.is_empty()
        || base.len() > 256
        || !base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("the topic name is not 1-256 letters, digits, - or _"));
    }
    Ok(region)
}

/// One AMI of the announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Region.
    pub region: String,
    /// AMI name.
    pub name: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// AMI id.
    pub image_id: String,
}

#[derive(Serialize)]
struct Document<'a> {
    v1: V1<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct V1<'a> {
    release_version: &'a str,
    image_version: &'a str,
    regions: Regions<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Item<'a> {
    name: &'a str,
    architecture: &'a str,
    image_id: &'a str,
}

/// The entries grouped by region, regions in first-seen order (a JSON object keeps the
/// order it is written in).
struct Regions<'a>(&'a [Entry]);

impl Serialize for Regions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut order: Vec<&str> = Vec::new();
        for e in self.0 {
            if !order.contains(&e.region.as_str()) {
                order.push(&e.region);
            }
        }
        let mut map = s.serialize_map(Some(order.len()))?;
        for region in order {
            let items: Vec<Item> = self
                .0
                .iter()
                .filter(|e| e.region == region)
                .map(|e| Item {
                    name: &e.name,
                    architecture: &e.architecture,
                    image_id: &e.image_id,
                })
                .collect();
            map.serialize_entry(region, &items)?;
        }
        map.end()
    }
}

/// What the announcement of a run did.
#[derive(Debug, Clone, Serialize)]
pub struct AnnounceReport {
    /// The topic.
    pub topic: String,
    /// The subject.
    pub subject: String,
    /// SNS's message id (also for a message an earlier run sent).
    pub message_id: Option<String>,
    /// True when an earlier run had sent it (nothing was sent now).
    pub already_sent: bool,
    /// Why it could not be sent (a warning: the AMIs are published).
    pub warning: Option<String>,
}

/// What a publish will do about the announcement, decided from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceDecision {
    /// Send it (once the images are published).
    Send,
    /// An earlier run sent it: this message id.
    Sent(String),
}

/// The decision for `announce`, given its journal step as an earlier run left it.
pub fn decision(step: Option<&Step>) -> AnnounceDecision {
    match step {
        Some(s) if s.status == Status::Done => {
            AnnounceDecision::Sent(s.resource_id.clone().unwrap_or_default())
        }
        _ => AnnounceDecision::Send,
    }
}

/// Publish the announcement of `amis` (unless `already` says an earlier run did) and
/// journal it. SNS's refusal is returned in the report as a warning, never as an error:
/// only the journal failing is an error.
pub async fn send(
    home: &Clients,
    announce: &Announce,
    already: &AnnounceDecision,
    amis: &[Entry],
    journal: &Journal,
    retry: &RetryPolicy,
) -> Result<AnnounceReport, crate::state::StateError> {
    let mut report = AnnounceReport {
        topic: announce.topic.clone(),
        subject: announce.subject(),
        message_id: None,
        already_sent: false,
        warning: None,
    };
    if let AnnounceDecision::Sent(id) = already {
        tracing::info!(
            "the announcement to {} went out in an earlier run (message {id}): not sent again",
            announce.topic
        );
        report.message_id = Some(id.clone());
        report.already_sent = true;
        return Ok(report);
    }
    let clients = home.in_region(announce.region());
    let sns = crate::aws::sns::client(&clients);
    let body = announce.message(amis);
    let call = clients.call("Publish").on(announce.topic.clone());
    // A FIFO topic drops a repeat of the same deduplication id (within 5 minutes): a
    // retry after a lost answer is then not delivered twice. A standard topic has no
    // such thing; there a lost answer can mean a second message.
    let fifo = announce.topic.ends_with(".fifo");
    let dedup = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{}\0{body}", announce.subject()));
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let sent = retry
        .send(&call, || {
            let mut req = sns
                .publish()
                .topic_arn(&announce.topic)
                .subject(announce.subject())
                .message(&body);
            if fifo {
                req = req
                    .message_group_id("ec2ami-release")
                    .message_deduplication_id(&dedup);
            }
            req.send()
        })
        .await;
    match sent {
        Ok(out) => {
            let id = out.message_id().unwrap_or_default().to_string();
            journal.record(&announce.step(), Status::Done, Some(&id), None)?;
            tracing::info!("announced the release to {} (message {id})", announce.topic);
            report.message_id = Some(id);
        }
        Err(e) => report.warning = Some(warning(announce, &e)),
    }
    Ok(report)
}

fn warning(announce: &Announce, e: &AwsError) -> String {
    format!(
        "the release announcement to {} was not sent: {e} (the AMIs are published; run the \
         same command again to send it)",
        announce.topic
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_arns_are_checked() {
        assert_eq!(
            topic_region("arn:aws:sns:us-east-1:123456789012:freebsd-release").unwrap(),
            "us-east-1"
        );
        assert_eq!(
            topic_region("arn:aws-us-gov:sns:us-gov-west-1:123456789012:t.fifo").unwrap(),
            "us-gov-west-1"
        );
        for (bad, why) in [
            ("arn:aws:sqs:us-east-1:123456789012:q", "service is `sqs`"),
            ("arn:aws:sns:mars:123456789012:t", "`mars` is not a region"),
            ("arn:aws:sns:us-east-1:12345:t", "12 digits"),
            ("arn:aws:sns:us-east-1:123456789012:", "topic name"),
            ("arn:aws:sns:us-east-1:123456789012:a/b", "topic name"),
            ("sns:us-east-1:topic", "six fields"),
            ("15.0-RELEASE", "six fields"),
        ] {
            let e = topic_region(bad).unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn versions_are_checked() {
        let arn = "arn:aws:sns:us-east-1:123456789012:t";
        assert!(Announce::new(arn, "", "x").unwrap_err().contains("empty"));
        assert!(
            Announce::new(arn, "15.0\nRELEASE", "x")
                .unwrap_err()
                .contains("control")
        );
        assert!(
            Announce::new(arn, &"x".repeat(95), "x")
                .unwrap_err()
                .contains("100 characters")
        );
        let a = Announce::new(arn, "15.0-RELEASE", "releng/15.0@abc").unwrap();
        assert_eq!(a.subject(), "New 15.0-RELEASE AMIs");
        assert_eq!(a.region(), "us-east-1");
    }

    #[test]
    fn the_message_is_bsdec2_image_uploads_document() {
        let a = Announce::new(
            "arn:aws:sns:us-east-1:123456789012:t",
            "15.0-RELEASE",
            "releng/15.0@abc",
        )
        .unwrap();
        let e = |region: &str, name: &str, arch: &str, id: &str| Entry {
            region: region.into(),
            name: name.into(),
            architecture: arch.into(),
            image_id: id.into(),
        };
        let amis = [
            e("us-west-2", "A \"quoted\" name", "x86_64", "ami-1"),
            e("eu-west-1", "A \"quoted\" name", "x86_64", "ami-2"),
            e("us-west-2", "B", "arm64", "ami-3"),
        ];
        let text = a.message(&amis);
        // The layout bsdec2-image-upload writes (two-space indents), strings escaped.
        assert_eq!(
            text,
            r#"{
  "v1": {
    "ReleaseVersion": "15.0-RELEASE",
    "ImageVersion": "releng/15.0@abc",
    "Regions": {
      "us-west-2": [
        {
          "Name": "A \"quoted\" name",
          "Architecture": "x86_64",
          "ImageId": "ami-1"
        },
        {
          "Name": "B",
          "Architecture": "arm64",
          "ImageId": "ami-3"
        }
      ],
      "eu-west-1": [
        {
          "Name": "A \"quoted\" name",
          "Architecture": "x86_64",
          "ImageId": "ami-2"
        }
      ]
    }
  }
}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["v1"]["Regions"]["eu-west-1"][0]["ImageId"], "ami-2");
    }

    #[test]
    fn a_journalled_message_is_not_sent_again() {
        let key = StepKey::new("", "announce", "us-east-1", "arn");
        let step = |status| Step {
            key: key.clone(),
            resource_id: Some("m-1".into()),
            status,
            detail: None,
        };
        assert_eq!(decision(None), AnnounceDecision::Send);
        assert_eq!(
            decision(Some(&step(Status::Started))),
            AnnounceDecision::Send
        );
        assert_eq!(
            decision(Some(&step(Status::Done))),
            AnnounceDecision::Sent("m-1".into())
        );
    }
}
