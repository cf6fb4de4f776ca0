//! Large policy lists parsed in pieces, on every core.
//!
//! A YAML parser reads a whole document before anything in it can be used: at 100,000
//! policies (19 MB) that is a second of one core and half a gigabyte of parse tree. The
//! `policies:` list of an ordinary block-style file is cut, line by line, into runs of
//! whole list items; each run is parsed as a YAML document of its own (on its own thread)
//! and the rest of the file — every other section, with `policies:` left empty — as
//! another. Nothing here decides what the YAML means: each piece is parsed by the same
//! parser as the whole file would be.
//!
//! The cut is only taken where it cannot change the meaning. Any file it is not sure of
//! is parsed whole, as before: directives (`%TAG` could rename a tag handle), document
//! markers, tabs at a line's start, anchors in the list (an alias elsewhere could refer
//! to one), a line inside the list less indented than its items, or a second `policies:`.
//! Each piece is then parsed strictly: a piece that does not parse, an alias in a piece
//! that would need an anchor outside it, or a rest of the file whose `policies` is not the
//! empty key left behind (the `policies:` line was inside a multi-line string), sends the
//! whole file to the whole-file parse, which reports what is wrong at its line.

/// Items per piece: small enough that a piece's parse tree is short-lived, large enough
/// that a piece costs more than handing it to a thread.
const ITEMS_PER_PIECE: usize = 512;

/// Below this many items the whole-file parse is as fast.
const MIN_ITEMS: usize = 2_048;

/// A config file with its `policies:` items cut out.
#[derive(Debug)]
pub struct Split<'a> {
    /// The file without the items: `policies:` has no value here.
    pub rest: String,
    /// Runs of whole items, in order; each a YAML block sequence as it stood in the file.
    pub pieces: Vec<&'a str>,
}

/// Cuts `text`'s top-level `policies:` block sequence into pieces, or `None` when the file
/// is not one this can cut without a doubt (see the module documentation).
pub fn policies(text: &str) -> Option<Split<'_>> {
    // Where the `policies:` line starts, and where the line after it does.
    let mut key_line: Option<(usize, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bytes = line.as_bytes();
        if bytes.first() == Some(&b'%')
            || line.starts_with("---")
            || line.starts_with("...")
            || bytes.first() == Some(&b'\t')
        {
            return None;
        }
        if is_policies_key(line) {
            if key_line.is_some() {
                return None;
            }
            key_line = Some((offset, offset + line.len()));
        }
        offset += line.len();
    }
    let (key_start, items_start) = key_line?;
    let mut indent: Option<usize> = None;
    let mut items_end = items_start;
    let mut item_starts: Vec<usize> = Vec::new();
    let mut offset = items_start;
    for line in text[items_start..].split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let trimmed = content.trim_start_matches(' ');
        let this_indent = content.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            offset += line.len();
            continue;
        }
        if trimmed.starts_with('\t') {
            return None;
        }
        let items_indent = *indent.get_or_insert(this_indent);
        let is_item = trimmed == "-" || trimmed.starts_with("- ");
        if this_indent == items_indent && is_item {
            item_starts.push(offset);
        } else if this_indent < items_indent || (this_indent == items_indent && !is_item) {
            // The next top-level key ends the list; anything else less indented than its
            // items is for the whole-file parse to place.
            if this_indent == 0 && !is_item {
                break;
            }
            return None;
        }
        offset += line.len();
        items_end = offset;
    }
    if item_starts.len() < MIN_ITEMS {
        return None;
    }
    let list = &text[items_start..items_end];
    if has_anchor(list) {
        return None;
    }
    let mut pieces = Vec::with_capacity(item_starts.len() / ITEMS_PER_PIECE + 1);
    for (n, first) in item_starts.chunks(ITEMS_PER_PIECE).enumerate() {
        let start = first[0];
        let end = item_starts
            .get((n + 1) * ITEMS_PER_PIECE)
            .copied()
            .unwrap_or(items_end);
        pieces.push(&text[start..end]);
    }
    let mut rest = String::with_capacity(text.len() - list.len() + 1);
    rest.push_str(&text[..key_start]);
    rest.push_str("policies:\n");
    rest.push_str(&text[items_end..]);
    Some(Split { rest, pieces })
}

/// `policies:` at the start of a line, with nothing after it but spaces and a comment.
fn is_policies_key(line: &str) -> bool {
    let Some(after) = line.strip_prefix("policies:") else {
        return false;
    };
    let after = after.trim_start_matches(' ').trim_end_matches(['\n', '\r']);
    after.is_empty() || after.starts_with('#')
}

/// Whether `list` could define an anchor: an `&` where a node may start (after a space,
/// `-`, `[`, `{`, `,` or `:`, or at a line's start). Inside a quoted string this finds
/// anchors that are not there; the cost is only the whole-file parse.
fn has_anchor(list: &str) -> bool {
    let bytes = list.as_bytes();
    memchr::memchr_iter(b'&', bytes).any(|at| {
        let before = at.checked_sub(1).map(|b| bytes[b]);
        let after = bytes.get(at + 1).copied();
        matches!(
            before,
            None | Some(b' ' | b'-' | b'[' | b'{' | b',' | b':' | b'\n')
        ) && after.is_some_and(|c| !c.is_ascii_whitespace())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(items: usize, item: impl Fn(usize) -> String) -> String {
        let mut text = String::from("# fleet\ngateway:\n  tags: [env:x]\npolicies:   # all\n");
        for i in 0..items {
            text.push_str(&item(i));
        }
        text.push_str("default_action: deny\n");
        text
    }

    fn plain(i: usize) -> String {
        format!("  - name: p{i}\n    action: allow\n    rules:\n      - host: h{i}.example\n\n")
    }

    #[test]
    fn a_block_list_is_cut_at_item_boundaries() {
        let text = file(3000, plain);
        let split = policies(&text).unwrap();
        assert_eq!(split.pieces.len(), 6);
        assert!(split.pieces.iter().all(|p| p.starts_with("  - name: p")));
        assert_eq!(split.pieces.concat().matches("- name:").count(), 3000);
        assert_eq!(
            split.rest,
            "# fleet\ngateway:\n  tags: [env:x]\npolicies:\n\ndefault_action: deny\n"
        );
    }

    #[test]
    fn small_lists_and_unusual_files_are_left_whole() {
        assert!(policies(&file(100, plain)).is_none());
        // Plain items, with `line` in place of the eighth.
        let eighth =
            |line: &'static str| move |i: usize| if i == 7 { line.to_owned() } else { plain(i) };
        let doubtful: [(&str, &dyn Fn(usize) -> String); 5] = [
            ("anchor", &|i| {
                format!("  - &p{i}\n    name: p{i}\n    action: allow\n    rules: []\n")
            }),
            ("less indented line", &eighth(" bad: 1\n")),
            ("a key at the items' indent", &eighth("  bad: 1\n")),
            ("tab", &eighth("\t- name: x\n")),
            ("document marker", &eighth("---\n")),
        ];
        for (what, item) in doubtful {
            assert!(policies(&file(3000, item)).is_none(), "{what}");
        }
        let twice = format!("{}policies:\n", file(3000, plain));
        assert!(policies(&twice).is_none(), "a second policies key");
        let directive = format!("%YAML 1.1\n{}", file(3000, plain));
        assert!(policies(&directive).is_none(), "directive");
    }
}
