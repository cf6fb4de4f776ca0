//! The builtin detectors: one pattern each (matched first as part of the scanner's set,
//! then alone where the set says it matched) and a validation that confirms each match.
//!
//! Every pattern is ASCII-only (`(?-u)`), so the set runs in the lazy DFA without
//! Unicode word tables. Patterns accept the forms a secret takes inside a JSON string:
//! `\n` escapes for line breaks and `\/` for slashes.

use std::ops::Range;

use base64::Engine as _;

/// A confirmation: given the body and the span of the match's value (capture group 1 when
/// the confirmation pattern has one, else the whole match), the number of findings it
/// holds (0: none).
pub(super) type Validate = fn(&[u8], Range<usize>) -> usize;

pub(super) struct Builtin {
    pub name: &'static str,
    /// The pattern in the scanner's set: it decides whether the detector runs at all.
    pub pattern: &'static str,
    /// The pattern that finds each match once the set has matched. It matches wherever
    /// `pattern` does, and may match more (the validation rejects the rest): a literal
    /// prefix lets it skip through the body with a substring search.
    pub confirm: &'static str,
    pub validate: Validate,
}

/// A detector whose matches are whole tokens. In the set, the token must start at the
/// start of the body, after a byte of `$before` (what cannot continue the token's word), or
/// after a JSON escape (`\n`, `\r`, `\t`): a token glued to a word does not make the whole
/// body pay for a confirmation. The confirmation pattern is the token alone, and the
/// validation checks the same boundary.
macro_rules! token {
    ($name:literal, before: $before:literal, $token:expr, $validate:expr $(,)?) => {
        Builtin {
            name: $name,
            pattern: concat!(r"(?-u)(?:^|", $before, r"|\\[nrt])(?:", $token, ")"),
            confirm: concat!(r"(?-u)", $token),
            validate: $validate,
        }
    };
}

/// The builtins in [`super::BUILTIN`] order.
pub(super) const DETECTORS: &[Builtin] = &[
    token!(
        "aws_access_key",
        before: r"[^A-Za-z0-9]",
        r"(?:AKIA|ASIA)[A-Z0-9]{16}",
        aws_access_key,
    ),
    Builtin {
        name: "aws_secret_key",
        // The 40-character value only after a key name (`aws_secret_access_key`,
        // `SecretAccessKey`, `secret_key`, `aws_secret`, …) and an assignment (`=`, `:`,
        // `=>`, JSON's `": "`, XML's `>`, or blanks), or right after an access key id
        // (`AKIA…,<secret>` in a credentials CSV, `AKIA… <secret>`). The value may be
        // JSON-escaped (`\/`) or percent-encoded (`%2F`, `%2B`).
        pattern: AWS_SECRET,
        confirm: AWS_SECRET,
        validate: aws_secret_key,
    },
    Builtin {
        name: "private_key",
        // The armour line, line breaks (real or `\n`-escaped), optional header lines
        // (`Proc-Type: 4,ENCRYPTED`, `Version: …`), then at least 16 base64 characters of
        // key material: a header quoted alone in prose or code is not a key.
        pattern: PRIVATE_KEY,
        confirm: PRIVATE_KEY,
        validate: always,
    },
    token!(
        "github_token",
        before: r"[^A-Za-z0-9]",
        r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
        github_token,
    ),
    token!(
        "gitlab_token",
        before: r"[^A-Za-z0-9]",
        concat!(
            r"gl(?:pat|dt|rt|ptt|ft|cbt|oas|soat)-[A-Za-z0-9_\-]{20,}",
            r"(?:\.[0-9A-Za-z]{2}\.[0-9A-Za-z]{5,12})?",
        ),
        gitlab_token,
    ),
    token!(
        "slack_token",
        before: r"[^A-Za-z0-9]",
        concat!(
            r"xox[baprs]-[0-9A-Za-z]+(?:-[0-9A-Za-z]+)+",
            r"|hooks\.slack\.com(?:/|\\/)(?:services|workflows|triggers)(?:(?:/|\\/)[A-Za-z0-9_\-]+){2,4}",
        ),
        slack_token,
    ),
    token!(
        "openai_key",
        before: r"[^A-Za-z0-9_\-]",
        r"sk-[A-Za-z0-9_\-]{20,}",
        openai_key,
    ),
    token!(
        "anthropic_key",
        before: r"[^A-Za-z0-9_\-]",
        r"sk-ant-[A-Za-z0-9_\-]{32,}",
        anthropic_key,
    ),
    token!(
        "stripe_key",
        before: r"[^A-Za-z0-9]",
        r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,}",
        stripe_key,
    ),
    token!(
        "jwt",
        before: r"[^A-Za-z0-9_\-.]",
        r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*",
        jwt,
    ),
    Builtin {
        name: "credit_card",
        // 13 or more digits with single spaces or dashes between them, from an issuer's
        // first digit (2 to 6) not inside a word or a number (epoch timestamps and
        // snowflake ids start with 1); the validation extends the match to its whole run of
        // digits and finds the card numbers in it. Without a literal to search for, the
        // confirmation keeps the boundary: it finds far fewer candidates.
        pattern: CREDIT_CARD,
        confirm: CREDIT_CARD,
        validate: credit_card,
    },
    Builtin {
        name: "email",
        pattern: EMAIL,
        confirm: EMAIL,
        validate: email,
    },
];

