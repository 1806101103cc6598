//! The daemon's own pod: Events on it, the leader label, readiness by the API server's reach.

use super::*;

/// A Warning Event on the daemon's own pod, where `kubectl describe pod` shows it. Outside a
/// pod (no POD_NAME) there is only the log.
pub(super) async fn announce_on_own_pod(
    client: &Client,
    args: &ControllerArgs,
    reason: &str,
    note: &str,
) {
    use kube::Resource as _;
    let Some(pod_name) = args.pod_name.as_deref() else {
        return;
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), &args.namespace);
    let pod = match pods.get(pod_name).await {
        Ok(pod) => pod,
        Err(error) => {
            tracing::debug!(%error, "reading the daemon's own pod for an Event failed");
            return;
        }
    };
    EventPublisher::new(client.clone(), "image-catalog")
        .publish(
            &pod.object_ref(&()),
            EventType::Warning,
            reason,
            "Configure",
            note,
        )
        .await;
}

/// Labels this pod as the leader's (and takes the label from any other), retrying until it is
/// done: the upload and webhook Services route by that label.
pub(super) fn spawn_pod_labelling(
    client: Client,
    namespace: String,
    pod: Option<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(pod) = pod else {
            tracing::debug!("POD_NAME is not set: not in a pod, so no pod is labelled leader");
            return;
        };
        let mut delay = Duration::from_millis(500);
        loop {
            match crate::k8s::leader_pod::mark(&client, &namespace, &pod).await {
                Ok(Marked::Pod { unmarked }) => {
                    tracing::info!(
                        ?unmarked,
                        "labelled pod {namespace}/{pod} {LEADER_LABEL}=true"
                    );
                    return;
                }
                Ok(Marked::NoSuchPod) => {
                    tracing::debug!(
                        "no pod {namespace}/{pod}: not in a pod, so no pod is labelled leader"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "labelling the leader's pod")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    })
}

/// Ready once the images can be listed: the API answers, the CRD is served and the daemon's
/// permissions suffice. A standby is Ready by the same test as the leader.
pub(super) fn spawn_readiness_probe(client: Client, ready: Arc<AtomicBool>) {
    let api: Api<ClusterVirtualImage> = Api::all(client);
    let params = kube::api::ListParams::default().limit(1);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        loop {
            match api.list_metadata(&params).await {
                Ok(_) => {
                    ready.store(true, Ordering::Relaxed);
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot list ClusterVirtualImages yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    });
}
