//! Membership changes of a test cluster through `etcdctl`: members announced, started,
//! added, removed, and brought back as new members.

use serde_json::Value;

use super::{Added, Cluster, Member, free_ports};

impl Cluster {
    /// Member `i`'s ID, as `etcdctl member list` (through another live member) shows it for
    /// its peer URL. Works whether `i` runs or not, as long as it is a member.
    pub fn member_id(&self, i: usize) -> u64 {
        let via = self.via(&[i]);
        let listed = self.ctl_on(via, &["member", "list", "-w", "json"]);
        let json: Value = serde_json::from_str(listed.trim())
            .unwrap_or_else(|e| panic!("member list is not JSON ({e}): {listed}"));
        json["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["peerURLs"]
                    .as_array()
                    .is_some_and(|urls| urls.iter().any(|u| u == self.peer_url(i)))
            })
            .and_then(|m| m["ID"].as_u64())
            .unwrap_or_else(|| {
                panic!(
                    "{} ({}) is not in the member list of {}: {listed}",
                    self.name(i),
                    self.peer_url(i),
                    self.name(via)
                )
            })
    }

    /// Reserves ports for a new member `m{len}` and runs `etcdctl member add` (with
    /// `--learner` if `learner`) through a live member, without starting it; returns its index
    /// and what etcdctl answered. Start it with [`Cluster::start_member`].
    pub fn announce_member(&mut self, learner: bool) -> (usize, Added) {
        let i = self.members.len();
        let ports = free_ports(2);
        let name = format!("m{i}");
        let peer_url = format!("http://127.0.0.1:{}", ports[1]);
        let added = self.member_add(self.via(&[]), &name, &peer_url, learner);
        self.members.push(Member {
            name,
            client_url: format!("http://127.0.0.1:{}", ports[0]),
            peer_url,
            server: None,
            up: false,
            removed: false,
        });
        (i, added)
    }

    /// Runs `etcdctl member add NAME --peer-urls=PEER_URL [--learner] -w json` through member
    /// `via`: the new member's ID and the `--initial-cluster` it is to start with.
    fn member_add(&self, via: usize, name: &str, peer_url: &str, learner: bool) -> Added {
        let peer_flag = format!("--peer-urls={peer_url}");
        let mut args = vec!["member", "add", name, peer_flag.as_str()];
        if learner {
            args.push("--learner");
        }
        args.extend(["-w", "json"]);
        let out = self.ctl_on(via, &args);
        let json: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("member add printed no JSON ({e}): {out}"));
        let id = json["member"]["ID"]
            .as_u64()
            .unwrap_or_else(|| panic!("member add names no member ID: {out}"));
        Added {
            id,
            initial_cluster: initial_cluster_after_add(&json, id, name),
        }
    }

    /// Starts announced member `i` for the first time, with `--initial-cluster-state existing`
    /// and `initial_cluster` (see [`Added`]); returns once it listens for clients (it may not
    /// have received the log yet).
    pub fn start_member(&mut self, i: usize, initial_cluster: &str) {
        assert!(
            self.members[i].server.is_none(),
            "{} was started before",
            self.members[i].name
        );
        let spawned = self.spawn(i, initial_cluster, "existing");
        self.listening(i, spawned);
    }

    /// [`Cluster::announce_member`] then [`Cluster::start_member`]: a new member (a learner if
    /// `learner`) that joins the running cluster; returns its index.
    #[allow(
        dead_code,
        reason = "harness API; the membership tests check the unstarted member in between"
    )]
    pub fn add_member(&mut self, learner: bool) -> usize {
        let (i, added) = self.announce_member(learner);
        self.start_member(i, &added.initial_cluster);
        i
    }

    /// Runs `etcdctl member remove` for member `i` through another live member and from then
    /// on leaves `i` out of [`Cluster::live`] and [`Cluster::endpoints`]. Its process is left
    /// alone: it may keep running or exit by itself; dropping the cluster kills it.
    pub fn remove_member(&mut self, i: usize) {
        let id = format!("{:x}", self.member_id(i));
        let via = self.via(&[i]);
        let out = self.member(via).etcdctl(&["member", "remove", &id]);
        assert!(
            out.status.success(),
            "member remove {id} ({}) through {} failed: {}\n{}",
            self.name(i),
            self.name(via),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        self.members[i].removed = true;
    }

    /// Brings removed member `i` back as a new member with the same name and URLs, as an
    /// operator replacing a failed machine would: kills its old process if it still runs,
    /// empties its data directory, runs `etcdctl member add` with its peer URL, and starts it
    /// with `--initial-cluster-state existing`. Returns once it listens for clients.
    pub fn rejoin(&mut self, i: usize) {
        assert!(self.members[i].removed, "{} was not removed", self.name(i));
        if let Some(mut old) = self.members[i].server.take() {
            old.kill9();
        }
        self.members[i].up = false;
        let data = self.dir.join(&self.members[i].name);
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("empty the removed member's data directory");
        }
        let member = &self.members[i];
        let added = self.member_add(self.via(&[i]), &member.name, &member.peer_url, false);
        self.members[i].removed = false;
        let spawned = self.spawn(i, &added.initial_cluster, "existing");
        self.listening(i, spawned);
    }
}

/// The `--initial-cluster` for the member `id` that `etcdctl member add -w json` answered
/// `json` about, as etcdctl builds `ETCD_INITIAL_CLUSTER`: every peer URL of every member
/// listed, named by the member's name (the new one's being `name`, which it does not know yet).
fn initial_cluster_after_add(json: &Value, id: u64, name: &str) -> String {
    let mut initial_cluster = Vec::new();
    for member in json["members"].as_array().into_iter().flatten() {
        let member_name = if member["ID"].as_u64() == Some(id) {
            name
        } else {
            member["name"].as_str().unwrap_or("")
        };
        for url in member["peerURLs"].as_array().into_iter().flatten() {
            initial_cluster.push(format!("{member_name}={}", url.as_str().unwrap_or("")));
        }
    }
    initial_cluster.join(",")
}
