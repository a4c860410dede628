//! The EC2 query calls that concern snapshots: DescribeSnapshots (ids, owners,
//! filters) and DeleteSnapshot.

use std::collections::BTreeMap;

use super::http_util;
use super::state::{Snap, Status};
use super::wire::{ApiError, ApiResult, EC2_XMLNS, ec2_xml, numbered};
use super::{Inner, OWNER_ID};

impl Inner {
    pub(super) fn describe_snapshots(&self, params: &[(String, String)]) -> ApiResult {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("DryRun") == Some("true") {
            return Err(ApiError::ec2(
                412,
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
            ));
        }
        let ids: Vec<&str> = numbered(params, "SnapshotId");
        let owners: Vec<&str> = numbered(params, "Owner");
        // Filters: Filter.N.Name / Filter.N.Value.M
        let mut filters: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
        for (k, v) in params {
            let Some(rest) = k.strip_prefix("Filter.") else {
                continue;
            };
            let mut it = rest.splitn(3, '.');
            let (Some(n), Some(field)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            let e = filters.entry(n).or_default();
            match field {
                "Name" => e.0 = v.clone(),
                "Value" => e.1.push(v.clone()),
                _ => {}
            }
        }
        for (name, _) in filters.values() {
            let known = matches!(
                name.as_str(),
                "snapshot-id"
                    | "status"
                    | "description"
                    | "volume-size"
                    | "owner-id"
                    | "encrypted"
                    | "tag-key"
                    | "volume-id"
            ) || name.starts_with("tag:");
            if !known {
                return Err(ApiError::ec2(
                    400,
                    "InvalidParameterValue",
                    format!("The filter '{name}' is invalid"),
                ));
            }
        }
        let st = self.lock();
        let mut selected: Vec<&Snap> = Vec::new();
        if ids.is_empty() {
            let mut all: Vec<&Snap> = st.snapshots.values().collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            selected = all;
        } else {
            for id in &ids {
                if !id.starts_with("snap-") {
                    return Err(ApiError::ec2(
                        400,
                        "InvalidSnapshotID.Malformed",
                        format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
                    ));
                }
                match st.snapshots.get(*id) {
                    Some(s) => selected.push(s),
                    None => {
                        return Err(ApiError::ec2(
                            400,
                            "InvalidSnapshot.NotFound",
                            format!("The snapshot '{id}' does not exist."),
                        ));
                    }
                }
            }
        }
        let matches = |s: &Snap| -> bool {
            if !owners.is_empty() && !owners.iter().any(|o| *o == "self" || *o == OWNER_ID) {
                return false;
            }
            filters.values().all(|(name, values)| {
                let one = |v: &String| -> bool {
                    match name.as_str() {
                        "snapshot-id" => v == &s.id,
                        "status" => v == s.status.as_str(),
                        "description" => s.description.as_deref() == Some(v.as_str()),
                        "volume-size" => v == &s.volume_size.to_string(),
                        "owner-id" => v == OWNER_ID,
                        "encrypted" => v == if s.encrypted { "true" } else { "false" },
                        "volume-id" => v == "vol-ffffffff",
                        "tag-key" => s.tags.iter().any(|(k, _)| k == v),
                        n => {
                            let key = n.trim_start_matches("tag:");
                            s.tags.iter().any(|(k, tv)| k == key && tv == v)
                        }
                    }
                };
                values.iter().any(one)
            })
        };
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSnapshotsResponse xmlns=\"{EC2_XMLNS}\"><requestId>{}</requestId><snapshotSet>",
            http_util::request_id()
        );
        for s in selected.into_iter().filter(|s| matches(s)) {
            let x = http_util::xml_escape;
            xml.push_str("<item>");
            xml.push_str(&format!("<snapshotId>{}</snapshotId>", x(&s.id)));
            xml.push_str("<volumeId>vol-ffffffff</volumeId>");
            xml.push_str(&format!("<status>{}</status>", s.status.as_str()));
            xml.push_str(&format!(
                "<startTime>{}</startTime>",
                http_util::iso8601(s.start_time)
            ));
            let progress = if s.status == Status::Completed {
                "100%"
            } else {
                "0%"
            };
            xml.push_str(&format!("<progress>{progress}</progress>"));
            xml.push_str(&format!("<ownerId>{OWNER_ID}</ownerId>"));
            xml.push_str(&format!("<volumeSize>{}</volumeSize>", s.volume_size));
            if let Some(d) = &s.description {
                xml.push_str(&format!("<description>{}</description>", x(d)));
            } else {
                xml.push_str("<description/>");
            }
            xml.push_str(&format!("<encrypted>{}</encrypted>", s.encrypted));
            if let Some(k) = &s.kms_key_arn {
                xml.push_str(&format!("<kmsKeyId>{}</kmsKeyId>", x(k)));
            }
            xml.push_str("<storageTier>standard</storageTier>");
            if !s.tags.is_empty() {
                xml.push_str("<tagSet>");
                for (k, v) in &s.tags {
                    xml.push_str(&format!(
                        "<item><key>{}</key><value>{}</value></item>",
                        x(k),
                        x(v)
                    ));
                }
                xml.push_str("</tagSet>");
            }
            xml.push_str("</item>");
        }
        xml.push_str("</snapshotSet></DescribeSnapshotsResponse>");
        Ok(ec2_xml(xml))
    }

