//! State that outlives snapshots, keyed by a transform's whole config: a reload that keeps
//! the config keeps the state (a judge's breaker and cache, a limit's buckets), and a
//! changed config starts afresh. Entries live as long as a snapshot holds them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

/// A stable digest of a config (its JSON form), for keying state by it.
pub fn config_digest(config: &impl serde::Serialize) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(config)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// One state per distinct config, shared by every snapshot that compiles that config.
pub struct StatesByConfig<S> {
    states: Mutex<HashMap<u64, Weak<S>>>,
}

impl<S> Default for StatesByConfig<S> {
    fn default() -> Self {
        StatesByConfig {
            states: Mutex::new(HashMap::new()),
        }
    }
}

impl<S> StatesByConfig<S> {
    /// The state of `config`, made by `make` when no live snapshot holds one.
    pub fn get<C: serde::Serialize>(&self, config: &C, make: impl FnOnce(&C) -> S) -> Arc<S> {
        let key = config_digest(config);
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, state| state.strong_count() > 0);
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(make(config));
        states.insert(key, Arc::downgrade(&state));
        state
    }
}
