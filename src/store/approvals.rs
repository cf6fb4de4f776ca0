//! The approval queue: requests a policy sent to a person (`action: approve`), what was
//! decided, and the grant — a versioned policy — an approval created. Approving writes the
//! grant and the decision in one transaction and one store revision, so every instance
//! lets the retry pass from its next snapshot on.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Change, Store, StoreError, now};
use crate::policy::PolicyConfig;
use crate::vocab::Tag;

/// What was asked, as the approver sees it: never a header, a query string or a body,
/// which may carry credentials — the tool's arguments only as a digest and a bounded,
/// scrubbed preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskedRequest {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Without its query.
    pub path: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_preview: Option<String>,
    /// `chat_completion`, `tool_call`, `http_request` …
    pub action_type: String,
}

/// An approval's state as stored; [`Approval::status`] adds the lapses of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Revoked,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<ApprovalState, StoreError> {
        Ok(match text {
            "pending" => ApprovalState::Pending,
            "approved" => ApprovalState::Approved,
            "denied" => ApprovalState::Denied,
            "revoked" => ApprovalState::Revoked,
            other => {
                return Err(StoreError::Database(sqlx::Error::Decode(
                    format!("approval state {other:?}").into(),
                )));
            }
        })
    }
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    pub id: String,
    pub state: ApprovalState,
    /// `pending`, `lapsed` (nobody decided in time), `approved` (its grant is in force),
    /// `expired` (its grant ran out), `denied` or `revoked`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The policy that asked for approval.
    pub policy: String,
    pub request: AskedRequest,
    /// The first refused request that asked.
    pub request_id: String,
    pub requested_at: String,
    pub lapses_at: String,
    /// How many refused requests asked for this approval while it was pending.
    pub asked: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The grant's policy name, once approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_expires_at: Option<String>,
}

impl Approval {
    /// The approval as a decision by `change.operator` at `at` left it.
    fn decided(
        self,
        state: ApprovalState,
        at: String,
        change: &Change,
        note: Option<&str>,
    ) -> Approval {
        Approval {
            state,
            status: state.as_str(),
            decided_at: Some(at),
            decided_by: Some(change.operator.clone()),
            note: note.map(str::to_owned).or(self.note.clone()),
            ..self
        }
    }

    fn status_at(&self, now: &str) -> &'static str {
        match self.state {
            ApprovalState::Pending if self.lapses_at.as_str() <= now => "lapsed",
            ApprovalState::Approved
                if self.grant_expires_at.as_deref().is_some_and(|at| at <= now) =>
            {
                "expired"
            }
            state => state.as_str(),
        }
    }
}

/// A request asking for approval, to queue.
#[derive(Debug, Clone)]
pub struct NewApproval<'a> {
    pub scope_key: &'a str,
    pub identity: Option<&'a str>,
    pub policy: &'a str,
    pub request: &'a AskedRequest,
    pub request_id: &'a str,
    /// RFC 3339 (UTC): when the pending approval lapses.
    pub lapses_at: &'a str,
}

/// What asking did.
#[derive(Debug, Clone)]
pub enum Asked {
    /// A new pending approval.
    Queued(Approval),
    /// The same request already waits: its approval, asked once more.
    Waiting(Approval),
    /// The identity has `max_pending` approvals waiting: nothing was queued.
    QueueFull { pending: i64 },
}

