//! Checkers for recorded histories, shared by the tests that record them: a register's
//! linearizability ([`register`]), etcd's watch guarantees ([`watch`]), lease safety
//! ([`lease`]) and lock and election safety ([`ownership`]).

pub mod lease;
pub mod ownership;
pub mod register;
pub mod watch;
