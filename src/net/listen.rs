//! Binding the client and peer listeners, as etcd (Go's `net.Listen`) does: `SO_REUSEADDR`,
//! and the system's own accept backlog (`net.core.somaxconn`, often 4096) instead of the 128
//! std and mio use, so a storm of connections waits in the queue rather than overflowing it
//! (each overflow costs the client a one-second SYN retry).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The backlog when the system's cannot be read (Linux's default somaxconn since 5.4).
const FALLBACK_BACKLOG: u32 = 4096;

/// The accept backlog the system allows (`/proc/sys/net/core/somaxconn`).
fn backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(FALLBACK_BACKLOG)
}

/// Binds `addr` and listens on it; the error names the address.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog())
    };
    listen().map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_taken_address_is_named_in_the_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn the_backlog_is_the_systems() {
        assert!(backlog() >= 128);
    }
}
