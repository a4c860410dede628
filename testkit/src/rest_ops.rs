//! Operation names of the REST services the proxy classifies by path besides the EBS
//! direct APIs (kept apart from the proxy so services can be added without touching
//! it): the Recycle Bin's rules.

/// The Recycle Bin (rbin) operation of a request, from its method and path segments.
pub(crate) fn rbin_operation(method: &str, segs: &[&str]) -> Option<&'static str> {
    match (method, segs) {
        ("POST", ["rules"]) => Some("CreateRule"),
        ("POST", ["list-rules"]) => Some("ListRules"),
        ("GET", ["rules", _]) => Some("GetRule"),
        ("DELETE", ["rules", _]) => Some("DeleteRule"),
        ("PATCH", ["rules", _]) => Some("UpdateRule"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbin_paths_name_their_operations() {
        assert_eq!(rbin_operation("POST", &["list-rules"]), Some("ListRules"));
        assert_eq!(rbin_operation("GET", &["rules", "abc"]), Some("GetRule"));
        assert_eq!(rbin_operation("GET", &["snapshots", "x", "blocks"]), None);
    }
}
