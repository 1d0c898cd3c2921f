//! TLS for the client and peer listeners (rustls, on ring) and for this member's calls to its
//! peers: etcd's `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth` and their
//! `--peer-` twins.
//!
//! A TLS listener accepts TCP, runs each handshake in its own task (a slow or broken client
//! holds up nobody), and hands the server [`CoalescingStream`]s over the TLS session, so the
//! write coalescing and the `:authority` repair work the same behind TLS. With client
//! certificates required, each connection carries its certificate's common name
//! ([`TlsPeer`]): with auth on, a request without a token acts as that user, as in etcd.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::CoalescingStream;
use crate::error::Error;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 128;

/// The certificate, key and trust of one side (clients or peers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificates (PEM) trusted for the other side's certificates.
    pub trusted_ca: Option<PathBuf>,
    /// Whether the other side must present a certificate signed by `trusted_ca`.
    pub client_cert_auth: bool,
}

impl TlsFiles {
    /// The TLS set up by etcd's flags (`prefix` is `""` or `"peer-"`, for the messages);
    /// `None` without a certificate and key.
    pub fn from_flags(
        cert: &str,
        key: &str,
        trusted_ca: &str,
        client_cert_auth: bool,
        prefix: &str,
    ) -> Result<Option<TlsFiles>, Error> {
        match (cert.is_empty(), key.is_empty()) {
            (true, true) => {
                if client_cert_auth {
                    return Err(Error::Config(format!(
                        "--{prefix}client-cert-auth needs --{prefix}cert-file and --{prefix}key-file"
                    )));
                }
                return Ok(None);
            }
            (false, false) => {}
            _ => {
                return Err(Error::Config(format!(
                    "--{prefix}cert-file and --{prefix}key-file go together"
                )));
            }
        }
        if client_cert_auth && trusted_ca.is_empty() {
            return Err(Error::Config(format!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"
            )));
        }
        Ok(Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
            trusted_ca: (!trusted_ca.is_empty()).then(|| trusted_ca.into()),
            client_cert_auth,
        }))
    }

    /// The rustls server configuration (HTTP/2 and HTTP/1.1 offered by ALPN).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, Error> {
        let provider = Arc::new(ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let builder = match (&self.trusted_ca, self.client_cert_auth) {
            (Some(ca), true) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .build()
                    .map_err(|e| Error::Config(format!("TLS: {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&self.cert)?, private_key(&self.key)?)
            .map_err(|e| {
                Error::Config(format!(
                    "TLS: {} and {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The TLS this member's calls to its peers use: their certificates checked against
    /// `trusted_ca` (else the system's roots), this member's certificate presented.
    pub fn client_config(&self) -> Result<ClientTlsConfig, Error> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("TLS: cannot read {}: {e}", path.display())))
        };
        let mut config =
            ClientTlsConfig::new().identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        config = match &self.trusted_ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_enabled_roots(),
        };
        Ok(config)
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Config(format!("TLS: {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| Error::Config(format!("TLS: {}: {e}", path.display())))
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("TLS: {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Who is at the other end of a TLS connection: its address, and the common name of the
/// certificate it presented (only when certificates are required and checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The certificate's subject common name.
    pub common_name: Option<String>,
}

impl Connected for CoalescingStream<TlsStream<TcpStream>> {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        let (tcp, session) = self.inner.get_ref();
        let common_name = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf));
        TlsPeer {
            remote_addr: tcp.peer_addr().ok(),
            common_name,
        }
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// The TLS connections accepted on `listener`, each handshaken in its own task; failed
/// handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<CoalescingStream<TlsStream<TcpStream>>>> {
    let (accepted, stream) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // Once the server stops taking connections, stop accepting (and close the socket).
            let next = tokio::select! {
                next = listener.accept() => next,
                () = accepted.closed() => return,
            };
            let (tcp, addr) = match next {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a TLS connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(session)) => {
                        let _ = accepted.send(Ok(CoalescingStream::wrap(session))).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%addr, error = %err, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_must_come_in_working_sets() {
        assert_eq!(TlsFiles::from_flags("", "", "", false, "").unwrap(), None);
        for (cert, key, ca, auth) in [
            ("c", "", "", false),
            ("", "k", "", false),
            ("", "", "", true),
            ("c", "k", "", true),
        ] {
            let err = TlsFiles::from_flags(cert, key, ca, auth, "peer-").unwrap_err();
            assert!(err.to_string().contains("--peer-"), "{err}");
        }
        let files = TlsFiles::from_flags("c", "k", "ca", true, "").unwrap().unwrap();
        assert_eq!(files.trusted_ca, Some(PathBuf::from("ca")));
    }

    #[test]
    fn unreadable_files_are_named() {
        let files = TlsFiles::from_flags("/nonexistent/c.pem", "/nonexistent/k.pem", "", false, "")
            .unwrap()
            .unwrap();
        let err = files.server_config().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
