//! [`AuthBatch`]: the auth side of applying one batch of committed commands. Changes are made
//! to a copy of the state and written to the `auth` table in the batch's transaction; the copy
//! becomes the member's state only once that transaction has committed
//! ([`AuthBatch::publish`]).

use std::sync::Arc;

use concord_proto::raftpb::AuthChange;
use redb::WriteTransaction;

use super::error::AuthError;
use super::state::{AuthState, Outcome};
use super::store::AuthStore;
use super::table;
use crate::mvcc::MvccError;

/// The auth state as of the commands applied so far in this batch.
pub struct AuthBatch<'a> {
    store: &'a AuthStore,
    state: Arc<AuthState>,
    outcomes: Vec<Outcome>,
}

impl<'a> AuthBatch<'a> {
    /// A batch starting from `store`'s committed state.
    pub fn new(store: &'a AuthStore) -> Self {
        Self {
            state: store.state(),
            store,
            outcomes: Vec::new(),
        }
    }

    /// Whether a command whose permissions were checked at `checked_at` may still apply: yes
    /// for the members' own commands (0) and while auth is off; otherwise only if no change
    /// came in between (etcd's `ErrAuthOldRevision`, which clients retry).
    pub fn admit(&self, checked_at: u64) -> Result<(), AuthError> {
        if checked_at == 0 || !self.state.enabled() || checked_at >= self.state.revision() {
            return Ok(());
        }
        Err(AuthError::AuthOldRevision)
    }

    /// Applies `change` and stores the result in `txn`; the revision afterwards.
    pub fn apply(&mut self, txn: &WriteTransaction, change: &AuthChange) -> Result<u64, MvccError> {
        let Some(change) = &change.change else {
            return Err(MvccError::Storage("an auth change without a change".into()));
        };
        let mut next = (*self.state).clone();
        let outcome = next.apply(change).map_err(MvccError::Auth)?;
        if outcome.changed {
            table::save(txn, &next)?;
            self.state = Arc::new(next);
            self.outcomes.push(outcome);
        }
        Ok(self.state.revision())
    }

    /// Makes the batch's state the member's (call after its transaction committed); whether
    /// it changed.
    pub fn publish(self) -> bool {
        if self.outcomes.is_empty() {
            return false;
        }
        self.store.publish(self.state, &self.outcomes);
        true
    }
}
