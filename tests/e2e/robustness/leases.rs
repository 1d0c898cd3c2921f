//! The lease load: each task grants a short lease, attaches a key to it, keeps it alive a few
//! times, then revokes it or lets it expire while reading the key until it is gone; what it saw
//! is judged by [`crate::checkers::lease`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};

use super::workload::{BACKOFF, PREFIX, Recorder, bounded, task_rng};
use crate::checkers::lease::{Life, Read, Renewed};

/// How often the key is read while the lease runs out.
const READ_EVERY: Duration = Duration::from_millis(150);
/// How long after the lease's deadline the reads go on if the key is still there.
const READ_PAST_DEADLINE: Duration = Duration::from_secs(12);

/// Lease task `id`, through `clients[member]` (moving to another member after a failure).
pub async fn lease_task(
    id: usize,
    mut clients: Vec<Client>,
    mut member: usize,
    seed: u64,
    rec: Arc<Recorder>,
) {
    let mut rng = task_rng(seed, 101, id);
    let mut round = 0;
    while !rec.stop.load(Ordering::Relaxed) {
        round += 1;
        // The minimum TTL of the test clusters is 1 s; 2-3 s leaves room for keepalives.
        let ttl = 2 + rng.below(2) as i64;
        let sent = Instant::now();
        let Some(granted) = bounded(clients[member].lease_grant(ttl, None)).await else {
            member = rng.below(clients.len());
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let key = format!("{PREFIX}lease/{id}-{round}");
        let mut life = Life {
            lease: granted.id(),
            key: key.clone(),
            put_acked: None,
            renewals: vec![Renewed {
                sent,
                ttl: granted.ttl(),
                answered: Instant::now(),
            }],
            last_attempt_end: Instant::now(),
            revoke_sent: None,
            revoke_acked: None,
            reads: Vec::new(),
        };
        let value = format!("L{id}-{round}");
        let with_lease = PutOptions::new().with_lease(life.lease);
        let put = bounded(clients[member].put(key.as_str(), value.as_str(), Some(with_lease))).await;
        if put.is_some() {
            life.put_acked = Some(Instant::now());
            rec.ok.fetch_add(1, Ordering::Relaxed);
            rec.ack(&[key.as_str()], &value);
        }
        // A few keepalives, each a third of the TTL after the last.
        let keepalives = rng.below(4);
        for _ in 0..keepalives {
            tokio::time::sleep(Duration::from_millis(ttl as u64 * 1000 / 3)).await;
            let sent = Instant::now();
            let answer = keep_alive_once(&mut clients[member], life.lease).await;
            life.last_attempt_end = Instant::now();
            match answer {
                Some(ttl) => life.renewals.push(Renewed {
                    sent,
                    ttl,
                    answered: life.last_attempt_end,
                }),
                None => member = rng.below(clients.len()),
            }
        }
        // Revoked (one in four), or left to expire.
        if rng.below(4) == 0 {
            life.revoke_sent = Some(Instant::now());
            if bounded(clients[member].lease_revoke(life.lease)).await.is_some() {
                life.revoke_acked = Some(Instant::now());
            }
        }
        let until = life.last_attempt_end + Duration::from_secs(ttl as u64) + READ_PAST_DEADLINE;
        while Instant::now() < until {
            let call = Instant::now();
            match bounded(clients[member].get(key.as_str(), None)).await {
                Some(answer) => {
                    let present = !answer.kvs().is_empty();
                    life.reads.push(Read {
                        call,
                        ret: Instant::now(),
                        present,
                    });
                    if !present && (life.put_acked.is_some() || life.reads.len() > 1) {
                        break;
                    }
                    tokio::time::sleep(READ_EVERY).await;
                }
                None => {
                    member = rng.below(clients.len());
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
        rec.leases.lock().unwrap().push(life);
    }
}

/// One keepalive of `lease` on a fresh stream: the TTL answered (0: the lease is gone), or
/// `None` without an answer in time.
async fn keep_alive_once(client: &mut Client, lease: i64) -> Option<i64> {
    let (mut keeper, mut stream) = bounded(client.lease_keep_alive(lease)).await?;
    bounded(keeper.keep_alive()).await?;
    bounded(stream.message())
        .await
        .flatten()
        .map(|answer| answer.ttl())
}
