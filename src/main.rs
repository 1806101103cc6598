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
    /// Show what a sync of a catalog would create, update, recreate, prune or refuse,
    /// against the cluster, without changing anything.
    Plan(image_catalog::plan_cli::PlanArgs),
    /// Verify one stored image now: its manifest, layer digest and disk checksums in DVCR.
    /// Prints the result, records the image's Verified condition, exits 1 unless verified.
    Verify(image_catalog::verify_cli::VerifyArgs),
    /// Check disk image files as an import would, without a cluster: format, compression,
    /// virtual size and sha256, or the reason the import would refuse the file (exit status
    /// 1).
    Inspect(image_catalog::inspect_cli::InspectArgs),
    /// Print the JSON Schema of catalog files (for editors), generated from the code.
    Schema {
        /// Write it to this file instead of printing it.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Check catalog files without a cluster: exit status 1 and `file:line:column: message`
    /// for each problem. For CI jobs and pre-commit hooks.
    Validate {
        /// A catalog folder (searched recursively for *.yaml and *.yml) or one file.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    image_catalog::tls::install_crypto_provider();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("image-catalog: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Schema { write } => {
            let text = image_catalog::catalog::document::json_schema_text();
            match write {
                None => print!("{text}"),
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { path } => validate(&path),
        Command::Inspect(args) => Ok(if image_catalog::inspect_cli::run(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Verify(args) => {
            let verified = tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(image_catalog::verify_cli::run(args))?;
            Ok(if verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plan(args) => {
            let clean = tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(image_catalog::plan_cli::run(args))?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        other => run_other(other).map(|()| ExitCode::SUCCESS),
    }
}

fn validate(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let files = image_catalog::catalog::read_local(path)
        .with_context(|| format!("reading catalog files under {}", path.display()))?;
    if files.is_empty() {
        anyhow::bail!("no *.yaml or *.yml files under {}", path.display());
    }
    match image_catalog::catalog::load(&files) {
        Ok(images) => {
            println!(
                "{}: {} images in {} files, no problems",
                path.display(),
                images.len(),
                files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            eprintln!(
                "{} {}",
                problems.len(),
                if problems.len() == 1 {
                    "problem"
                } else {
                    "problems"
                }
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_other(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Controller(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let result = runtime.block_on(image_catalog::daemon::run(*args));
            // Exit now: blocking work still running (hashing, Git) must not keep a replica
            // that lost or released its lease alive, let alone writing.
            runtime.shutdown_background();
            result
        }
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
        Command::Schema { .. }
        | Command::Validate { .. }
        | Command::Plan(_)
        | Command::Verify(_)
        | Command::Inspect(_) => Ok(()),
    }
}
