//! The Kubernetes client every command builds: from `--kubeconfig`, else in-cluster or
//! `KUBECONFIG` as kubectl finds it.

use anyhow::Context as _;
use kube::Client;

/// A client for `kubeconfig`, or the inferred configuration.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    crate::tls::install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the Kubernetes configuration")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}
