//! Enrollment tokens: minted with a tag set, presented by a workload as its proxy
//! credential (`Proxy-Authorization`), revocable. The store keeps only each token's SHA-256;
//! the value is shown once, when it is minted.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Change, Fault, Store, StoreError, Touched, now};
use crate::vocab::FieldError;
use crate::vocab::Tag;

/// The prefix of every minted token, so a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "ptk_";

/// A token as stored: never its value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnrollmentToken {
    pub id: String,
    /// Unique among unrevoked tokens; the identity name in audit records.
    pub name: String,
    pub tags: Vec<Tag>,
    /// The SHA-256 of the value, hex.
    #[serde(skip)]
    pub sha256: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// A token just minted: its record, and the value, which exists nowhere else.
pub struct MintedToken {
    pub token: EnrollmentToken,
    pub value: SecretString,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &self.token)
            .field("value", &"<redacted>")
            .finish()
    }
}

const COLUMNS: &str = "id, name, sha256, tags, created_at, created_by, revoked_at, revoked_by";

impl Store {
    /// Mints a token carrying `tags`. Errors name the field at fault.
    pub async fn mint_token(
        &self,
        name: &str,
        tags: &[Tag],
        change: &Change,
    ) -> Result<MintedToken, StoreError> {
        validate_name(name)?;
        let value = SecretString::from(new_token_value()?);
        let sha256 = hex(&Sha256::digest(value.expose_secret().as_bytes()));
        let token = EnrollmentToken {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            tags: tags.to_vec(),
            sha256,
            created_at: now(),
            created_by: change.operator.clone(),
            revoked_at: None,
            revoked_by: None,
        };
        let mut tx = self.pool().begin().await?;
        let taken =
            sqlx::query("SELECT id FROM enrollment_tokens WHERE name = $1 AND revoked_at IS NULL")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Err(StoreError::Exists {
                kind: "token",
                name: name.to_owned(),
            });
        }
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, name, sha256, tags, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.id.as_str())
        .bind(token.name.as_str())
        .bind(token.sha256.as_str())
        .bind(serde_json::to_string(&token.tags).unwrap_or_default())
        .bind(token.created_at.as_str())
        .bind(token.created_by.as_str())
        .execute(&mut *tx)
        .await?;
        self.touch(
            &mut tx,
            &Touched {
                kind: "token",
                name,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(MintedToken { token, value })
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<EnrollmentToken>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool())
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// Revokes a token by id: from the next snapshot on, it is refused (407).
    pub async fn revoke_token(
        &self,
        id: &str,
        change: &Change,
    ) -> Result<EnrollmentToken, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM enrollment_tokens WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "token",
            name: id.to_owned(),
        })?;
        let mut token = token_row(&row)?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let at = now();
        sqlx::query("UPDATE enrollment_tokens SET revoked_at = $1, revoked_by = $2 WHERE id = $3")
            .bind(at.as_str())
            .bind(change.operator.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.touch(
            &mut tx,
            &Touched {
                kind: "token",
                name: &token.name,
            },
        )
        .await?;
        tx.commit().await?;
        token.revoked_at = Some(at);
        token.revoked_by = Some(change.operator.clone());
        Ok(token)
    }
}

/// Unrevoked tokens, for a snapshot. A row that does not parse grants nothing: it is left
/// out, as a fault.
pub(super) async fn active_rows(
    conn: &mut sqlx::AnyConnection,
) -> Result<(Vec<EnrollmentToken>, Vec<Fault>), StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_tokens WHERE revoked_at IS NULL ORDER BY name"
    )))
    .fetch_all(conn)
    .await?;
    let mut tokens = Vec::with_capacity(rows.len());
    let mut faults = Vec::new();
    for row in &rows {
        match token_row(row) {
            Ok(token) if is_sha256_hex(&token.sha256) => tokens.push(token),
            parsed => faults.push(Fault {
                kind: "token",
                name: row
                    .try_get::<String, _>("name")
                    .unwrap_or_else(|_| "?".to_owned()),
                version: None,
                error: match parsed {
                    Ok(_) => "sha256: not 64 hex digits".to_owned(),
                    Err(e) => e.to_string(),
                },
                outcome: "left_out",
            }),
        }
    }
    Ok((tokens, faults))
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn token_row(row: &sqlx::any::AnyRow) -> Result<EnrollmentToken, StoreError> {
    let tags: String = row.try_get("tags")?;
    Ok(EnrollmentToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tags: super::versioned::from_json(&tags)?,
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_by: row.try_get("revoked_by")?,
    })
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    match crate::vocab::names::name_problem("token", name) {
        Some(message) => Err(StoreError::Invalid(vec![FieldError::new("name", message)])),
        None => Ok(()),
    }
}

/// 256 random bits from the operating system, base64url.
fn new_token_value() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        StoreError::Invalid(vec![FieldError::new(
            "",
            format!("no randomness from the operating system: {e}"),
        )])
    })?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
