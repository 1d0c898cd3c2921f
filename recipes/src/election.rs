//! [`Election`]: leader election, etcd's `concurrency.Election`.
//!
//! Candidates queue exactly as a [`Mutex`](crate::mutex::Mutex)'s contenders do, with a key
//! `name/<lease hex>` whose value is the candidate's proclamation; the oldest key leads. The
//! leader can change its value ([`proclaim`](Election::proclaim)) and step down
//! ([`resign`](Election::resign)); anyone can ask who leads ([`leader`](Election::leader)) or
//! follow every change ([`observe`](Election::observe)).

use std::collections::{BTreeMap, HashMap, VecDeque};

use concord_proto::etcdserverpb::{RangeRequest, ResponseHeader, TxnRequest, WatchCreateRequest};
use concord_proto::mvccpb::{Event, KeyValue, event::EventType};
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::kv::{
    Kv, WatchStream, create_revision_is, first_created, get_op, prefix_end, put_op, range_result,
};
use crate::mutex::{Cleanup, delete_if_created_at, lease_key, prefix_of, wait_turn};
use crate::session::{Session, lease_gone_is_expiry};

/// What identifies a leadership: enough to [`resume`](Election::resume) it elsewhere (etcd's
/// `v3electionpb.LeaderKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election's name.
    pub name: Vec<u8>,
    /// The leader's key, `name/<lease hex>`.
    pub key: Vec<u8>,
    /// The key's create revision: the leadership ends when the key does.
    pub rev: i64,
    /// The lease the key is attached to.
    pub lease: i64,
}

/// One candidate's handle on the election `name`, campaigning with a [`Session`]'s lease.
pub struct Election<K: Kv> {
    session: Session<K>,
    name: Vec<u8>,
    prefix: Vec<u8>,
    /// This session's key under `prefix`.
    key: Vec<u8>,
    /// Set while this handle leads (as far as it knows).
    leader: Option<LeaderKey>,
    header: Option<ResponseHeader>,
}

impl<K: Kv> Election<K> {
    /// A candidate for the election `name` (its keys live under `name/`) with `session`'s lease.
    pub fn new(session: &Session<K>, name: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        let prefix = prefix_of(name.clone());
        Self {
            key: lease_key(&prefix, session.lease()),
            session: session.clone(),
            name,
            prefix,
            leader: None,
            header: None,
        }
    }

    /// The handle of an existing leadership (from another handle's [`campaign`](Self::campaign),
    /// possibly in another process), to proclaim or resign with. `session` should hold
    /// `leader.lease`.
    pub fn resume(session: &Session<K>, leader: LeaderKey) -> Self {
        Self {
            session: session.clone(),
            prefix: prefix_of(leader.name.clone()),
            name: leader.name.clone(),
            key: leader.key.clone(),
            leader: Some(leader),
            header: None,
        }
    }

    /// Runs for leader with `value` and waits until elected. If this session already has a key
    /// in the election (a campaign of another handle), the campaign continues with that key,
    /// proclaiming `value` if it differs. Fails with [`Error::SessionExpired`] if the session's
    /// lease ended first; a key this call created is removed on failure or cancellation.
    pub async fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Result<(LeaderKey, ResponseHeader)> {
        if self.session.is_lost() {
            return Err(Error::SessionExpired);
        }
        let value = value.into();
        let lease = self.session.lease();
        let txn = TxnRequest {
            compare: vec![create_revision_is(self.key.clone(), 0)],
            success: vec![put_op(self.key.clone(), value.clone(), lease)],
            failure: vec![get_op(self.key.clone())],
        };
        let response = self.session.kv().txn(txn).await.map_err(lease_gone_is_expiry)?;
        let existing = range_result(&response, 0).first();
        let rev = match (response.succeeded, existing) {
            (true, _) => response.header.as_ref().map_or(0, |h| h.revision),
            (false, Some(existing)) => existing.create_revision,
            (false, None) => return Err(Error::SessionExpired), // deleted under the txn: impossible
        };
        let cleanup = Cleanup::new(self.session.kv(), &self.key, rev, response.succeeded);
        let leader = LeaderKey {
            name: self.name.clone(),
            key: self.key.clone(),
            rev,
            lease,
        };
        let proclaimed = match existing {
            Some(existing) if existing.value != value => proclaim(self.session.kv(), &leader, value).await,
            _ => Ok(ResponseHeader::default()),
        };
        if let Err(err) = proclaimed {
            cleanup.run().await;
            return Err(err);
        }
        match wait_turn(&self.session, &self.prefix, &self.key, rev).await {
            Ok(header) => {
                cleanup.disarm();
                self.leader = Some(leader.clone());
                self.header = Some(header);
                Ok((leader, header))
            }
            Err(err) => {
                cleanup.run().await;
                Err(err)
            }
        }
    }

    /// Sets the leader's value, if this handle still leads; else [`Error::NotLeader`].
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<ResponseHeader> {
        let leader = self.leader.as_ref().ok_or(Error::NotLeader)?;
        proclaim(self.session.kv(), leader, value.into()).await
    }

    /// Steps down if this handle leads (its key is deleted, so the next candidate leads);
    /// afterwards it does not. Not leading is no error.
    pub async fn resign(&mut self) -> Result<ResponseHeader> {
        // Not leading: a txn that deletes nothing (the key is either missing or not created
        // at revision 0), which still answers with a header.
        let (key, rev) = self
            .leader
            .take()
            .map_or((self.key.clone(), 0), |l| (l.key, l.rev));
        let response = self.session.kv().txn(delete_if_created_at(&key, rev)).await?;
        let header = response.header.unwrap_or_default();
        self.header = Some(header);
        Ok(header)
    }

