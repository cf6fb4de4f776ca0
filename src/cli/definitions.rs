//! Policies and secrets read through the admin API, the same way for both kinds: the live
//! listing, one definition as a config file section, its history and diffs between
//! versions.

use std::process::ExitCode;

use serde_json::Value;

use super::client::AdminClient;
use super::render::{Table, compact, config_yaml, pretty};
use super::{Failure, Outcome};
use crate::store::Definition;

/// A stored definition as the API answers it.
#[derive(Debug, Clone)]
pub struct Live<T> {
    pub name: String,
    pub version: i64,
    pub updated_at: String,
    pub definition: T,
    /// With `?window=`: `{total, ALLOWED, FLAGGED, DENIED}`.
    pub fires: Option<Value>,
}

/// Reads `{name, version, updated_at, <kind>: {…}, fires?}`.
pub fn parse_live<T: Definition>(item: &Value) -> Result<Live<T>, Failure> {
    let kind = T::KIND.as_str();
    let name = item["name"].as_str().unwrap_or_default().to_owned();
    let definition = serde_json::from_value(item[kind].clone()).map_err(|e| {
        Failure(format!(
            "the API's {kind} {name:?} does not read as one this portcullis knows ({e}): \
             is the server newer? `--json` prints it as it is"
        ))
    })?;
    Ok(Live {
        version: item["version"].as_i64().unwrap_or_default(),
        updated_at: item["updated_at"].as_str().unwrap_or_default().to_owned(),
        fires: item.get("fires").cloned(),
        definition,
        name,
    })
}

/// Every stored definition of this kind (`window`: with fire counts), and the raw answer.
pub async fn list<T: Definition>(
    client: &AdminClient,
    window: Option<&str>,
) -> Result<(Value, Vec<Live<T>>), Failure> {
    let query: Vec<(&str, &str)> = window.map(|w| ("window", w)).into_iter().collect();
    let answer = client.get(&["v1", T::KIND.plural()], &query).await?;
    let live = answer[T::KIND.plural()]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(parse_live)
        .collect::<Result<_, _>>()?;
    Ok((answer, live))
}

/// One definition, live.
pub async fn read<T: Definition>(
    client: &AdminClient,
    name: &str,
) -> Result<(Value, Live<T>), Failure> {
    let answer = client.get(&["v1", T::KIND.plural(), name], &[]).await?;
    let live = parse_live(&answer)?;
    Ok((answer, live))
}

/// Prints one definition as a config file section (a comment gives its version), or the
/// API's JSON.
pub async fn get<T: Definition>(client: &AdminClient, name: &str, json: bool) -> Outcome {
    let (answer, live) = read::<T>(client, name).await?;
    if json {
        println!("{}", pretty(&answer));
    } else {
        println!(
            "# {} {:?} version {}, updated {}",
            T::KIND.as_str(),
            live.name,
            live.version,
            live.updated_at
        );
        print!("{}", config_yaml(T::KIND.plural(), &live.definition)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every version, oldest first: operation, time, operator and reason.
pub async fn history<T: Definition>(client: &AdminClient, name: &str, json: bool) -> Outcome {
    let answer = client
        .get(&["v1", T::KIND.plural(), name, "history"], &[])
        .await?;
    if json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["VERSION", "OPERATION", "AT", "OPERATOR", "REASON"]);
    for version in answer["versions"].as_array().into_iter().flatten() {
        let text = |key: &str| version[key].as_str().unwrap_or_default().to_owned();
        table.row(vec![
            version["version"].to_string(),
            text("operation"),
            text("at"),
            text("operator"),
            text("reason"),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// Prints what changed between two versions, one field path a line.
pub async fn diff<T: Definition>(
    client: &AdminClient,
    name: &str,
    from: i64,
    to: Option<i64>,
    json: bool,
) -> Outcome {
    let from_text = from.to_string();
    let to_text = to.map(|t| t.to_string());
    let mut query = vec![("from", from_text.as_str())];
    if let Some(to) = &to_text {
        query.push(("to", to.as_str()));
    }
    let answer = client
        .get(&["v1", T::KIND.plural(), name, "diff"], &query)
        .await?;
    if json {
        println!("{}", pretty(&answer));
    } else {
        print!("{}", diff_text(T::KIND.as_str(), &answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy "repos", version 1 → 2:` and a line per changed field.
fn diff_text(kind: &str, answer: &Value) -> String {
    let changes = answer["changes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = format!(
        "{kind} {}, version {} → {}:",
        answer["name"], answer["from"], answer["to"]
    );
    if changes.is_empty() {
        out.push_str(" no differences\n");
        return out;
    }
    out.push('\n');
    for change in changes {
        out.push_str(&format!(
            "  {}: {} → {}\n",
            change["path"].as_str().unwrap_or_default(),
            compact(change.get("before").filter(|v| !v.is_null())),
            compact(change.get("after").filter(|v| !v.is_null())),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_is_one_line_per_changed_field() {
        let answer = json!({"name": "repos", "from": 1, "to": 2, "changes": [
            {"path": "rules[0].paths[0]", "before": "/repo/*", "after": "/repo/public/*"},
            {"path": "description", "before": null, "after": "narrowed"}]});
        assert_eq!(
            diff_text("policy", &answer),
            "policy \"repos\", version 1 → 2:\n  rules[0].paths[0]: \"/repo/*\" → \
             \"/repo/public/*\"\n  description: (absent) → \"narrowed\"\n"
        );
        let same = json!({"name": "repos", "from": 1, "to": 5, "changes": []});
        assert_eq!(
            diff_text("policy", &same),
            "policy \"repos\", version 1 → 5: no differences\n"
        );
    }

    #[test]
    fn a_listed_definition_reads_into_its_type() {
        let item = json!({"name": "gh", "version": 3, "updated_at": "2026-12-01T10:00:00Z",
            "secret": {"name": "gh", "rules": [{"host": "api.github.com"}],
                       "source": {"type": "env", "var": "GH"}, "inject": {"style": "bearer"}}});
        let live: Live<crate::transforms::secrets::SecretConfig> = parse_live(&item).unwrap();
        assert_eq!((live.name.as_str(), live.version), ("gh", 3));
        assert!(live.fires.is_none());
        let broken = json!({"name": "gh", "version": 1, "secret": {"name": "gh"}});
        let e = parse_live::<crate::transforms::secrets::SecretConfig>(&broken).unwrap_err();
        assert!(e.0.contains("--json"), "{}", e.0);
    }
}
