//! [`Registration`]: a registered instance kept registered by a background task.
//!
//! The task owns the instance's session (its lease and heartbeats). When the session reports
//! its lease lost (heartbeats failed for longer than the TTL: the process was paused, the
//! cluster was unreachable, it restarted without the lease) the task registers the instance
//! again on a new lease, with its current metadata and draining state, retrying with a capped
//! backoff until it succeeds. Metadata changes, draining and deregistration are commands to the
//! task, so they never race a re-registration.

use concord_proto::concord::registry::v1 as pb;
use concord_recipes::registry::{Endpoint, Instance};
use concord_recipes::session::Session;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::NewInstance;
use crate::client::Client;
use crate::endpoints::{Idempotence, registry};
use crate::error::{Error, Result};
use crate::options::ttl_secs;
use crate::owned::OwnedSession;

/// What a [`Registration`] is now.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationState {
    /// The instance as last registered (its lease and revision included).
    pub instance: Instance,
    /// Whether it is registered now: false from a lost lease until it is registered again.
    pub registered: bool,
    /// How many times it was registered: 1, plus one per re-registration after a lost lease.
    pub registrations: u64,
}

/// A registered instance, heartbeating in the background. See
/// [`Client::register`](crate::Client::register).
#[must_use = "dropping a Registration deregisters the instance"]
pub struct Registration {
    service: String,
    key: String,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<RegistrationState>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

/// What the task is asked to do.
enum Command {
    SetMetadata(Option<Value>, oneshot::Sender<Result<()>>),
    Drain(oneshot::Sender<Result<()>>),
    Deregister(oneshot::Sender<Result<()>>),
}

/// Registers `instance` and starts the task that keeps it registered.
pub(super) async fn start(client: Client, instance: NewInstance) -> Result<Registration> {
    let key = format!("{}{}/{}", super::SERVICES_PREFIX, instance.service, instance.id);
    let mut task = Keeper {
        client,
        instance,
        draining: false,
        session: None,
    };
    let registered = task.register().await?;
    let (state_tx, state) = watch::channel(RegistrationState {
        instance: registered,
        registered: true,
        registrations: 1,
    });
    let (commands, received) = mpsc::channel(8);
    let service = task.instance.service.clone();
    tokio::spawn(task.run(received, state_tx));
    Ok(Registration {
        service,
        key,
        commands,
        state,
    })
}

impl Registration {
    /// The instance's key, `services/<service>/<instance id>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The service the instance belongs to.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The instance as last registered.
    pub fn instance(&self) -> Instance {
        self.state.borrow().instance.clone()
    }

    /// The lease the registration is attached to now.
    pub fn lease(&self) -> i64 {
        self.state.borrow().instance.lease
    }

    /// Whether the instance is registered now (false from a lost lease until the background
    /// task registered it again).
    pub fn is_registered(&self) -> bool {
        self.state.borrow().registered
    }

    /// The registration's state now.
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// Waits for the state to change (lost, registered again, new metadata ...) and returns
    /// it; `None` once the registration ended.
    pub async fn changed(&mut self) -> Option<RegistrationState> {
        self.state.changed().await.ok()?;
        Some(self.state.borrow_and_update().clone())
    }

    /// Replaces the instance's metadata (a JSON object, or `None`); watchers see it UPDATED.
    pub async fn set_metadata(&self, metadata: Option<Value>) -> Result<()> {
        self.ask(|reply| Command::SetMetadata(metadata, reply)).await
    }

    /// Marks the instance draining: still registered, but pickers skip it. Re-registrations
    /// keep it draining.
    pub async fn drain(&self) -> Result<()> {
        self.ask(Command::Drain).await
    }

    /// Removes the instance at once and stops the heartbeats (revokes the lease).
    pub async fn deregister(self) -> Result<()> {
        self.ask(Command::Deregister).await
    }

