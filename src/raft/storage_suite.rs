//! openraft's own conformance suite, run against our log store and state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

use super::TypeConfig;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use crate::mvcc::MvccStore;

struct Builder;

fn storage_error(err: impl std::error::Error + 'static) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_error(&err))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(storage_error)?;
        let log = LogStore::open(&dir.path().join("wal"), 0).map_err(storage_error)?;
        let db =
            std::sync::Arc::new(redb::Database::create(dir.path().join("db.redb")).map_err(storage_error)?);
        let store = std::sync::Arc::new(MvccStore::open(db).map_err(storage_error)?);
        let lessor = std::sync::Arc::new(crate::lease::Lessor::open(&store).map_err(storage_error)?);
        let auth =
            crate::auth::AuthStore::open(&store.database(), Default::default()).map_err(storage_error)?;
        let alarms = crate::alarm::AlarmStore::open(&store.database()).map_err(storage_error)?;
        let hub = crate::watch::WatchHub::new(store.clone(), 1 << 20);
        let sm = StateMachine::open(store, lessor, auth, alarms, hub, dir.path().join("snap"))
            .map_err(storage_error)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn log_store_and_state_machine_pass_openrafts_suite() {
    TypeConfig::run(async {
        Suite::test_all(Builder).await.unwrap();
    });
}
