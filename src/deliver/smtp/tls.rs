/*!
TLS client settings for the relays: rustls with the *ring* provider (no C
toolchain beyond a C compiler, no cmake), TLS 1.2 and 1.3, and a
certificate chain checked against the system's trust store or against
`tls_ca_file`, with the relay's name (or IP address) checked against the
certificate.
*/
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// Largest CA file read (a full system bundle is about 200 KiB).
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// Trust anchors from a PEM file: every `CERTIFICATE` block in it.
fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| format!("tls_ca_file {shown}: {}", super::client::describe(&e)))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!("tls_ca_file {shown} is larger than {MAX_CA_FILE} bytes"));
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("tls_ca_file {shown}: unreadable PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("tls_ca_file {shown}: unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("tls_ca_file {shown} holds no PEM certificate"));
    }
    Ok(roots)
}

/// Trust anchors from the system store (`/etc/ssl/certs` on Debian, or
/// wherever `SSL_CERT_FILE` / `SSL_CERT_DIR` point). Certificates the store
/// holds but rustls cannot use are skipped, as other TLS clients do.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
        return Err(format!(
            "no trusted CA certificate found in the system store{why} \
             (fix: install the ca-certificates package, or set tls_ca_file)"
        ));
    }
    Ok(roots)
}

/// The client configuration: trust `ca_file` if given, else the system.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca_file {
        Some(p) => roots_from_file(p)?,
        None => system_roots()?,
    };
    // The provider is named rather than taken from the process default, so
    // another crate enabling a second provider cannot make this ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name to check the relay's certificate against: the configured host
/// (a DNS name, or an IP address checked against the certificate's IP
/// addresses), never the address it resolved to.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host} cannot be checked against a certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn server_names() {
        assert!(matches!(server_name("mx.example.org"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("2001:db8::1"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn ca_file_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        assert!(e.contains("missing.pem") && e.contains("No such file"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::File::create(&empty).unwrap().write_all(b"not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.contains("empty.pem holds no PEM certificate"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        assert!(client_config(Some(&junk)).unwrap_err().contains("junk.pem"));
    }
}
