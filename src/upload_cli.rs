//! `image-catalog upload <cvi-name> <file>`: waits for the image's upload URL, streams the file
//! with a progress bar (bytes, speed, ETA), then waits for Ready or prints why it failed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kube::Api;

use crate::api::{ClusterVirtualImage, ImagePhase};
use crate::import::progress::{human_size, human_speed};

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// The ClusterVirtualImage (with `dataSource.type: Upload`).
    pub name: String,
    /// The image file to upload.
    pub file: PathBuf,
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Upload through the in-cluster URL instead of the external one.
    #[arg(long)]
    pub in_cluster: bool,
    /// A CA certificate (PEM) to trust for an HTTPS upload URL.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the upload URL, and then for the image to become Ready, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

pub async fn run(args: UploadArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::kube_client(args.kubeconfig.as_deref()).await?;
    let api: Api<ClusterVirtualImage> = Api::all(client);
    let timeout = Duration::from_secs(args.timeout_seconds);
    let url = wait_for_url(&api, &args.name, args.in_cluster, timeout).await?;

    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().await?.len();
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = progress_bar(size);
    let counted = bar.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counted.inc(chunk.len() as u64);
        }
    });
    let mut http = reqwest::Client::builder();
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        http = http.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("--ca-file is not a PEM certificate")?,
        );
    }
    let request = http
        .build()
        .context("building the HTTP client")?
        .put(&url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header(
            reqwest::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let started = Instant::now();
    let response = request.await;
    let sent = bar.position();
    bar.finish_and_clear();
    // Also where no bar is drawn (stderr not a terminal): what went, how fast.
    eprintln!("{}", summary_line(sent, size, started.elapsed()));
    // The URL carries the upload token: never print it.
    let response =
        response.map_err(|error| anyhow::anyhow!("the upload failed: {}", error.without_url()))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the upload was refused ({status}): {}", text.trim());
    }
    eprintln!("uploaded; waiting for {} to become Ready", args.name);
    wait_for_ready(&api, &args.name, timeout).await
}

async fn wait_for_url(
    api: &Api<ClusterVirtualImage>,
    name: &str,
    in_cluster: bool,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let image = api
            .get(name)
            .await
            .with_context(|| format!("reading ClusterVirtualImage {name}"))?;
        let status = image.status.unwrap_or_default();
        match status.phase {
            Some(ImagePhase::Ready) => {
                bail!("{name} is already Ready; create a new image to upload another file")
            }
            Some(ImagePhase::Failed) => bail!("{name} has Failed: {}", ready_message(&status)),
            _ => {}
        }
        let urls = status.image_upload_urls.unwrap_or_default();
        let url = if in_cluster {
            urls.in_cluster
        } else {
            urls.external
        };
        if let (Some(url), Some(ImagePhase::WaitForUserUpload)) = (url, status.phase) {
            return Ok(url);
        }
        if Instant::now() > deadline {
            bail!(
                "{name} published no upload URL within {}s; is its dataSource.type Upload, and does the controller run?",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_ready(
    api: &Api<ClusterVirtualImage>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = api.get(name).await?.status.unwrap_or_default();
        match status.phase {
            Some(ImagePhase::Ready) => {
                let url = status
                    .target
                    .and_then(|t| t.registry_url)
                    .unwrap_or_default();
                println!("{name} is Ready: {url}");
                return Ok(());
            }
            Some(ImagePhase::Failed) => bail!("{name} has Failed: {}", ready_message(&status)),
            _ if Instant::now() > deadline => {
                bail!("{name} did not become Ready within {}s", timeout.as_secs())
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn ready_message(status: &crate::api::ImageStatus) -> String {
    crate::import::status::condition(status, crate::api::status::condition::READY)
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

/// The bar cargo and virtctl users know; hidden by indicatif when stderr is no terminal.
fn progress_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    // The template is a constant: it parses, and a failure would only lose the styling.
    if let Ok(style) = ProgressStyle::with_template(
        "{binary_bytes} / {binary_total_bytes} [{wide_bar}] {binary_bytes_per_sec}  ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `uploaded 2Gi / 2Gi in 41s (50Mi/s)`.
pub fn summary_line(sent: u64, size: u64, elapsed: Duration) -> String {
    let speed = (sent as f64 / elapsed.as_secs_f64().max(0.001)) as u64;
    format!(
        "uploaded {} / {} in {:.0}s ({})",
        human_size(sent),
        human_size(size),
        elapsed.as_secs_f64(),
        human_speed(speed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_went_and_how_fast() {
        let line = summary_line(2 << 30, 2 << 30, Duration::from_secs(41));
        assert_eq!(line, "uploaded 2Gi / 2Gi in 41s (50Mi/s)");
        assert_eq!(
            summary_line(512 << 20, 2 << 30, Duration::from_secs(8)),
            "uploaded 512Mi / 2Gi in 8s (64Mi/s)"
        );
    }
}