const AWS_SECRET: &str = concat!(
    r"(?-u)(?:",
    r"(?i:aws[_.\-]?secret(?:[_.\-]?access)?(?:[_.\-]?key)?|secret[_.\-]?(?:access[_.\-]?)?key)",
    r#"(?:\\?["'])?[ \t]*(?::=|=>|[:=>]|[ \t])[ \t]*(?:\\?["'])?"#,
    r"|",
    r#"(?:AKIA|ASIA)[A-Z0-9]{16}(?:\\?["'])?[ \t]*(?:[,;:|=\t ]|\\r\\n|\\[nrt]|\r?\n)[ \t]*(?:\\?["'])?"#,
    r")",
    r"((?:[A-Za-z0-9+]|\\?/|%2[BbFf]){40})",
);

const PRIVATE_KEY: &str = concat!(
    r"(?-u)-----BEGIN (?:(?:RSA|DSA|EC|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?-----",
    r"(?:\\+[rn]|[\r\n \t])+",
    r"(?:[A-Za-z][A-Za-z\-]*:[^\r\n\\]*(?:\\+[rn]|[\r\n])(?:\\+[rn]|[\r\n \t])*)*",
    r"(?:[A-Za-z0-9+/=]|\\/){16}",
);

const CREDIT_CARD: &str = r"(?-u)(?:^|[^0-9A-Za-z_.+]|\\[nrt])([2-6](?:[ \-]?[0-9]){12,})";

const EMAIL: &str = concat!(
    r"(?-u)[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?",
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}",
);

