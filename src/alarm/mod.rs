//! Alarms (etcd's `alarmStore`): NOSPACE when the database outgrows `--quota-backend-bytes`,
//! CORRUPT when members' hashes disagree. Raised and cleared through Raft, so every member
//! holds the same alarms; kept in the `alarms` table, so they survive restarts and travel in
//! snapshots.
//!
//! While NOSPACE is raised, writes that add data (puts, txns with a put, lease grants) are
//! refused at apply with `etcdserver: mvcc: database space exceeded`; reads, deletes,
//! compaction and defragmentation go on, so an operator can make room and disarm. While
//! CORRUPT is raised, every write is refused with `etcdserver: corrupt cluster`.

pub mod table;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use concord_proto::etcdserverpb::{AlarmMember, AlarmResponse, AlarmType};
use concord_proto::raftpb::AlarmChange;
use concord_proto::raftpb::command::Request;
use redb::{Database, WriteTransaction};

use crate::mvcc::MvccError;

/// One raised alarm: the member it is about, and its type (etcd's `AlarmType` number).
pub type Alarm = (u64, i32);

/// Every raised alarm, with quick flags for the checks made on each write.
#[derive(Debug, Default)]
pub struct AlarmStore {
    alarms: RwLock<BTreeSet<Alarm>>,
    no_space: AtomicBool,
    corrupt: AtomicBool,
}

impl AlarmStore {
    /// The alarms stored in `db`.
    pub fn open(db: &Database) -> Result<Arc<Self>, MvccError> {
        let store = Arc::new(AlarmStore::default());
        store.reload(db)?;
        Ok(store)
    }

    /// Replaces the alarms held with those stored in `db` (after a snapshot is installed).
    pub fn reload(&self, db: &Database) -> Result<(), MvccError> {
        self.set(table::load(db)?);
        Ok(())
    }

    fn set(&self, alarms: BTreeSet<Alarm>) {
        let has = |kind: AlarmType| alarms.iter().any(|(_, t)| *t == kind as i32);
        self.no_space.store(has(AlarmType::Nospace), Ordering::Release);
        self.corrupt.store(has(AlarmType::Corrupt), Ordering::Release);
        if let Ok(mut held) = self.alarms.write() {
            *held = alarms;
        }
    }

    fn snapshot(&self) -> BTreeSet<Alarm> {
        self.alarms.read().map(|held| held.clone()).unwrap_or_default()
    }

    /// Whether a NOSPACE alarm is raised.
    pub fn no_space(&self) -> bool {
        self.no_space.load(Ordering::Acquire)
    }

    /// Whether a CORRUPT alarm is raised.
    pub fn corrupt(&self) -> bool {
        self.corrupt.load(Ordering::Acquire)
    }

    /// The raised alarms of type `kind` (all of them for `NONE`), as etcd lists them.
    pub fn list(&self, kind: AlarmType) -> Vec<AlarmMember> {
        self.snapshot()
            .into_iter()
            .filter(|(_, t)| kind == AlarmType::None || *t == kind as i32)
            .map(member)
            .collect()
    }

    /// The names of the raised alarms (`NOSPACE`, `CORRUPT`), for health answers.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .snapshot()
            .into_iter()
            .map(|(_, t)| AlarmType::try_from(t).map_or("UNKNOWN", |t| t.as_str_name()))
            .collect();
        names.dedup();
        names
    }
}

fn member((member_id, alarm): Alarm) -> AlarmMember {
    AlarmMember { member_id, alarm }
}

/// The alarms as one apply batch changes them: changes are written in the batch's transaction
/// and held here, and [`AlarmBatch::publish`] shows them once the batch has committed.
#[derive(Debug)]
pub struct AlarmBatch<'a> {
    store: &'a AlarmStore,
    staged: Option<BTreeSet<Alarm>>,
}

impl<'a> AlarmBatch<'a> {
    /// A batch over `store`'s alarms.
    pub fn new(store: &'a AlarmStore) -> Self {
        Self { store, staged: None }
    }

    fn has(&self, kind: AlarmType) -> bool {
        match &self.staged {
            Some(alarms) => alarms.iter().any(|(_, t)| *t == kind as i32),
            None => match kind {
                AlarmType::Nospace => self.store.no_space(),
                AlarmType::Corrupt => self.store.corrupt(),
                AlarmType::None => false,
            },
        }
    }

