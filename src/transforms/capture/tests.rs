use super::*;

#[test]
fn prefix_text_cuts_at_a_character_boundary() {
    assert_eq!(prefix_text(b"hello", 10), ("hello".to_owned(), false));
    assert_eq!(prefix_text(b"hello", 3), ("hel".to_owned(), true));
    // "é" is two bytes: a cut inside it drops it instead of showing U+FFFD.
    assert_eq!(prefix_text("aé".as_bytes(), 2), ("a".to_owned(), true));
    assert_eq!(prefix_text(b"a\xffb", 10), ("a\u{fffd}b".to_owned(), false));
}
