//! Server-sent events (the `text/event-stream` format), as far as rewriting one event's data
//! needs: lines end with CRLF, LF or a lone CR; a blank line ends an event; a line starting
//! with `:` is a comment; `field: value` loses one space after the colon; an event's data is
//! its `data` lines joined with LF. Every byte outside a rewritten event's `data` lines is
//! kept as it was.

/// One line of the stream, split from its terminator (empty only at the end of the body).
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    content: &'a [u8],
    terminator: &'a [u8],
}

impl Line<'_> {
    fn is_blank(&self) -> bool {
        self.content.is_empty() && !self.terminator.is_empty()
    }

    /// The value of a `data` field line, without the one optional leading space.
    fn data_value(&self) -> Option<&[u8]> {
        let content = self.content;
        if content.first() == Some(&b':') {
            return None;
        }
        let (name, value) = match content.iter().position(|&b| b == b':') {
            Some(colon) => (&content[..colon], &content[colon + 1..]),
            None => (content, &content[content.len()..]),
        };
        if name != b"data" {
            return None;
        }
        Some(value.strip_prefix(b" ").unwrap_or(value))
    }
}

fn lines(body: &[u8]) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        let terminator_len = match body[i] {
            b'\n' => 1,
            b'\r' if body.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        out.push(Line {
            content: &body[start..i],
            terminator: &body[i..i + terminator_len],
        });
        i += terminator_len;
        start = i;
    }
    if start < body.len() {
        out.push(Line {
            content: &body[start..],
            terminator: &[],
        });
    }
    out
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Calls `rewrite` with the data of every event that has `data` lines (also an unterminated
/// last event: some clients dispatch it at the end of the stream); where it returns new data,
/// that event's `data` lines are replaced by the new data's lines, at the place of its first
/// `data` line and with that line's terminator. None when no event was rewritten.
pub(crate) fn rewrite_data(
    body: &[u8],
    mut rewrite: impl FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    let (bom, stream) = match body.strip_prefix(BOM) {
        Some(rest) => (BOM, rest),
        None => (&[][..], body),
    };
    let lines = lines(stream);
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    out.extend_from_slice(bom);
    let mut changed = false;
    let mut event_start = 0;
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if !line.is_blank() && !last {
            continue;
        }
        let event = &lines[event_start..=i];
        event_start = i + 1;
        match rewrite_event(event, &mut rewrite) {
            Some(bytes) => {
                out.extend_from_slice(&bytes);
                changed = true;
            }
            None => {
                for line in event {
                    out.extend_from_slice(line.content);
                    out.extend_from_slice(line.terminator);
                }
            }
        }
    }
    changed.then_some(out)
}

fn rewrite_event(
    event: &[Line<'_>],
    rewrite: &mut impl FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for value in event.iter().filter_map(Line::data_value) {
        match &mut data {
            Some(joined) => {
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
            None => data = Some(value.to_vec()),
        }
    }
    let data = String::from_utf8(data?).ok()?;
    let new_data = rewrite(&data)?;
    let mut out = Vec::new();
    let mut written = false;
    for line in event {
        if line.data_value().is_none() {
            out.extend_from_slice(line.content);
            out.extend_from_slice(line.terminator);
        } else if !written {
            written = true;
            for part in new_data.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(part.as_bytes());
                out.extend_from_slice(if line.terminator.is_empty() {
                    b"\n"
                } else {
                    line.terminator
                });
            }
            if line.terminator.is_empty() {
                // The body ended inside this line: end where it ended.
                out.pop();
            }
        }
    }
    Some(out)
}