/// Why an approval could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("approval {0:?} does not exist")]
    NotFound(String),
    #[error("approval {id:?} is {status}: only a pending approval can be {verb}")]
    NotPending {
        id: String,
        status: &'static str,
        verb: &'static str,
    },
    #[error("approval {id:?} is {status}: only an approved one in force can be revoked")]
    NotInForce { id: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

const COLUMNS: &str = "id, state, identity, policy, request, request_id, requested_at, \
                       lapses_at, asked, decided_at, decided_by, note, grant_policy, \
                       grant_expires_at";

impl Store {
    /// Queues an approval, unless the same request (same `scope_key`) already waits for
    /// one — then that one is asked once more — or the identity already has `max_pending`
    /// waiting, which bounds what a workload can flood the queue with.
    pub async fn ask_approval(
        &self,
        new: &NewApproval<'_>,
        max_pending: i64,
    ) -> Result<Asked, StoreError> {
        let at = now();
        let mut tx = self.pool().begin().await?;
        let waiting = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM approvals
             WHERE scope_key = $1 AND state = 'pending' AND lapses_at > $2
             ORDER BY requested_at DESC LIMIT 1"
        )))
        .bind(new.scope_key)
        .bind(at.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = waiting {
            let mut approval = approval_row(&row, &at)?;
            sqlx::query("UPDATE approvals SET asked = asked + 1 WHERE id = $1")
                .bind(approval.id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            approval.asked += 1;
            return Ok(Asked::Waiting(approval));
        }
        let pending: i64 = match new.identity {
            Some(identity) => sqlx::query(
                "SELECT COUNT(*) AS n FROM approvals
                 WHERE identity = $1 AND state = 'pending' AND lapses_at > $2",
            )
            .bind(identity)
            .bind(at.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?,
            None => sqlx::query(
                "SELECT COUNT(*) AS n FROM approvals
                 WHERE identity IS NULL AND state = 'pending' AND lapses_at > $1",
            )
            .bind(at.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?,
        };
        if pending >= max_pending {
            return Ok(Asked::QueueFull { pending });
        }
        let approval = Approval {
            id: new_approval_id()?,
            state: ApprovalState::Pending,
            status: "pending",
            identity: new.identity.map(str::to_owned),
            policy: new.policy.to_owned(),
            request: new.request.clone(),
            request_id: new.request_id.to_owned(),
            requested_at: at,
            lapses_at: new.lapses_at.to_owned(),
            asked: 1,
            decided_at: None,
            decided_by: None,
            note: None,
            grant: None,
            grant_expires_at: None,
        };
        sqlx::query(
            "INSERT INTO approvals (id, state, scope_key, identity, policy, request, request_id,
                                    requested_at, lapses_at, asked)
             VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, 1)",
        )
        .bind(approval.id.as_str())
        .bind(new.scope_key)
        .bind(new.identity)
        .bind(new.policy)
        .bind(serde_json::to_string(new.request).unwrap_or_default())
        .bind(new.request_id)
        .bind(approval.requested_at.as_str())
        .bind(new.lapses_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Asked::Queued(approval))
    }

    /// Approvals, newest first; `status` filters on [`Approval::status`].
    pub async fn approvals(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Approval>, StoreError> {
        let at = now();
        // Filtered on the stored state in SQL, on the time-dependent status here.
        let state = status.map(|s| match s {
            "lapsed" => "pending",
            "expired" => "approved",
            other => other,
        });
        let rows = match state {
            Some(state) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM approvals WHERE state = $1
                     ORDER BY requested_at DESC, id LIMIT $2"
                )))
                .bind(state)
                .bind(limit.saturating_mul(4))
                .fetch_all(&self.pool())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM approvals ORDER BY requested_at DESC, id LIMIT $1"
                )))
                .bind(limit)
                .fetch_all(&self.pool())
                .await?
            }
        };
        let mut approvals = Vec::with_capacity(rows.len());
        for row in &rows {
            let approval = approval_row(row, &at)?;
            if status.is_none_or(|s| s == approval.status) {
                approvals.push(approval);
            }
            if approvals.len() as i64 >= limit {
                break;
            }
        }
        Ok(approvals)
    }

    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM approvals WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool())
        .await?;
        row.map(|row| approval_row(&row, &now())).transpose()
    }

    /// Approves a pending approval: creates `grant` (a policy with its `grant` narrowing)
    /// and records the decision, with the grant's expiry, in one transaction.
    pub async fn approve(
        &self,
        id: &str,
        grant: &PolicyConfig,
        note: Option<&str>,
        change: &Change,
    ) -> Result<Approval, DecideError> {
        let Some(grant_expires_at) = grant.grant.as_ref().map(|g| g.expires_at.as_str()) else {
            return Err(StoreError::Invalid(vec![crate::vocab::FieldError::new(
                "grant",
                "an approval's grant names what it is for and until when",
            )])
            .into());
        };
        let at = now();
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let approval = pending_in(&mut tx, id, &at, "approved").await?;
        self.policies().create_in(&mut tx, grant, change).await?;
        let updated = sqlx::query(
            "UPDATE approvals SET state = 'approved', decided_at = $1, decided_by = $2,
                                  note = $3, grant_policy = $4, grant_expires_at = $5
             WHERE id = $6 AND state = 'pending'",
        )
        .bind(at.as_str())
        .bind(change.operator.as_str())
        .bind(note)
        .bind(grant.name.as_str())
        .bind(grant_expires_at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if updated.rows_affected() != 1 {
            return Err(not_pending(id, &approval, "approved"));
        }
        self.policies().commit(tx, &[&grant.name]).await?;
        Ok(Approval {
            grant: Some(grant.name.clone()),
            grant_expires_at: Some(grant_expires_at.to_owned()),
            ..approval.decided(ApprovalState::Approved, at, change, note)
        })
    }

    /// Denies a pending approval. The next identical request asks again.
    pub async fn deny_approval(
        &self,
        id: &str,
        note: Option<&str>,
        change: &Change,
    ) -> Result<Approval, DecideError> {
        let at = now();
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let approval = pending_in(&mut tx, id, &at, "denied").await?;
        sqlx::query(
            "UPDATE approvals SET state = 'denied', decided_at = $1, decided_by = $2, note = $3
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(at.as_str())
        .bind(change.operator.as_str())
        .bind(note)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(approval.decided(ApprovalState::Denied, at, change, note))
    }

    /// Ends an approval's grant before it expires: the grant policy is deleted (its
    /// history stays) in the same transaction.
    pub async fn revoke_approval(
        &self,
        id: &str,
        note: Option<&str>,
        change: &Change,
    ) -> Result<Approval, DecideError> {
        let at = now();
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let approval = find_in(&mut tx, id, &at).await?;
        let (Some(grant), "approved") = (approval.grant.clone(), approval.status) else {
            return Err(DecideError::NotInForce {
                id: id.to_owned(),
                status: approval.status,
            });
        };
        let live = sqlx::query("SELECT version FROM policies WHERE name = $1 AND deleted = 0")
            .bind(grant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(row) = live {
            let version: i64 = row.try_get("version").map_err(StoreError::from)?;
            self.policies()
                .write_in(
                    &mut tx,
                    &grant,
                    version,
                    super::Operation::Delete,
                    change,
                    |_| Ok(None),
                )
                .await?;
        }
        sqlx::query(
            "UPDATE approvals SET state = 'revoked', decided_at = $1, decided_by = $2,
                                  note = COALESCE($3, note)
             WHERE id = $4",
        )
        .bind(at.as_str())
        .bind(change.operator.as_str())
        .bind(note)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        self.policies().commit(tx, &[&grant]).await?;
        Ok(approval.decided(ApprovalState::Revoked, at, change, note))
    }
}

async fn find_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    at: &str,
) -> Result<Approval, DecideError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM approvals WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
    Ok(approval_row(&row, at)?)
}

