//! Multi-member clusters: several `concord` processes bootstrapped together with
//! `--initial-cluster`, elections, replication through every member, leader failover and quorum
//! loss. Each test boots its own cluster on fresh ports.

mod basic;
pub mod harness;