    /// This handle's leadership, if it leads.
    pub fn leader_key(&self) -> Option<&LeaderKey> {
        self.leader.as_ref()
    }

    /// The header of the last campaign or resign of this handle.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// The current leader of the election `name` (its oldest key), or [`Error::NoLeader`].
    pub async fn leader(kv: &K, name: impl Into<Vec<u8>>) -> Result<(ResponseHeader, KeyValue)> {
        let response = kv.range(first_created(&prefix_of(name))).await?;
        let leader = response.kvs.into_iter().next().ok_or(Error::NoLeader)?;
        Ok((response.header.unwrap_or_default(), leader))
    }

    /// The election `name`'s leader now (if any), then every change of leader or of the
    /// leader's value, each once and in order, with a header at the revision it happened. A
    /// proclamation of the value the leader already has is not a change. Like any stream, it
    /// starts (reads the current leader) when first polled. It ends after its first error.
    pub fn observe(
        kv: K,
        name: impl Into<Vec<u8>>,
    ) -> impl Stream<Item = Result<(ResponseHeader, KeyValue)>> + Send + 'static {
        let observer = Observer::new(kv, prefix_of(name));
        futures::stream::unfold(Some(observer), |observer| async move {
            let mut observer = observer?;
            match observer.next().await {
                Ok(change) => Some((Ok(change), Some(observer))),
                Err(err) => Some((Err(err), None)),
            }
        })
    }
}

async fn proclaim<K: Kv>(kv: &K, leader: &LeaderKey, value: Vec<u8>) -> Result<ResponseHeader> {
    let txn = TxnRequest {
        compare: vec![create_revision_is(leader.key.clone(), leader.rev)],
        success: vec![put_op(leader.key.clone(), value, leader.lease)],
        failure: vec![],
    };
    let response = kv.txn(txn).await.map_err(lease_gone_is_expiry)?;
    if !response.succeeded {
        return Err(Error::NotLeader);
    }
    Ok(response.header.unwrap_or_default())
}

/// Follows an election from one read of all its keys and one watch on its prefix from the
/// revision after that read, keeping its own copy of the keys: a new leader is known at the
/// very revision the old one's key went, without reading again.
struct Observer<K> {
    kv: K,
    prefix: Vec<u8>,
    watch: Option<WatchStream>,
    /// The first read's header, whose ids every change's header carries.
    header: ResponseHeader,
    /// The election's keys by create revision: the first leads.
    keys: BTreeMap<i64, KeyValue>,
    /// The create revision of each key in `keys`.
    created: HashMap<Vec<u8>, i64>,
    /// The create revision and value of the leader last reported.
    reported: Option<(i64, concord_proto::Bytes)>,
    ready: VecDeque<(ResponseHeader, KeyValue)>,
}

impl<K: Kv> Observer<K> {
    fn new(kv: K, prefix: Vec<u8>) -> Self {
        Self {
            kv,
            prefix,
            watch: None,
            header: ResponseHeader::default(),
            keys: BTreeMap::new(),
            created: HashMap::new(),
            reported: None,
            ready: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> Result<(ResponseHeader, KeyValue)> {
        loop {
            if let Some(change) = self.ready.pop_front() {
                return Ok(change);
            }
            let Some(watch) = &mut self.watch else {
                self.start().await?;
                continue;
            };
            let batch = watch
                .next()
                .await
                .ok_or_else(|| Error::WatchEnded("election observe".into()))??;
            let mut events = batch.events.into_iter().peekable();
            while let Some(event) = events.next() {
                let revision = mod_revision(&event);
                self.apply(event);
                if events.peek().is_none_or(|next| mod_revision(next) != revision) {
                    self.check(revision);
                }
            }
        }
    }

    async fn start(&mut self) -> Result<()> {
        let all = RangeRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            ..Default::default()
        };
        let all = self.kv.range(all).await?;
        self.header = all.header.unwrap_or_default();
        for kv in all.kvs {
            self.created.insert(kv.key.to_vec(), kv.create_revision);
            self.keys.insert(kv.create_revision, kv);
        }
        self.check(self.header.revision);
        let watch = WatchCreateRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            start_revision: self.header.revision + 1,
            ..Default::default()
        };
        self.watch = Some(self.kv.watch(watch).await?);
        Ok(())
    }

    fn apply(&mut self, event: Event) {
        let Some(kv) = event.kv else { return };
        if event.r#type == EventType::Delete as i32 {
            if let Some(created) = self.created.remove(&kv.key[..]) {
                self.keys.remove(&created);
            }
            return;
        }
        if let Some(before) = self.created.insert(kv.key.to_vec(), kv.create_revision) {
            self.keys.remove(&before);
        }
        self.keys.insert(kv.create_revision, kv);
    }

    /// Queues the leader as of `revision` if it is a change.
    fn check(&mut self, revision: i64) {
        let Some(leader) = self.keys.values().next() else {
            return;
        };
        let now = (leader.create_revision, leader.value.clone());
        if self.reported.as_ref() != Some(&now) {
            let header = ResponseHeader {
                revision,
                ..self.header
            };
            self.ready.push_back((header, leader.clone()));
            self.reported = Some(now);
        }
    }
}

fn mod_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

#[cfg(test)]
mod tests;
