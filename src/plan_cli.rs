//! `image-catalog plan`: what a sync of a catalog would do to the cluster, without doing it.
//! The same reading, validation, planning and server-side dry run as the daemon.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kube::Api;
use kube::api::ListParams;

use crate::api::ClusterVirtualImage;
use crate::api::catalog::ImageCatalog;
use crate::k8s::secrets::SecretReader;
use crate::sync::controller::dry_run;
use crate::sync::plan::{self, Change};
use crate::sync::source;
use crate::sync::status::{Outcome, short};

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The ImageCatalog whose sync to plan.
    #[arg(long)]
    pub catalog: String,
    /// Plan these local catalog files (a folder or a file) instead of the catalog's Git
    /// revision: see what a commit would do before pushing it.
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Path of a kubeconfig; without it, the usual places.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The daemon's namespace, where the catalog's Git Secret lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "image-catalog")]
    pub namespace: String,
    /// Where the Git remote may be: give the daemon's flags.
    #[command(flatten)]
    pub egress: crate::cli_args::EgressArgs,
}

/// Prints the plan; returns false when the sync would refuse the commit.
pub async fn run(args: PlanArgs) -> anyhow::Result<bool> {
    let client = crate::k8s::client::kube_client(args.kubeconfig.as_deref()).await?;
    let catalogs: Api<ImageCatalog> = Api::all(client.clone());
    let catalog = catalogs
        .get_opt(&args.catalog)
        .await
        .with_context(|| format!("reading ImageCatalog {}", args.catalog))?
        .with_context(|| format!("there is no ImageCatalog {}", args.catalog))?;
    let (revision, files) = match &args.path {
        Some(path) => {
            let files = crate::catalog::read_local(path)
                .with_context(|| format!("reading catalog files under {}", path.display()))?;
            (format!("local files under {}", path.display()), Ok(files))
        }
        None => {
            let cache = tempfile::tempdir().context("creating a folder for the Git fetch")?;
            let fetched = async {
                let secrets = SecretReader::new(client.clone(), args.namespace.clone(), []);
                let credentials = source::credentials(&secrets, &catalog).await?;
                source::fetch(
                    cache.path(),
                    &catalog,
                    credentials,
                    None,
                    source::applied_revision(&catalog),
                    &args.egress.policy(),
                )
                .await
            }
            .await;
            match fetched {
                Ok(fetched) => (
                    format!(
                        "commit {} ({} of {})",
                        short(&fetched.commit),
                        catalog.spec.git.reference.describe(),
                        source::redact(&catalog.spec.git.url)
                    ),
                    fetched.files.unwrap_or(Ok(Vec::new())),
                ),
                Err(Outcome::FetchFailed(error)) => bail!("{}: {error}", error.reason()),
                Err(_) => bail!("the Git fetch failed"),
            }
        }
    };
    println!("Plan of ImageCatalog {} at {revision}:", args.catalog);
    let loaded = files
        .map_err(|problem| vec![problem])
        .and_then(|files| source::load(&catalog.spec.git.path, &files));
    let images = match loaded {
        Ok(images) => images,
        Err(problems) => {
            for problem in &problems {
                println!("  refuse     {problem}");
            }
            println!("The commit would be refused: nothing would be applied.");
            return Ok(false);
        }
    };
    let existing = Api::<ClusterVirtualImage>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing ClusterVirtualImages")?;
    let existing: Vec<&ClusterVirtualImage> = existing.items.iter().collect();
    let desired = plan::render(&args.catalog, &catalog.spec, &images);
    let planned = plan::plan(
        &args.catalog,
        desired,
        &existing,
        catalog.spec.prune,
        catalog.spec.ready_image_policy,
    );
    let mut problems = planned.problems.clone();
    if problems.is_empty() {
        problems = dry_run(
            &client,
            16,
            &planned,
            "0000000000000000000000000000000000000000",
        )
        .await;
    }
    for image in &planned.images {
        if image.change != Change::Unchanged {
            println!(
                "  {:<10} {:<40} {}",
                image.change.as_str(),
                image.desired.name,
                image.desired.location
            );
        }
    }
    for gone in &planned.prune {
        println!("  {:<10} {}", "prune", gone.name);
    }
    for problem in &problems {
        println!("  {:<10} {problem}", "refuse");
    }
    if !problems.is_empty() {
        println!("The commit would be refused: nothing would be applied.");
        return Ok(false);
    }
    println!(
        "{} to create, {} to update, {} to recreate, {} to prune, {} unchanged.",
        planned.count(Change::Create),
        planned.count(Change::Update),
        planned.count(Change::Recreate),
        planned.prune.len(),
        planned.count(Change::Unchanged)
    );
    Ok(true)
}
