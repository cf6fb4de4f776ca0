//! The path a request is decided on, read the way the upstream reads it: one
//! percent-decoding pass, dot segments resolved, repeated slashes merged. Where servers
//! disagree on a path — an escaped `/` or `\` that one server decodes and another keeps,
//! `;` parameters that Tomcat strips before resolving `..` and others keep as part of the
//! name — the path is refused unless `request:` in the config says how to read it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// `request:` — how Portcullis reads a request's target before deciding on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    /// `%2F` and `%5C` (any case) and a raw `\` in a path: `reject` (default) answers 400,
    /// since some upstreams read them as path separators and others as data; `decode`
    /// reads them as `/` and forwards the decided path, decoded, so the upstream sees
    /// what was decided.
    pub escaped_slashes: EscapedSlashes,
    /// `;` parameters in a path segment (`/admin;x=1/users`): `reject` (default) answers
    /// 400; `strip` matches each segment without its parameters, the way Tomcat and
    /// other servlet containers route (the upstream still receives them). A dot segment
    /// with parameters (`..;`) is refused either way.
    pub path_parameters: PathParameters,
}

/// See [`RequestConfig::escaped_slashes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    #[default]
    Reject,
    Decode,
}

/// See [`RequestConfig::path_parameters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    #[default]
    Reject,
    Strip,
}

/// A normalized path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// What rules match: without query, decoded once, dot segments resolved, slashes
    /// merged, parameters stripped when configured.
    pub matched: Cow<'a, str>,
    /// The path (without query) to forward instead of the one sent, when the upstream
    /// must see a decoded form (escaped slashes with `decode`).
    pub forward: Option<String>,
}

/// Normalizes a request path for matching (see [`NormalPath`]); `%2e` is `.`, `%61` is
/// `a`, the hex of the escapes it keeps is upper-cased (`%3b` → `%3B`), and `%25` stays
/// `%25`: one decoding pass, as the upstream makes. `*` (`OPTIONS *`) is kept.
pub fn normalize_path<'a>(raw: &'a str, config: &RequestConfig) -> Result<NormalPath<'a>, String> {
    let mut path = raw;
    if let Some(i) = path.find(['?', '#']) {
        path = &path[..i];
    }
    if !path.starts_with('/') {
        if path == "*" {
            return Ok(NormalPath {
                matched: Cow::Borrowed(path),
                forward: None,
            });
        }
        return Err(format!("path {:?} does not start with '/'", truncate(raw)));
    }
    let needs_work = path.contains(['%', '\\', ';']) || path.contains("//") || path.contains("/.");
    if !needs_work {
        return Ok(NormalPath {
            matched: Cow::Borrowed(path),
            forward: None,
        });
    }
    let decoded = decode_once(path, config.escaped_slashes)?;
    let (segments, directory) = segments(&decoded.text, config.path_parameters)?;
    let matched = join(segments.iter().map(|s| s.matched), directory);
    let forward = decoded
        .had_escaped_slash
        .then(|| join(segments.iter().map(|s| s.whole), directory));
    Ok(NormalPath {
        matched: Cow::Owned(matched),
        forward,
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

struct Decoded {
    text: String,
    had_escaped_slash: bool,
}

/// One percent-decoding pass over the escapes that cannot change the path's structure
/// (unreserved characters), plus escaped slashes when `decode` is configured; a raw `\`
/// counts as an escaped slash (Envoy's `normalize_path` turns it into `/`, a server
/// without it may not).
fn decode_once(path: &str, escaped_slashes: EscapedSlashes) -> Result<Decoded, String> {
    let bytes = path.as_bytes();
    let mut text = String::with_capacity(path.len());
    let mut had_escaped_slash = false;
    let mut slash = |what: &str, at: usize| -> Result<char, String> {
        match escaped_slashes {
            EscapedSlashes::Reject => Err(format!(
                "path {:?} holds an escaped slash ({what} at byte {at}): upstreams disagree \
                 on whether it separates segments, so it is refused (set \
                 request.escaped_slashes: decode to read it as '/')",
                truncate(path)
            )),
            EscapedSlashes::Decode => {
                had_escaped_slash = true;
                Ok('/')
            }
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        format!(
                            "path {:?} has a malformed percent-escape at byte {i}",
                            truncate(path)
                        )
                    })?;
                match value {
                    b'/' | b'\\' => text.push(slash(&path[i..i + 3], i)?),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        text.push(v as char)
                    }
                    _ => {
                        text.push('%');
                        text.push(bytes[i + 1].to_ascii_uppercase() as char);
                        text.push(bytes[i + 2].to_ascii_uppercase() as char);
                    }
                }
                i += 3;
            }
            b'\\' => {
                text.push(slash("\\", i)?);
                i += 1;
            }
            _ => {
                // Copy the run up to the next escape in one go (keeps multi-byte chars whole).
                let next = path[i..].find(['%', '\\']).map_or(bytes.len(), |j| i + j);
                text.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(Decoded {
        text,
        had_escaped_slash,
    })
}

/// A path segment: as sent, and as matched (without `;` parameters when stripping).
struct Segment<'a> {
    whole: &'a str,
    matched: &'a str,
}

/// RFC 3986 §5.2.4 over `/`-separated segments, also merging empty segments; `;`
/// parameters refused or stripped for matching. Also says whether the path names a
/// directory (ends in `/`, `/.` or `/..`).
fn segments(path: &str, parameters: PathParameters) -> Result<(Vec<Segment<'_>>, bool), String> {
    let mut out: Vec<Segment<'_>> = Vec::new();
    let mut directory = false;
    for whole in path.split('/') {
        let matched = match whole.split_once(';') {
            None => whole,
            Some((name, _)) => {
                if parameters == PathParameters::Reject {
                    return Err(format!(
                        "path {:?} has a ';' parameter in segment {whole:?}: servlet \
                         containers strip it and other servers keep it, so it is refused \
                         (set request.path_parameters: strip to match without it)",
                        truncate(path)
                    ));
                }
                if name == "." || name == ".." {
                    return Err(format!(
                        "path {:?} has the segment {whole:?}: a dot segment to servlet \
                         containers, a name to other servers, so it is refused",
                        truncate(path)
                    ));
                }
                name
            }
        };
        directory = matches!(matched, "" | "." | "..");
        match matched {
            "." => {}
            ".." => {
                out.pop();
            }
            // An empty segment is merged; one holding only parameters is forwarded.
            "" if whole.is_empty() => {}
            _ => out.push(Segment { whole, matched }),
        }
    }
    Ok((out, directory))
}

fn join<'a>(segments: impl Iterator<Item = &'a str>, directory: bool) -> String {
    let mut out = String::new();
    for segment in segments.filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || directory {
        out.push('/');
    }
    out
}
