//! Argument values several commands take: request headers, workload tags, a body.

use std::io::Read as _;
use std::path::Path;

use crate::vocab::Tag;

/// The body given with `--body TEXT` or `--body-file PATH` (`-`: standard input); empty
/// without either.
pub fn body(text: Option<&str>, file: Option<&Path>) -> Result<Vec<u8>, String> {
    match (text, file) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(path)) if path == Path::new("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("--body-file -: cannot read standard input: {e}"))?;
            Ok(body)
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("--body-file {}: cannot read it: {e}", path.display())),
        (None, None) => Ok(Vec::new()),
    }
}

/// `-H "name: value"` arguments, as (name, value) pairs.
pub fn headers(args: &[String]) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .map(|header| match header.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok((name.trim().to_owned(), value.trim().to_owned()))
            }
            _ => Err(format!("--header {header:?} is not \"name: value\"")),
        })
        .collect()
}

/// `--tag` arguments, each checked as a tag (`env:prod`).
pub fn tags(args: &[String]) -> Result<Vec<Tag>, String> {
    args.iter()
        .map(|tag| Tag::parse(tag.trim()).map_err(|e| format!("--tag: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon_and_are_trimmed() {
        let parsed = headers(&["Accept: */*".into(), "X-Url:http://a:1/".into()]).unwrap();
        assert_eq!(
            parsed,
            [
                ("Accept".to_owned(), "*/*".to_owned()),
                ("X-Url".to_owned(), "http://a:1/".to_owned())
            ]
        );
        assert!(
            headers(&["no colon".into()])
                .unwrap_err()
                .contains("\"no colon\"")
        );
        assert!(headers(&[": empty name".into()]).is_err());
    }
}