async fn pending_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    at: &str,
    verb: &'static str,
) -> Result<Approval, DecideError> {
    let approval = find_in(tx, id, at).await?;
    if approval.status != "pending" {
        return Err(not_pending(id, &approval, verb));
    }
    Ok(approval)
}

fn not_pending(id: &str, approval: &Approval, verb: &'static str) -> DecideError {
    DecideError::NotPending {
        id: id.to_owned(),
        status: approval.status,
        verb,
    }
}

/// `ap-` and 16 lowercase letters and digits: unguessable (80 bits), and usable in a
/// policy name and a URL as it is.
fn new_approval_id() -> Result<String, StoreError> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        StoreError::Database(sqlx::Error::Protocol(format!(
            "no randomness for an approval id: {e}"
        )))
    })?;
    let id: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    Ok(format!("ap-{id}"))
}

fn approval_row(row: &sqlx::any::AnyRow, at: &str) -> Result<Approval, StoreError> {
    let request: String = row.try_get("request")?;
    let mut approval = Approval {
        id: row.try_get("id")?,
        state: ApprovalState::parse(&row.try_get::<String, _>("state")?)?,
        status: "",
        identity: row.try_get("identity")?,
        policy: row.try_get("policy")?,
        request: serde_json::from_str(&request)
            .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
        request_id: row.try_get("request_id")?,
        requested_at: row.try_get("requested_at")?,
        lapses_at: row.try_get("lapses_at")?,
        asked: row.try_get("asked")?,
        decided_at: row.try_get("decided_at")?,
        decided_by: row.try_get("decided_by")?,
        note: row.try_get("note")?,
        grant: row.try_get("grant_policy")?,
        grant_expires_at: row.try_get("grant_expires_at")?,
    };
    approval.status = approval.status_at(at);
    Ok(approval)
}
