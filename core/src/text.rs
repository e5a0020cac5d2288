//! Text that came from elsewhere (a peer's abort reason, a name in a table), made safe to log,
//! store and print.

/// `s` with control characters escaped (`\u{1b}`), so that text from another host can neither
/// move a terminal's cursor, recolour it, nor forge extra log lines.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(super::printable("plain ünïcode"), "plain ünïcode");
        assert_eq!(super::printable("a\x1b[31mb\nc"), "a\\u{1b}[31mb\\u{a}c");
    }
}
