//! `image-catalog verify <cvi>`: one verification of a stored image, on demand, printed and
//! recorded as the image's `Verified` condition (as a scheduled run would).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kube::Api;

use crate::api::ClusterVirtualImage;
use crate::api::status::ImagePhase;
use crate::cli_args::{DvcrArgs, dvcr_config};
use crate::dvcr::Dvcr;
use crate::k8s::client::kube_client;
use crate::verify;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The ClusterVirtualImage to verify.
    pub name: String,
    /// Path of a kubeconfig; without it, the usual places.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The daemon's namespace (for --dvcr-auth-secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "image-catalog")]
    pub namespace: String,
    #[command(flatten)]
    pub dvcr: DvcrArgs,
    /// Where the upstream check may connect: give the daemon's flags.
    #[command(flatten)]
    pub egress: crate::cli_args::EgressArgs,
    /// Also fetch the HTTP source again and compare it with what was stored (the default
    /// follows the image's imagecatalog.dev/verify-upstream annotation).
    #[arg(long)]
    pub upstream: bool,
    /// Print the result only; leave the image's Verified condition as it is.
    #[arg(long)]
    pub dry_run: bool,
}

/// Returns whether the image verified.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let images: Api<ClusterVirtualImage> = Api::all(client.clone());
    let cvi = images
        .get_opt(&args.name)
        .await
        .with_context(|| format!("reading ClusterVirtualImage {}", args.name))?
        .with_context(|| format!("there is no ClusterVirtualImage {}", args.name))?;
    let phase = cvi.status.as_ref().and_then(|status| status.phase);
    if !matches!(phase, Some(ImagePhase::Ready | ImagePhase::ImageLost)) {
        bail!(
            "ClusterVirtualImage {} is {}: only imported images (Ready or ImageLost) have stored bytes to verify",
            args.name,
            phase.map_or("without a phase".to_string(), |p| p.to_string())
        );
    }
    let dvcr = Dvcr::new(dvcr_config(&args.dvcr, &args.namespace, &client).await?)
        .context("configuring DVCR access")?;
    let upstream = args.upstream || verify::wants_upstream_check(&cvi);
    let verdict = verify::verify(&dvcr, &cvi, upstream, &args.egress.policy()).await;
    println!("{}: {}: {}", args.name, verdict.reason(), verdict.message());
    if !args.dry_run {
        verify::record(&client, &cvi, &verdict)
            .await
            .with_context(|| format!("recording the Verified condition of {}", args.name))?;
        if !verdict.is_verified() {
            // Like a scheduled run: every failure is an Event too.
            verify::scheduler::publish(
                &verify::events(&client),
                &cvi,
                kube::runtime::events::EventType::Warning,
                verdict.reason(),
                verdict.message(),
            )
            .await;
        }
    }
    Ok(verdict.is_verified())
}
