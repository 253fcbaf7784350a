//! Cutting text to a size. Much of the text kiln caps is the customer's
//! (cargo's and rustc's output repeat the manifest and the code, error
//! messages quote them), so a cut must never fall inside a character:
//! `String::truncate` or `&text[..n]` at a byte limit would panic there.
//! Every cap in kiln goes through these two functions.

/// The longest prefix of `text` that is at most `max_bytes` long and ends
/// on a character boundary.
pub fn cap(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    // A UTF-8 character is at most 4 bytes: a boundary is at most 3 back.
    let end = (max_bytes.saturating_sub(3)..=max_bytes)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// Shortens `text` in place to [`cap`]`(text, max_bytes)`. Returns whether
/// anything was cut.
pub fn cap_in_place(text: &mut String, max_bytes: usize) -> bool {
    let kept = cap(text, max_bytes).len();
    let cut = kept < text.len();
    text.truncate(kept);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-, two-, three- and four-byte characters, mixed.
    const MIXED: &str = "aé€😀 Cargo.toml: name = \"ßüñ-日本語\" 🦀🦀x";

    #[test]
    fn cuts_at_every_offset_on_a_character_boundary() {
        for max in 0..=MIXED.len() + 2 {
            let kept = cap(MIXED, max);
            assert!(kept.len() <= max, "{max}: {} bytes kept", kept.len());
            assert!(MIXED.starts_with(kept));
            // The longest such prefix: the next character did not fit.
            let next = MIXED[kept.len()..].chars().next();
            if let Some(next) = next {
                assert!(kept.len() + next.len_utf8() > max, "{max}: cut too short");
            } else {
                assert_eq!(kept, MIXED);
            }
            let mut owned = MIXED.to_owned();
            let cut = cap_in_place(&mut owned, max);
            assert_eq!(owned, kept);
            assert_eq!(cut, kept.len() < MIXED.len());
        }
    }

    #[test]
    fn only_multibyte_text_and_short_text() {
        let crabs = "🦀".repeat(10);
        assert_eq!(cap(&crabs, 7), "🦀");
        assert_eq!(cap(&crabs, 3), "");
        assert_eq!(cap("", 0), "");
        assert_eq!(cap("abc", 10), "abc");
        assert_eq!(cap("abc", 3), "abc");
    }
}
