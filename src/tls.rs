//! One rustls crypto provider for the whole process.
//!
//! kube, reqwest and oci-client all build rustls configurations. rustls refuses to guess when
//! more than one provider is compiled in, and panics at the first TLS client built. The crate
//! links only aws-lc-rs (see Cargo.toml) and installs it explicitly before any client exists,
//! so a dependency that later drags in `ring` cannot turn start-up into a panic.

/// Installs aws-lc-rs as the process-wide rustls provider. Safe to call any number of times.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one in between: equally fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Each `-----BEGIN CERTIFICATE-----` block of a PEM bundle as its own PEM: reqwest and
/// oci-client take one certificate per entry.
pub fn split_pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut blocks = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let end = start + end + END.len();
        blocks.push(format!("{}\n", &rest[start..end]).into_bytes());
        rest = &rest[end..];
    }
    blocks
}

/// Why a PEM bundle (a caBundle, a `ca.crt`) gives no certificate to trust.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("cannot be read ({0})")]
    Unreadable(String),
    #[error("holds no PEM certificate")]
    Empty,
}

/// The certificates of a PEM bundle, for reqwest; at least one.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, PemError> {
    let certificates = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|error| PemError::Unreadable(error.to_string()))?;
    if certificates.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_says_so() {
        assert_eq!(pem_certificates(b"junk").unwrap_err(), PemError::Empty);
        assert_eq!(pem_certificates(b"").unwrap_err(), PemError::Empty);
    }

    #[tokio::test]
    async fn kube_and_reqwest_clients_build_in_one_process() {
        install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(
            r#"
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: "t"}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
"#,
        )
        .unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).expect("kube client builds with the installed provider");
        reqwest::Client::builder()
            .build()
            .expect("reqwest client builds with the same provider");
    }
}
