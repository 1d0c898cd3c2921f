//! Checkers for recorded histories, shared by the tests that record them: a register's
//! linearizability ([`register`]) and etcd's watch guarantees ([`watch`]).

pub mod register;
pub mod watch;