fn always(_: &[u8], _: Range<usize>) -> usize {
    1
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether the match starting at `start` is not the tail of a longer word: the byte before
/// it is not in `word`, or it is the letter of a JSON escape (`\n`, `\t`, `\r`).
fn starts_clean(body: &[u8], start: usize, word: fn(u8) -> bool) -> bool {
    if start == 0 || !word(body[start - 1]) {
        return true;
    }
    start >= 2 && matches!(body[start - 1], b'n' | b't' | b'r') && body[start - 2] == b'\\'
}

/// Whether the match ending at `end` is not the head of a longer word.
fn ends_clean(body: &[u8], end: usize, word: fn(u8) -> bool) -> bool {
    body.get(end).is_none_or(|&b| !word(b))
}

/// Not a placeholder: enough distinct characters for a random string of its length
/// (`XXXXXXXXXXXXXXXX`, `0000…` are not keys).
fn random_enough(s: &[u8]) -> bool {
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &b in s {
        if !seen[b as usize] {
            seen[b as usize] = true;
            distinct += 1;
        }
    }
    distinct >= (s.len() / 3).clamp(3, 10)
}

/// At least two of: an uppercase letter, a lowercase letter, a digit.
fn mixed(s: &[u8]) -> bool {
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let lower = s.iter().any(u8::is_ascii_lowercase);
    let digit = s.iter().any(u8::is_ascii_digit);
    upper as u8 + lower as u8 + digit as u8 >= 2
}

fn aws_access_key(body: &[u8], m: Range<usize>) -> usize {
    let ok = starts_clean(body, m.start, is_alnum)
        && ends_clean(body, m.end, is_alnum)
        && random_enough(&body[m.start + 4..m.end]);
    ok as usize
}

fn aws_secret_key(body: &[u8], m: Range<usize>) -> usize {
    let rest = &body[m.end..];
    let continues = rest
        .first()
        .is_some_and(|&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        || rest.starts_with(b"\\/")
        || (rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && b"BbFf".contains(&rest[2]));
    if continues {
        return 0;
    }
    // The value as it was before escaping: `\/` and `%2F` are one character each.
    let raw = &body[m];
    let mut value = Vec::with_capacity(40);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\\' => i += 1,
            b'%' => {
                value.push(if raw[i + 2].eq_ignore_ascii_case(&b'f') {
                    b'/'
                } else {
                    b'+'
                });
                i += 3;
            }
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    let upper = value.iter().any(u8::is_ascii_uppercase);
    let lower = value.iter().any(u8::is_ascii_lowercase);
    let other = value
        .iter()
        .any(|b| b.is_ascii_digit() || *b == b'/' || *b == b'+');
    (upper && lower && other && random_enough(&value)) as usize
}

fn github_token(body: &[u8], m: Range<usize>) -> usize {
    let random = if body[m.start..].starts_with(b"github_pat_") {
        &body[m.start + 11..m.end]
    } else {
        &body[m.start + 4..m.end]
    };
    let ok = starts_clean(body, m.start, is_alnum)
        && ends_clean(body, m.end, |b| b.is_ascii_alphanumeric() || b == b'_')
        && random_enough(random)
        && mixed(random);
    ok as usize
}

fn gitlab_token(body: &[u8], m: Range<usize>) -> usize {
    let token = &body[m.clone()];
    let dash = token.iter().position(|&b| b == b'-').unwrap_or(0);
    let random = &token[dash + 1..];
    let ok = starts_clean(body, m.start, is_alnum)
        && random
            .iter()
            .any(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && random_enough(random);
    ok as usize
}

fn slack_token(body: &[u8], m: Range<usize>) -> usize {
    let token = &body[m.clone()];
    if token.starts_with(b"hooks") {
        // The last path segment is the webhook's secret.
        let last = token.rsplit(|&b| b == b'/').next().unwrap_or_default();
        return (last.len() >= 16 && random_enough(last) && mixed(last)) as usize;
    }
    let mut segments = token[5..].split(|&b| b == b'-');
    let first_is_number = segments
        .next()
        .is_some_and(|s| !s.is_empty() && s.iter().all(u8::is_ascii_digit));
    let last = token.rsplit(|&b| b == b'-').next().unwrap_or_default();
    let ok = starts_clean(body, m.start, is_alnum)
        && first_is_number
        && token.len() >= 24
        && last.len() >= 8
        && random_enough(last);
    ok as usize
}

/// The random part of a key: at least 32 characters, not a placeholder, mixed case with
/// digits (`sk-your-key-here-…` is not a key).
fn random_key_body(body: &[u8]) -> bool {
    body.len() >= 32
        && random_enough(body)
        && body.iter().any(u8::is_ascii_uppercase)
        && body.iter().any(u8::is_ascii_lowercase)
        && body.iter().any(u8::is_ascii_digit)
}

fn openai_key(body: &[u8], m: Range<usize>) -> usize {
    let key = &body[m.clone()];
    if key.starts_with(b"sk-ant-") {
        return 0;
    }
    let mut random = &key[3..];
    for prefix in [&b"proj-"[..], b"svcacct-", b"admin-", b"None-"] {
        if let Some(rest) = random.strip_prefix(prefix) {
            random = rest;
            break;
        }
    }
    (starts_clean(body, m.start, is_token_char) && random_key_body(random)) as usize
}

fn anthropic_key(body: &[u8], m: Range<usize>) -> usize {
    let random = &body[m.start + 7..m.end];
    (starts_clean(body, m.start, is_token_char) && random_key_body(random)) as usize
}

fn stripe_key(body: &[u8], m: Range<usize>) -> usize {
    let random = &body[m.start + 8..m.end];
    let ok = starts_clean(body, m.start, is_alnum) && random_enough(random) && mixed(random);
    ok as usize
}

/// base64url, padded or not, tolerating non-zero trailing bits.
const BASE64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn decode_base64url(segment: &[u8]) -> Option<Vec<u8>> {
    BASE64URL.decode(segment).ok()
}

fn jwt(body: &[u8], m: Range<usize>) -> usize {
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
    }
    if !starts_clean(body, m.start, |b| is_token_char(b) || b == b'.') {
        return 0;
    }
    let token = &body[m];
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return 0;
    };
    let Some(header) =
        decode_base64url(header).and_then(|json| serde_json::from_slice::<Header>(&json).ok())
    else {
        return 0;
    };
    let unsigned_ok = !signature.is_empty() || header.alg.eq_ignore_ascii_case("none");
    let ok = unsigned_ok && decode_base64url(payload).is_some() && signature.len() % 4 != 1;
    ok as usize
}

/// The number of card numbers in a run of digits separated by single spaces or dashes.
///
/// A card is either one group of 13–19 digits, or consecutive groups with one kind of
/// separator in a card layout (4-4-4-4, 4-4-4-1…3 up to 4-4-4-4-3, Amex 4-6-5, Diners
/// 4-6-4), with a known issuer prefix for its length and a valid Luhn check digit.
///
/// Not a card: a run glued to a word or a decimal (`DE89 3704 …` in an IBAN, `abc4111…`,
/// `0.4111…`, `4111….5`) or after a `+` (phone numbers); grouped digits that continue, with
/// the same separator, into more groups of three or more digits (a tracking number
/// `9400 1111 2222 3333 4444 55`); a number labelled as an identifier ([`labelled_as_id`]).
fn credit_card(body: &[u8], m: Range<usize>) -> usize {
    // The whole run: the match starts at an issuer's digit, maybe inside it.
    let mut run_start = m.start;
    while run_start > 0 {
        match body[run_start - 1] {
            b'0'..=b'9' => run_start -= 1,
            b' ' | b'-' if run_start >= 2 && body[run_start - 2].is_ascii_digit() => run_start -= 1,
            _ => break,
        }
    }
    let m = run_start..m.end;
    let run = &body[m.clone()];
    let starts_clean = match m.start.checked_sub(1).map(|i| body[i]) {
        None => true,
        Some(b'+' | b'.' | b'_') => false,
        Some(_) => starts_clean(body, m.start, is_alnum),
    };
    let ends_clean = match body.get(m.end) {
        None => true,
        Some(b'.') => !body.get(m.end + 1).is_some_and(u8::is_ascii_digit),
        Some(&b) => !b.is_ascii_alphanumeric() && b != b'_',
    };
    if !starts_clean || !ends_clean {
        return 0;
    }
    // Groups: (digits, the separator before the group, or 0 for the first).
    let mut groups: Vec<(&[u8], u8)> = Vec::new();
    let mut start = 0;
    let mut separator = 0;
    for (i, &b) in run.iter().enumerate() {
        if !b.is_ascii_digit() {
            groups.push((&run[start..i], separator));
            separator = b;
            start = i + 1;
        }
    }
    groups.push((&run[start..], separator));
    // Whether group `k` continues a grouped number with separator `sep`.
    let continues = |k: usize, sep: u8, joined: u8| groups[k].0.len() >= 3 && joined == sep;
    let mut found = 0;
    let mut i = 0;
    let mut digits = Vec::with_capacity(19);
    while i < groups.len() {
        // The longest card starting at group i.
        let mut best = None;
        let mut total = 0;
        for j in i..groups.len() {
            total += groups[j].0.len();
            if total > 19 || (j > i && groups[j].1 != groups[i + 1].1) {
                break;
            }
            if total < 13 || !card_layout(groups[i..=j].iter().map(|g| g.0.len())) {
                continue;
            }
            if j > i {
                let sep = groups[i + 1].1;
                let before = i > 0 && continues(i - 1, sep, groups[i].1);
                let after = j + 1 < groups.len() && continues(j + 1, sep, groups[j + 1].1);
                if before || after {
                    continue;
                }
            }
            digits.clear();
            for g in &groups[i..=j] {
                digits.extend_from_slice(g.0);
            }
            if issuer_accepts(&digits)
                && luhn(&digits)
                && !labelled_as_id(body, m.start + group_start(&groups, i))
            {
                best = Some(j);
            }
        }
        match best {
            Some(j) => {
                found += 1;
                i = j + 1;
            }
            None => i += 1,
        }
    }
    found
}

/// Where group `i` starts in its run.
fn group_start(groups: &[(&[u8], u8)], i: usize) -> usize {
    groups[..i].iter().map(|g| g.0.len() + 1).sum()
}

/// Words that, right before a number, say it identifies something other than a card.
const ID_LABELS: &[&str] = &[
    "id",
    "ids",
    "uid",
    "uuid",
    "no",
    "nr",
    "num",
    "order",
    "orders",
    "invoice",
    "tracking",
    "transaction",
    "txn",
    "account",
    "acct",
    "iban",
    "phone",
    "tel",
    "mobile",
    "fax",
    "isbn",
    "ref",
    "reference",
    "confirmation",
    "booking",
    "ticket",
    "customer",
    "user",
    "sku",
    "serial",
    "imei",
];

/// Words that, right before a number, say it is a card.
const CARD_LABELS: &[&str] = &[
    "card",
    "cc",
    "pan",
    "visa",
    "mastercard",
    "amex",
    "credit",
    "debit",
    "payment",
];

/// Whether the one or two words right before `start` (on its line, with only blanks,
/// quotes, `:`, `=`, `#` or an opening bracket between) label the number as an identifier
/// (`order #…`, `transaction id …`, `"order_id": …`, `trackingNumber=…`) and not as a card
/// (`card_number`, `credit card no.`). A digit or other punctuation in between, or a line
/// break, ends the search.
fn labelled_as_id(body: &[u8], start: usize) -> bool {
    let window = &body[start.saturating_sub(48)..start];
    let escaped = |k: usize| k > 0 && window[k - 1] == b'\\';
    let is_word = |k: usize| (window[k].is_ascii_alphabetic() || window[k] == b'_') && !escaped(k);
    let mut id = false;
    let mut card = false;
    let mut i = window.len();
    for _ in 0..2 {
        while i > 0 && !is_word(i - 1) {
            if !b" \t:=\"'#\\([{".contains(&window[i - 1]) {
                return id && !card;
            }
            i -= 1;
        }
        let end = i;
        while i > 0 && is_word(i - 1) {
            i -= 1;
        }
        if i == end {
            break;
        }
        // Tokens: split at `_`, `-` and lower-to-upper case changes (`orderId`).
        let word = &window[i..end];
        let mut token_start = 0;
        for k in 1..=word.len() {
            let split = k == word.len()
                || word[k] == b'_'
                || (word[k].is_ascii_uppercase() && word[k - 1].is_ascii_lowercase());
            if split {
                let token = word[token_start..k].to_ascii_lowercase();
                let token = token.strip_prefix(b"_").unwrap_or(&token);
                id |= ID_LABELS.iter().any(|l| l.as_bytes() == token);
                card |= CARD_LABELS.iter().any(|l| l.as_bytes() == token);
                token_start = k;
            }
        }
    }
    id && !card
}

fn card_layout(lengths: impl Iterator<Item = usize>) -> bool {
    let lengths: smallvec::SmallVec<[usize; 8]> = lengths.collect();
    match lengths[..] {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [ref init @ .., last] => init.iter().all(|&l| l == 4) && (1..=4).contains(&last),
        [] => false,
    }
}

/// A known issuer identification number whose cards have this many digits.
fn issuer_accepts(digits: &[u8]) -> bool {
    let prefix = |n: usize| -> u32 {
        digits[..n]
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let len = digits.len();
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    match digits[0] {
        b'4' => matches!(len, 13 | 16 | 19),
        b'5' if (51..=55).contains(&p2) => len == 16,
        b'5' if matches!(p4, 5018 | 5020 | 5038 | 5893) => len >= 13,
        b'2' if (2221..=2720).contains(&p4) => len == 16,
        b'2' if (2200..=2204).contains(&p4) => len >= 16,
        b'3' if p2 == 34 || p2 == 37 => len == 15,
        b'3' if (300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39) => len >= 14,
        b'3' if (3528..=3589).contains(&p4) => len >= 16,
        b'6' if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62 => len >= 16,
        b'6' if matches!(p4, 6304 | 6759 | 6761 | 6762 | 6763) => len >= 13,
        _ => false,
    }
}

pub(super) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut d = u32::from(d - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// Top-level domains that are really file extensions (`icon@2x.png`).
const FILE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "css", "js", "ts",
    "map", "json",
];

fn email(body: &[u8], m: Range<usize>) -> usize {
    let address = &body[m.clone()];
    let Some(at) = address.iter().position(|&b| b == b'@') else {
        return 0;
    };
    let mut local = &address[..at];
    // `\nalice@…` inside a JSON string: the escape's letter is not part of the address.
    if m.start >= 1
        && body[m.start - 1] == b'\\'
        && matches!(local.first(), Some(b'n' | b't' | b'r'))
    {
        local = &local[1..];
    }
    let domain = &address[at + 1..];
    let tld = domain.rsplit(|&b| b == b'.').next().unwrap_or_default();
    let ok = !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && !local.starts_with(b".")
        && !local.ends_with(b".")
        && !local.windows(2).any(|w| w == b"..")
        && local != b"git"
        && !FILE_EXTENSIONS
            .iter()
            .any(|ext| tld.eq_ignore_ascii_case(ext.as_bytes()))
        && ends_clean(body, m.end, is_token_char);
    ok as usize
}
