use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use image_catalog::api::crds;

/// Syncs a Git catalog of VM images into ClusterVirtualImages and imports them into DVCR.
#[derive(Parser)]
#[command(name = "image-catalog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: reconcile ClusterVirtualImages and import them into DVCR.
    Controller(Box<image_catalog::daemon::ControllerArgs>),
    /// Upload a file to a ClusterVirtualImage of type Upload, with a progress line.
    Upload(image_catalog::upload_cli::UploadArgs),
    /// Print every CustomResourceDefinition the project ships, as YAML.
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    image_catalog::tls::install_crypto_provider();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("image-catalog: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Controller(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")?
            .block_on(image_catalog::daemon::run(*args)),
        Command::Upload(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")?
            .block_on(image_catalog::upload_cli::run(args)),
        Command::Crds { write: None } => {
            print!("{}", crds::all_yaml()?);
            Ok(())
        }
        Command::Crds { write: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in crds::all() {
                let path = dir.join(crds::file_name(&crd));
                std::fs::write(&path, crds::to_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
