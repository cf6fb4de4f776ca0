//! Telling a channel about a new approval: one POST of a Slack-compatible message (`text`
//! for any incoming webhook, `blocks` for Slack's layout) to a configured URL. Best effort:
//! the request is refused either way, and a failure is logged, not retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::approvals::Approval;
use crate::vocab::{DurationText, FieldError, https_or_loopback};

/// `approvals.webhook`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (a Slack incoming webhook URL, or anything that takes its JSON). The
    /// URL is itself a credential for Slack: read it from the environment with `url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The environment variable holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// How long one POST may take. Default 5s.
    #[serde(default = "default_timeout")]
    pub timeout: DurationText,
}

fn default_timeout() -> DurationText {
    DurationText(Duration::from_secs(5))
}

impl WebhookConfig {
    pub fn problems(&self) -> Vec<FieldError> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => url_problem(url)
                .map(|p| FieldError::new("url", p))
                .into_iter()
                .collect(),
            (None, Some(var)) if var.trim().is_empty() => {
                vec![FieldError::new("url_env", "names no variable")]
            }
            (None, Some(_)) => Vec::new(),
            _ => vec![FieldError::new(
                "url",
                "a webhook needs exactly one of `url` and `url_env`",
            )],
        }
    }

    /// The URL to post to, read from the environment when `url_env` names it.
    fn resolve(&self) -> Result<String, String> {
        let url = match (&self.url, &self.url_env) {
            (Some(url), _) => url.clone(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("approvals.webhook.url_env: {var} is not set"))?,
            (None, None) => return Err("approvals.webhook has no url".to_owned()),
        };
        match url_problem(&url) {
            Some(problem) => Err(format!("approvals.webhook: {problem}")),
            None => Ok(url),
        }
    }
}

/// Plain http only to a loopback address: a Slack webhook URL is a credential.
fn url_problem(url: &str) -> Option<String> {
    match url::Url::parse(url) {
        Err(_) => Some("not a URL".to_owned()),
        Ok(parsed) if https_or_loopback(&parsed) => None,
        Ok(_) => Some(
            "must be an https URL (plain http is allowed to a loopback address only)".to_owned(),
        ),
    }
}

/// The message about one approval.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    #[serde(skip)]
    pub approval_id: String,
    pub text: String,
    pub blocks: serde_json::Value,
}

/// What the channel reads: who asks, what, under which policy, and where to decide —
/// the same summary an approver sees in the console, nothing more.
pub fn message(approval: &Approval, link: Option<&str>) -> Message {
    let asked = &approval.request;
    let who = approval
        .identity
        .as_deref()
        .unwrap_or("an unnamed workload");
    let port = if asked.port == crate::request::default_port(&asked.scheme) {
        String::new()
    } else {
        format!(":{}", asked.port)
    };
    let what = match &asked.tool {
        Some(tool) => format!(
            "call tool `{tool}` at {}{port}{} with arguments {}",
            asked.host,
            asked.path,
            asked.arguments_preview.as_deref().unwrap_or("{}")
        ),
        None => format!(
            "{} {}://{}{port}{}",
            asked.method, asked.scheme, asked.host, asked.path
        ),
    };
    let decide = match link {
        Some(link) => format!("Decide: {link}"),
        None => format!(
            "Decide with `portcullis approvals approve {}` (or `deny`)",
            approval.id
        ),
    };
    let text = format!(
        "Approval {} requested: {who} wants to {what} (policy {:?}). {decide}",
        approval.id, approval.policy
    );
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!(
            "*Approval requested* `{}`\n*{}* wants to {}\nPolicy: `{}`",
            approval.id, who, what, approval.policy)},
    })];
    if let Some(link) = link {
        blocks.push(json!({
            "type": "actions",
            "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Review"},
                          "url": link}],
        }));
    }
    Message {
        approval_id: approval.id.clone(),
        text,
        blocks: serde_json::Value::Array(blocks),
    }
}

pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        // The webhook's answer is not followed anywhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Posts `message`; logs (without the URL, a credential) what went wrong.
pub(super) async fn send(client: &reqwest::Client, hook: &WebhookConfig, message: &Message) {
    let url = match hook.resolve() {
        Ok(url) => url,
        Err(problem) => {
            tracing::warn!(approval = %message.approval_id, problem = %problem,
                "cannot notify the approvals webhook");
            return;
        }
    };
    let sent = client
        .post(url)
        .timeout(hook.timeout.0)
        .json(message)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => {
            tracing::info!(approval = %message.approval_id, "approvals webhook notified");
        }
        Ok(response) => tracing::warn!(approval = %message.approval_id,
            status = response.status().as_u16(), "the approvals webhook refused the message"),
        Err(error) => tracing::warn!(approval = %message.approval_id,
            error = %error.without_url(), "cannot reach the approvals webhook"),
    }
}
