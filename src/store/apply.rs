//! GitOps: write a file's definitions into the store. New names are created, changed
//! definitions become new versions, unchanged ones are left alone, and names the file no
//! longer has are kept — or deleted with `prune`. Each definition is its own transaction.

use super::{Change, Definition, Store, StoreError};

/// What happened to one definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created {
        name: String,
        version: i64,
    },
    Updated {
        name: String,
        version: i64,
    },
    Unchanged {
        name: String,
    },
    Deleted {
        name: String,
        version: i64,
    },
    /// In the store, not in the file, and not pruned.
    Kept {
        name: String,
    },
}

/// Writes `definitions` (already validated) into the store.
pub async fn apply<T: Definition>(
    store: &Store,
    definitions: &[T],
    change: &Change,
    prune: bool,
) -> Result<Vec<Applied>, StoreError> {
    let versioned = T::versioned(store);
    let mut applied = Vec::new();
    for definition in definitions {
        let name = definition.name().to_owned();
        match versioned.get(&name).await {
            Ok(live) if live.definition == *definition => applied.push(Applied::Unchanged { name }),
            Ok(live) => {
                let version = versioned.update(live.version, definition, change).await?;
                applied.push(Applied::Updated { name, version });
            }
            // A live row that no longer parses is replaced by the file's definition.
            Err(StoreError::Invalid(_)) => {
                let live = versioned.live_version(&name).await?;
                let version = versioned.update(live, definition, change).await?;
                applied.push(Applied::Updated { name, version });
            }
            Err(StoreError::NotFound { .. }) => {
                let version = versioned.create(definition, change).await?;
                applied.push(Applied::Created { name, version });
            }
            Err(e) => return Err(e),
        }
    }
    for stored in versioned.list().await? {
        let name = stored.definition.name().to_owned();
        if definitions.iter().any(|d| d.name() == name) {
            continue;
        }
        if prune {
            let version = versioned.delete(&name, stored.version, change).await?;
            applied.push(Applied::Deleted { name, version });
        } else {
            applied.push(Applied::Kept { name });
        }
    }
    Ok(applied)
}