    pub(super) fn delete_snapshot(&self, params: &[(String, String)]) -> ApiResult {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let id = get("SnapshotId").ok_or_else(|| {
            ApiError::ec2(
                400,
                "MissingParameter",
                "The request must contain the parameter SnapshotId",
            )
        })?;
        if get("DryRun") == Some("true") {
            return Err(ApiError::ec2(
                412,
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
            ));
        }
        let mut st = self.lock();
        if st.snapshots.remove(id).is_none() {
            return Err(ApiError::ec2(
                400,
                "InvalidSnapshot.NotFound",
                format!("The snapshot '{id}' does not exist."),
            ));
        }
        st.client_tokens.retain(|_, (sid, _)| sid != id);
        Ok(ec2_xml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteSnapshotResponse xmlns=\"{EC2_XMLNS}\"><requestId>{}</requestId><return>true</return></DeleteSnapshotResponse>",
            http_util::request_id()
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::super::{StrictEbs, StrictEbsConfig};

    async fn ec2(c: &TestClient, base: &str, form: &str) -> (u16, String) {
        let h = vec![
            ("authorization", auth("ec2")),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let (st, _, b) = send(c, "POST", &format!("{base}/"), &h, form.to_string())
            .await
            .unwrap();
        (st, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn ec2_describe_and_delete_snapshots() {
        let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
        let base = ebs.url();
        let c = client();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 8, "Description": "d<&>", "Tags": [{"Key": "k", "Value": "v\"1"}]})).await;
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 2})).await;
        let id2 = out["SnapshotId"].as_str().unwrap().to_string();

        let (st, xml) = ec2(
            &c,
            &base,
            &format!("Action=DescribeSnapshots&Version=2016-11-15&SnapshotId.1={id}"),
        )
        .await;
        assert_eq!(st, 200, "{xml}");
        assert!(xml.contains(
            "<DescribeSnapshotsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
        ));
        assert!(xml.contains(&format!("<snapshotId>{id}</snapshotId>")));
        assert!(!xml.contains(&id2));
        assert!(xml.contains("<status>pending</status>"));
        assert!(xml.contains("<volumeSize>8</volumeSize>"));
        assert!(xml.contains("<description>d&lt;&amp;&gt;</description>"));
        assert!(xml.contains("<item><key>k</key><value>v&quot;1</value></item>"));
        assert!(xml.contains("<volumeId>vol-ffffffff</volumeId>"));
        // Filters.
        let (_, xml) = ec2(
            &c,
            &base,
            "Action=DescribeSnapshots&Filter.1.Name=tag%3Ak&Filter.1.Value.1=v%221",
        )
        .await;
        assert!(xml.contains(&id) && !xml.contains(&id2), "{xml}");
        let (st, xml) = ec2(
            &c,
            &base,
            "Action=DescribeSnapshots&Filter.1.Name=bogus&Filter.1.Value.1=x",
        )
        .await;
        assert_eq!(st, 400, "{xml}");
        // Unknown id.
        let (st, xml) = ec2(
            &c,
            &base,
            "Action=DescribeSnapshots&SnapshotId.1=snap-0000000000000000f",
        )
        .await;
        assert_eq!(st, 400);
        assert!(
            xml.contains("<Code>InvalidSnapshot.NotFound</Code>"),
            "{xml}"
        );
        // Delete.
        let (st, xml) = ec2(&c, &base, &format!("Action=DeleteSnapshot&SnapshotId={id}")).await;
        assert_eq!(st, 200);
        assert!(xml.contains("<return>true</return>"));
        assert_eq!(ebs.snapshot_ids(), vec![id2.clone()]);
        let (st, _) = ec2(&c, &base, &format!("Action=DeleteSnapshot&SnapshotId={id}")).await;
        assert_eq!(st, 400);
        let (st, xml) = ec2(&c, &base, "Action=RunInstances").await;
        assert_eq!(st, 400);
        assert!(xml.contains("InvalidAction"));
        // EC2 request signed for the wrong service.
        let h = vec![("authorization", auth("ebs"))];
        let (st, _, _) = send(
            &c,
            "POST",
            &format!("{base}/"),
            &h,
            "Action=DescribeSnapshots",
        )
        .await
        .unwrap();
        assert_eq!(st, 401);
    }
}
