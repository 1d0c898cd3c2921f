//! [`Discovery`]: an always-current view of a service's instances, with pickers.
//!
//! A background task follows the service with a [`ServiceWatch`] and publishes each
//! membership; the pickers read the latest one without waiting. Draining instances are never
//! picked. The weighted picker reads each instance's `weight` from its metadata (a
//! non-negative integer; 1 when absent; 0: never picked) and hands out picks in proportion,
//! deterministically (weighted round robin), so a small sample already follows the weights.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use concord_recipes::registry::Instance;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::ServiceWatch;
use crate::error::{Error, Result};

/// What the background task publishes: the instances, or the error that ended the watch.
type View = std::result::Result<Arc<BTreeMap<String, Instance>>, Arc<Error>>;

/// An always-current view of a service: see [`Client::discover`](crate::Client::discover).
#[must_use = "dropping a Discovery stops keeping it current"]
pub struct Discovery {
    view: watch::Receiver<View>,
    /// Whose turn it is, for the pickers.
    next: AtomicUsize,
    task: AbortHandle,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("instances", &self.instances().len())
            .finish()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    /// Starts following `watch`; returns once the first membership is in.
    pub(super) async fn start(mut watch: ServiceWatch) -> Result<Self> {
        let first = match watch.next().await {
            Some(first) => first?,
            None => return Err(Error::InvalidArgument("the service watch ended".into())),
        };
        let (publish, view) = watch::channel(Ok(first.instances));
        let task = tokio::spawn(async move {
            while let Some(membership) = watch.next().await {
                match membership {
                    Ok(membership) => {
                        if publish.send(Ok(membership.instances)).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = publish.send(Err(Arc::new(err)));
                        return;
                    }
                }
            }
        });
        Ok(Self {
            view,
            next: AtomicUsize::new(0),
            task: task.abort_handle(),
        })
    }

    /// Every instance now, by ID, draining ones included (empty after the watch ended with an
    /// error: see [`error`](Self::error)).
    pub fn instances(&self) -> Arc<BTreeMap<String, Instance>> {
        self.view.borrow().as_ref().cloned().unwrap_or_default()
    }

    /// The error that ended the view's watch, if one did (an error retrying cannot fix; an
    /// outage only delays updates).
    pub fn error(&self) -> Option<Arc<Error>> {
        self.view.borrow().as_ref().err().cloned()
    }

    /// Waits until the instances change.
    pub async fn changed(&mut self) -> Result<()> {
        self.view
            .changed()
            .await
            .map_err(|_| Error::InvalidArgument("the service watch ended".into()))
    }

    /// The next instance that is not draining, round robin; `None` when there is none.
    pub fn pick(&self) -> Option<Instance> {
        let instances = self.instances();
        let ready: Vec<&Instance> = instances.values().filter(|i| !i.endpoint.draining).collect();
        if ready.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(ready[turn % ready.len()].clone())
    }

    /// An instance that is not draining, each picked in proportion to its `weight` metadata;
    /// `None` when no instance has a positive weight.
    pub fn pick_weighted(&self) -> Option<Instance> {
        let instances = self.instances();
        let weighted: Vec<(&Instance, u64)> = instances
            .values()
            .filter(|i| !i.endpoint.draining)
            .map(|i| (i, weight(i)))
            .filter(|(_, w)| *w > 0)
            .collect();
        let total: u64 = weighted.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut slot = self.next.fetch_add(1, Ordering::Relaxed) as u64 % total;
        for (instance, weight) in weighted {
            if slot < weight {
                return Some(instance.clone());
            }
            slot -= weight;
        }
        None
    }
}

/// An instance's `weight` metadata: 1 when absent or not a non-negative integer.
pub fn weight(instance: &Instance) -> u64 {
    instance
        .endpoint
        .metadata
        .as_ref()
        .and_then(|m| m.get("weight"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use concord_recipes::registry::endpoint;
    use serde_json::json;

    use super::*;

    fn instance(id: &str, metadata: Option<serde_json::Value>, draining: bool) -> (String, Instance) {
        let mut endpoint = endpoint(format!("{id}:80"), metadata);
        endpoint.draining = draining;
        let instance = Instance {
            id: id.to_string(),
            endpoint,
            lease: 0,
            revision: 1,
        };
        (id.to_string(), instance)
    }

    fn view(instances: Vec<(String, Instance)>) -> Discovery {
        let (publish, view) = watch::channel(Ok(Arc::new(instances.into_iter().collect())));
        std::mem::forget(publish);
        let task = tokio::spawn(async {});
        Discovery {
            view,
            next: AtomicUsize::new(0),
            task: task.abort_handle(),
        }
    }

    #[tokio::test]
    async fn round_robin_skips_draining_instances() {
        let discovery = view(vec![
            instance("a", None, false),
            instance("b", None, true),
            instance("c", None, false),
        ]);
        let picked: Vec<String> = (0..4).map(|_| discovery.pick().unwrap().id).collect();
        assert_eq!(picked, ["a", "c", "a", "c"]);
        assert!(view(vec![instance("b", None, true)]).pick().is_none());
    }

    #[tokio::test]
    async fn weighted_picks_follow_the_weights() {
        let discovery = view(vec![
            instance("heavy", Some(json!({"weight": 3})), false),
            instance("light", None, false),
            instance("off", Some(json!({"weight": 0})), false),
            instance("drained", Some(json!({"weight": 10})), true),
        ]);
        let mut counts = BTreeMap::new();
        for _ in 0..400 {
            *counts.entry(discovery.pick_weighted().unwrap().id).or_insert(0) += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("heavy".to_string(), 300), ("light".to_string(), 100)])
        );
        assert!(
            view(vec![instance("off", Some(json!({"weight": 0})), false)])
                .pick_weighted()
                .is_none()
        );
    }
}
