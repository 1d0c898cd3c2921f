//! Multi-member clusters: several `concord` processes bootstrapped together with
//! `--initial-cluster`, elections, replication through every member, leader failover and quorum
//! loss; members added (as learners, then promoted) and removed while the cluster runs, also
//! under write load, and a member catching up through a snapshot. Each test boots its own
//! cluster on fresh ports.

mod basic;
mod checks;
pub mod harness;
mod isolation;
mod lease;
mod linearizable;
mod membership;
mod reconfigure;
