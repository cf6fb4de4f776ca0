//! Argument values several commands take: request headers and workload tags.

use crate::policy::rule::Tag;

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
        .map(|tag| Tag::parse(tag).map_err(|e| format!("--tag: {e}")))
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
