//! TLS end to end, with certificates made for each test (rcgen): clients over `https://`
//! (etcdctl, the `etcd-client` crate, `concord-client`, curl), client certificates (required,
//! and naming the user while auth is on), and a cluster whose members talk over TLS.

pub mod clients;
mod cluster;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files of a CA and of certificates it signed, in a directory.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA (`ca.pem`) in `dir`, a server certificate for 127.0.0.1 and localhost
    /// (`server.pem`/`server-key.pem`), client certificates with the common names `alice` and
    /// `root`, and a certificate from another CA (`stranger.pem`) that nothing trusts.
    pub fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        let ca = new_ca("concord test CA");
        std::fs::write(pki.path("ca.pem"), ca.pem()).unwrap();
        pki.leaf(&ca, "server", &["127.0.0.1", "localhost"]);
        pki.leaf(&ca, "alice", &[]);
        pki.leaf(&ca, "root", &[]);
        let other = new_ca("somebody else's CA");
        pki.leaf(&other, "stranger", &[]);
        pki
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn leaf(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str, hosts: &[&str]) {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }

    /// The server's flags for an `https://` listener (add `--client-cert-auth` to require
    /// client certificates).
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.path("server.pem")),
            format!("--key-file={}", self.path("server-key.pem")),
            format!("--trusted-ca-file={}", self.path("ca.pem")),
        ]
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}
