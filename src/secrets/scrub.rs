//! Response scrubbing: a credential Portcullis put on a request is cut out of the response
//! before the workload sees it, since upstreams echo requests (debug endpoints, error
//! pages). Bodies are scrubbed as they stream, in bounded memory: between two pieces only
//! the bytes that could begin a credential are held back, at most the longest form's length
//! less one — so an event stream is not delayed unless an event ends in what could be the
//! start of a credential.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use super::SecretBytes;

/// What a credential becomes in a response.
pub const MARKER: &[u8] = b"[REDACTED:portcullis]";

/// Forms shorter than this are not scrubbed: they would match ordinary text.
pub const MIN_FORM: usize = 6;

/// One response's scrubber: the forms of the credentials its request carried, and what is
/// held back between pieces of the body.
pub struct Scrubber {
    forms: Vec<SecretBytes>,
    automaton: AhoCorasick,
    longest: usize,
    /// The bytes a form begins with: most positions are ruled out by one lookup.
    first_bytes: [bool; 256],
    carry: Vec<u8>,
    replaced: u64,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("forms", &self.forms.len())
            .field("replaced", &self.replaced)
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber for these forms (the value, and each encoding it was written in);
    /// `None` when none is long enough to scrub.
    pub fn new(forms: impl IntoIterator<Item = SecretBytes>) -> Option<Scrubber> {
        let mut forms: Vec<SecretBytes> = forms
            .into_iter()
            .filter(|f| f.expose().len() >= MIN_FORM)
            .collect();
        forms.sort_by(|a, b| a.expose().cmp(b.expose()));
        forms.dedup();
        let longest = forms.iter().map(|f| f.expose().len()).max()?;
        // Built per response: a contiguous NFA builds in microseconds, where a DFA would
        // take hundreds (and scans no faster on the few short forms a credential has).
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(forms.iter().map(SecretBytes::expose))
            .ok()?;
        let mut first_bytes = [false; 256];
        for form in &forms {
            first_bytes[usize::from(form.expose()[0])] = true;
        }
        Some(Scrubber {
            forms,
            automaton,
            longest,
            first_bytes,
            carry: Vec::new(),
            replaced: 0,
        })
    }

    /// How many credentials were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Whether bytes are held back, waiting for the next piece.
    pub fn holds_back(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Scrubs the next piece of a streamed body (`end`: the last one). Returns what can be
    /// sent now; what could be the start of a credential waits for the next piece.
    pub fn piece(&mut self, piece: &[u8], end: bool) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.carry);
        buffer.extend_from_slice(piece);
        let hold = if end {
            buffer.len()
        } else {
            self.partial_start(&buffer)
        };
        let mut out = Vec::with_capacity(buffer.len());
        let mut at = 0;
        // A match starting before `hold` is the one the whole stream would have there:
        // a longer form starting at the same place would make it a partial start.
        for found in self.automaton.find_iter(&buffer) {
            if found.start() >= hold {
                break;
            }
            out.extend_from_slice(&buffer[at..found.start()]);
            out.extend_from_slice(MARKER);
            self.replaced += 1;
            at = found.end();
        }
        let cut = hold.max(at);
        out.extend_from_slice(&buffer[at..cut]);
        buffer.drain(..cut);
        self.carry = buffer;
        out
    }

    /// Scrubs a whole value (a header); `None` when it holds no credential.
    pub fn whole(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        if !self.automaton.is_match(value) {
            return None;
        }
        let mut out = Vec::with_capacity(value.len());
        let mut at = 0;
        for found in self.automaton.find_iter(value) {
            out.extend_from_slice(&value[at..found.start()]);
            out.extend_from_slice(MARKER);
            self.replaced += 1;
            at = found.end();
        }
        out.extend_from_slice(&value[at..]);
        Some(out)
    }

    /// The first position from which the rest of `buffer` is a proper prefix of a form:
    /// where a credential may begin that the next piece would complete.
    fn partial_start(&self, buffer: &[u8]) -> usize {
        let from = buffer.len().saturating_sub(self.longest - 1);
        (from..buffer.len())
            .find(|&at| {
                if !self.first_bytes[usize::from(buffer[at])] {
                    return false;
                }
                let tail = &buffer[at..];
                self.forms.iter().any(|form| {
                    let form = form.expose();
                    form.len() > tail.len() && form.starts_with(tail)
                })
            })
            .unwrap_or(buffer.len())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scrubber(forms: &[&str]) -> Scrubber {
        Scrubber::new(
            forms
                .iter()
                .map(|f| SecretBytes::new(f.as_bytes().to_vec())),
        )
        .unwrap()
    }

    /// The reference: the whole text at once.
    fn at_once(forms: &[&str], text: &[u8]) -> Vec<u8> {
        scrubber(forms).piece(text, true)
    }

    #[test]
    fn values_split_over_pieces_are_replaced() {
        let mut s = scrubber(&["SECRET-value-1", "U0VDUkVULXZhbHVlLTE="]);
        let mut out = Vec::new();
        for piece in [
            &b"{\"auth\":\"Bearer SEC"[..],
            b"RET-va",
            b"lue-1\",\"b\":\"U0VDUkVULXZh",
            b"bHVlLTE=\"}",
        ] {
            out.extend(s.piece(piece, false));
            assert!(s.carry.len() < s.longest, "bounded");
        }
        out.extend(s.piece(b"", true));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"auth\":\"Bearer [REDACTED:portcullis]\",\"b\":\"[REDACTED:portcullis]\"}"
        );
        assert_eq!(s.replaced(), 2);
    }

    #[test]
    fn nothing_is_held_back_that_cannot_begin_a_credential() {
        let mut s = scrubber(&["SECRET-value-1"]);
        assert_eq!(s.piece(b"data: tick\n\n", false), b"data: tick\n\n");
        assert!(!s.holds_back());
        assert_eq!(s.piece(b"data: SECR", false), b"data: ");
        assert!(s.holds_back());
        assert_eq!(s.piece(b"ET-nothing\n\n", false), b"SECRET-nothing\n\n");
    }

    #[test]
    fn short_forms_are_not_scrubbed_and_headers_are_whole() {
        assert!(Scrubber::new([SecretBytes::new(b"abc".to_vec())]).is_none());
        let mut s = scrubber(&["abc", "SECRET-value-1"]);
        assert_eq!(s.whole(b"Bearer abc"), None);
        assert_eq!(
            s.whole(b"Bearer SECRET-value-1").unwrap(),
            b"Bearer [REDACTED:portcullis]"
        );
    }

    proptest! {
        /// However a body is cut into pieces, the scrubbed stream is the scrubbed whole, and
        /// no more than the longest form less one byte is ever held back.
        #[test]
        fn pieces_scrub_like_the_whole(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("SECRET-1".to_owned()),
                    Just("SECRET-12345".to_owned()),
                    Just("ECRET-1".to_owned()),
                    Just("SSECRET-".to_owned()),
                    "[A-Z1-]{0,6}",
                    "[a-z ]{0,12}",
                ],
                0..24,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let forms = ["SECRET-1", "SECRET-12345", "U0VDUkVULTE="];
            let text = parts.concat().into_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = scrubber(&forms);
            let mut out = Vec::new();
            let mut from = 0;
            for cut in cuts {
                out.extend(s.piece(&text[from..cut], false));
                prop_assert!(s.carry.len() < s.longest);
                from = cut;
            }
            out.extend(s.piece(&text[from..], true));
            prop_assert_eq!(&out, &at_once(&forms, &text));
            let scrubbed = String::from_utf8(out).unwrap();
            prop_assert!(!scrubbed.contains("SECRET-1"));
        }
    }
}
