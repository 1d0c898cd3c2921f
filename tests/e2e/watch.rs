//! Watch, end to end: `etcdctl watch` prints what it prints against etcd; the raw protocol
//! (ids, cancel, progress, compaction, history, filters, prev_kv, fragments) through our own
//! proto client; 100 watchers under concurrent writers checked against the writers' own record
//! of history; and slow consumers, which must cost bounded memory and still get every event.

mod etcdctl;
mod protocol;
mod slow;
mod stress;
mod support;
