//! `{variable}` templates for names, descriptions, paths and parameter names:
//! `/myos/{arch}/{flavour}/{version}`. `{{` and `}}` are literal braces. An unknown
//! variable is an error, never an empty string.

use std::collections::BTreeMap;

/// Variables and their values.
pub type Vars = BTreeMap<String, String>;

/// A template that cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` names no variable.
    #[error("unknown variable `{{{name}}}` in `{template}` (known: {known})")]
    Unknown {
        /// The variable.
        name: String,
        /// The template.
        template: String,
        /// The variables there are.
        known: String,
    },
    /// A `{` without its `}` or a lone `}`.
    #[error("unbalanced brace in `{template}` (write {{{{ or }}}} for a literal brace)")]
    Unbalanced {
        /// The template.
        template: String,
    },
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let unbalanced = || TemplateError::Unbalanced {
        template: template.to_string(),
    };
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{{") {
            out.push(Piece::Text("{"));
            rest = r;
        } else if let Some(r) = rest.strip_prefix("}}") {
            out.push(Piece::Text("}"));
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or_else(unbalanced)?;
            let name = &r[..end];
            if name.is_empty() || name.contains('{') {
                return Err(unbalanced());
            }
            out.push(Piece::Var(name.trim()));
            rest = &r[end + 1..];
        } else if rest.starts_with('}') {
            return Err(unbalanced());
        } else {
            let end = rest.find(['{', '}']).unwrap_or(rest.len());
            out.push(Piece::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(out)
}

/// The variables `template` uses, in order of appearance.
pub fn variables(template: &str) -> Result<Vec<String>, TemplateError> {
    Ok(pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(v) => Some(v.to_string()),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Render `template` with `vars`.
pub fn render(template: &str, vars: &Vars) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    for p in pieces(template)? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(v) => match vars.get(v) {
                Some(value) => out.push_str(value),
                None => {
                    return Err(TemplateError::Unknown {
                        name: v.to_string(),
                        template: template.to_string(),
                        known: vars.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> Vars {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_variables_and_literal_braces() {
        let v = vars(&[("arch", "arm64"), ("version", "15.0")]);
        assert_eq!(
            render("/myos/{arch}/{version}", &v).unwrap(),
            "/myos/arm64/15.0"
        );
        assert_eq!(render("{{x}} {arch}", &v).unwrap(), "{x} arm64");
        assert_eq!(render("plain", &v).unwrap(), "plain");
        assert_eq!(render("", &v).unwrap(), "");
        assert_eq!(variables("a{x}b{ y }{x}").unwrap(), vec!["x", "y", "x"]);
    }

    #[test]
    fn unknown_and_unbalanced_are_errors() {
        let v = vars(&[("arch", "arm64")]);
        let e = render("{arch}-{flavor}", &v).unwrap_err();
        assert!(
            matches!(&e, TemplateError::Unknown { name, .. } if name == "flavor"),
            "{e}"
        );
        assert!(e.to_string().contains("known: arch"), "{e}");
        for bad in ["{arch", "arch}", "{}", "{a{b}}"] {
            assert!(
                matches!(render(bad, &v), Err(TemplateError::Unbalanced { .. })),
                "{bad}"
            );
        }
    }
}