    async fn ask(&self, command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let ended = || Error::InvalidArgument("the registration has ended".into());
        self.commands.send(command(reply)).await.map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }
}

/// The background task's state.
struct Keeper {
    client: Client,
    instance: NewInstance,
    draining: bool,
    session: Option<OwnedSession>,
}

impl Keeper {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, state: watch::Sender<RegistrationState>) {
        let mut failures = 0;
        loop {
            if let Some(session) = &self.session {
                let lost = session.lost();
                tokio::select! {
                    () = lost => {
                        tracing::warn!(key = %self.key(), "the registration's lease was lost; registering again");
                        self.session = None;
                        state.send_modify(|s| s.registered = false);
                    }
                    command = commands.recv() => {
                        if self.obey(command, &state).await {
                            return;
                        }
                    }
                }
                continue;
            }
            match self.register().await {
                Ok(instance) => {
                    failures = 0;
                    state.send_modify(|s| {
                        s.instance = instance;
                        s.registered = true;
                        s.registrations += 1;
                    });
                }
                Err(err) => {
                    tracing::warn!(key = %self.key(), error = %err, "registering again failed; retrying");
                    let pause = self.client.options().jittered_backoff(failures);
                    failures += 1;
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        command = commands.recv() => {
                            if self.obey(command, &state).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Carries out `command` (`None`: the handle was dropped); true when the task is done.
    async fn obey(&mut self, command: Option<Command>, state: &watch::Sender<RegistrationState>) -> bool {
        match command {
            None => {
                if let Err(err) = self.deregister().await {
                    tracing::debug!(key = %self.key(), error = %err, "deregistering a dropped registration");
                }
                true
            }
            Some(Command::Deregister(reply)) => {
                let _ = reply.send(self.deregister().await);
                true
            }
            Some(Command::SetMetadata(metadata, reply)) => {
                let previous = std::mem::replace(&mut self.instance.metadata, metadata);
                let answer = match self.reregister().await {
                    Ok(Some(instance)) => {
                        state.send_modify(|s| s.instance = instance);
                        Ok(())
                    }
                    Ok(None) => Ok(()), // not registered now: the next registration carries it
                    Err(err) => {
                        self.instance.metadata = previous;
                        Err(err)
                    }
                };
                let _ = reply.send(answer);
                false
            }
            Some(Command::Drain(reply)) => {
                self.draining = true;
                let answer = match self.session.is_some() {
                    true => self.drain().await.map(|()| {
                        state.send_modify(|s| s.instance.endpoint.draining = true);
                    }),
                    false => Ok(()),
                };
                let _ = reply.send(answer);
                false
            }
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.instance.service, self.instance.id)
    }

    /// Registers the instance on a new session (lease); that session is then the task's.
    async fn register(&mut self) -> Result<Instance> {
        let session = Session::new(self.client.clone(), ttl_secs(self.instance.ttl)).await?;
        let session = OwnedSession::new(session);
        let lease = session.lease();
        // A failure drops the session, which revokes its lease.
        let revision = self.call_register(lease).await?;
        if self.draining {
            self.call_drain().await?;
        }
        self.session = Some(session);
        Ok(self.as_registered(lease, revision))
    }

    /// Registers the instance again on its current lease (new metadata); `None` when it has
    /// none now.
    async fn reregister(&mut self) -> Result<Option<Instance>> {
        let Some(lease) = self.session.as_ref().map(OwnedSession::lease) else {
            return Ok(None);
        };
        let revision = self.call_register(lease).await?;
        if self.draining {
            self.call_drain().await?;
        }
        Ok(Some(self.as_registered(lease, revision)))
    }

    async fn drain(&mut self) -> Result<()> {
        self.call_drain().await
    }

    /// Deletes the instance's key, then revokes the lease.
    async fn deregister(&mut self) -> Result<()> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        let request = pb::DeregisterRequest {
            service: self.instance.service.clone(),
            id: self.instance.id.clone(),
            ..Default::default()
        };
        let client = self.client.clone();
        session
            .end(async move {
                client
                    .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                        registry(channel).deregister(request).await
                    })
                    .await?;
                Ok(())
            })
            .await
    }

    fn as_registered(&self, lease: i64, revision: i64) -> Instance {
        Instance {
            id: self.instance.id.clone(),
            endpoint: Endpoint {
                addr: self.instance.addr.clone(),
                metadata: self.instance.metadata.clone(),
                draining: self.draining,
            },
            lease,
            revision,
        }
    }

    /// Registry.Register on `lease` (idempotent: the same ID is replaced).
    async fn call_register(&self, lease: i64) -> Result<i64> {
        let request = pb::RegisterRequest {
            service: self.instance.service.clone(),
            id: self.instance.id.clone(),
            addr: self.instance.addr.clone(),
            metadata: self
                .instance
                .metadata
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            lease,
            ..Default::default()
        };
        let response = self
            .client
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                registry(channel).register(request).await
            })
            .await?;
        Ok(response.header.map_or(0, |h| h.revision))
    }

    async fn call_drain(&self) -> Result<()> {
        let request = pb::DrainRequest {
            service: self.instance.service.clone(),
            id: self.instance.id.clone(),
            ..Default::default()
        };
        self.client
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                registry(channel).drain(request).await
            })
            .await?;
        Ok(())
    }
}