    /// Refuses `request` if a raised alarm forbids it (etcd's capped and corrupt appliers).
    pub fn admit(&self, request: &Request) -> Result<(), MvccError> {
        let adds_data = match request {
            Request::Put(_) | Request::LeaseGrant(_) => true,
            Request::Txn(txn) => concord_proto::txn::put_cost(txn) > 0,
            _ => false,
        };
        let member_traffic = matches!(
            request,
            Request::LeaseCheckpoints(_) | Request::LeaseExpiry(_) | Request::Alarm(_)
        );
        if self.has(AlarmType::Corrupt) && !member_traffic && !matches!(request, Request::Auth(_)) {
            return Err(MvccError::Corrupt);
        }
        if adds_data && self.has(AlarmType::Nospace) {
            return Err(MvccError::NoSpace);
        }
        Ok(())
    }

    /// Raises or clears one alarm inside `txn`; answers as etcd's apply does (the alarm
    /// raised, or the one cleared; nothing when clearing one that was not raised).
    pub fn apply(
        &mut self,
        txn: &WriteTransaction,
        change: &AlarmChange,
    ) -> Result<AlarmResponse, MvccError> {
        let alarm = (change.member_id, change.alarm);
        let mut alarms = self.staged.take().unwrap_or_else(|| self.store.snapshot());
        let changed = if change.activate {
            change.alarm != AlarmType::None as i32 && alarms.insert(alarm)
        } else {
            alarms.remove(&alarm)
        };
        let answered = if change.activate {
            change.alarm != AlarmType::None as i32
        } else {
            changed
        };
        if changed {
            table::save(txn, &alarms)?;
            tracing::warn!(member = %format!("{:x}", alarm.0), alarm = ?AlarmType::try_from(alarm.1), raised = change.activate, "alarm changed");
        }
        self.staged = Some(alarms);
        Ok(AlarmResponse {
            header: None,
            alarms: if answered { vec![member(alarm)] } else { Vec::new() },
        })
    }

    /// Shows this batch's changes (call once it has committed).
    pub fn publish(self) {
        if let Some(alarms) = self.staged {
            self.store.set(alarms);
        }
    }
}

#[cfg(test)]
mod tests {
    use concord_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};

    use super::*;

    fn change(alarm: AlarmType, activate: bool) -> AlarmChange {
        AlarmChange {
            member_id: 7,
            alarm: alarm as i32,
            activate,
        }
    }

    #[test]
    fn nospace_refuses_what_adds_data_and_corrupt_every_write_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let store = AlarmStore::open(&db).unwrap();
        let put = Request::Put(PutRequest::default());
        let delete = Request::DeleteRange(DeleteRangeRequest::default());
        let read_only_txn = Request::Txn(TxnRequest::default());

        let txn = db.begin_write().unwrap();
        let mut batch = AlarmBatch::new(&store);
        let raised = batch.apply(&txn, &change(AlarmType::Nospace, true)).unwrap();
        assert_eq!(raised.alarms.len(), 1);
        assert!(
            matches!(batch.admit(&put), Err(MvccError::NoSpace)),
            "seen inside the batch"
        );
        assert!(batch.admit(&delete).is_ok() && batch.admit(&read_only_txn).is_ok());
        txn.commit().unwrap();
        assert!(!store.no_space(), "not before publishing");
        batch.publish();
        assert!(store.no_space());
        assert_eq!(store.names(), ["NOSPACE"]);
        let reopened = AlarmStore::open(&db).unwrap();
        assert_eq!(
            reopened.list(AlarmType::None),
            store.list(AlarmType::None),
            "stored"
        );

        let txn = db.begin_write().unwrap();
        let mut batch = AlarmBatch::new(&store);
        batch.apply(&txn, &change(AlarmType::Corrupt, true)).unwrap();
        assert!(matches!(batch.admit(&delete), Err(MvccError::Corrupt)));
        let cleared = batch.apply(&txn, &change(AlarmType::Nospace, false)).unwrap();
        assert_eq!(cleared.alarms.len(), 1);
        let again = batch.apply(&txn, &change(AlarmType::Nospace, false)).unwrap();
        assert!(
            again.alarms.is_empty(),
            "clearing what is not raised answers nothing"
        );
        txn.commit().unwrap();
        batch.publish();
        assert!(!store.no_space() && store.corrupt());
        assert_eq!(store.list(AlarmType::Nospace), []);
    }
}
