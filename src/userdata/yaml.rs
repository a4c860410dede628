//! The little YAML the cloud-init flavour writes: every scalar double-quoted (so YAML
//! 1.1, which cloud-init's PyYAML reads, never turns `yes` or `0755` into a boolean or
//! a number), file contents as literal blocks when they are plain text and as base64
//! otherwise. The page's script writes the same bytes by the same rules.

/// A double-quoted YAML scalar. Escapes `\`, `"`, newline, tab, other control
/// characters and the characters YAML 1.1 counts as line breaks or BOM.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters written as `\uXXXX`.
fn needs_escape(c: char) -> bool {
    let n = c as u32;
    n < 0x20 || (0x7f..=0x9f).contains(&n) || n == 0x2028 || n == 0x2029 || n == 0xfeff
}

/// `data` as text a literal block (`|` or `|-`) keeps exactly, if it is such text:
/// UTF-8 without control characters but tab and newline, a first line that is not
/// empty and does not start with white space, no line of white space only, and at
/// most one newline at the end.
pub fn block_text(data: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(data).ok()?;
    if text.is_empty() || text.ends_with("\n\n") {
        return None;
    }
    if text
        .chars()
        .any(|c| c != '\n' && c != '\t' && needs_escape(c))
    {
        return None;
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body.split('\n');
    let first = lines.next().unwrap_or("");
    if first.is_empty() || first.starts_with([' ', '\t']) {
        return None;
    }
    let blank_but_not_empty = |l: &str| !l.is_empty() && l.chars().all(|c| c == ' ' || c == '\t');
    if blank_but_not_empty(first) || lines.any(blank_but_not_empty) {
        return None;
    }
    Some(text)
}

/// A literal block for `text` (from [`block_text`]): the indicator, then each line
/// indented by `indent` spaces (empty lines stay empty).
pub fn block(text: &str, indent: usize) -> String {
    let (indicator, body) = match text.strip_suffix('\n') {
        Some(b) => ("|", b),
        None => ("|-", text),
    };
    let pad = " ".repeat(indent);
    let mut out = String::from(indicator);
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("a\nb\tc\r"), "\"a\\nb\\tc\\u000d\"");
        assert_eq!(quote("\u{2028}\u{85}é"), "\"\\u2028\\u0085é\"");
    }

    #[test]
    fn blocks() {
        assert_eq!(block_text(b"a\n  b\n\nc\n"), Some("a\n  b\n\nc\n"));
        assert_eq!(block("a\n  b\n\nc\n", 4), "|\n    a\n      b\n\n    c\n");
        assert_eq!(block("x", 2), "|-\n  x\n");
        assert_eq!(block_text(b"a\n\n"), None);
        assert_eq!(block_text(b" a\n"), None);
        assert_eq!(block_text(b"\na\n"), None);
        assert_eq!(block_text(b"a\n  \nb\n"), None);
        assert_eq!(block_text(b"a\r\nb\r\n"), None);
        assert_eq!(block_text(b"\xff\n"), None);
        assert_eq!(block_text(b""), None);
        assert_eq!(block_text(b"a\tb\n\tc\n"), Some("a\tb\n\tc\n"));
    }
}
