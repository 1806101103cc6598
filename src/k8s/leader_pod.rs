//! The leader's pod carries the label `imagecatalog.dev/leader: "true"`; the Services of the
//! upload and webhook endpoints select it, so leader-only traffic reaches the leader while every
//! replica stays Ready for its own health.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

/// The label of the leader's pod.
pub const LEADER_LABEL: &str = "imagecatalog.dev/leader";

#[derive(Debug, PartialEq, Eq)]
pub enum Marked {
    /// Our pod is labelled; the label was taken from these other pods (a dead leader's).
    Pod { unmarked: Vec<String> },
    /// No pod of this name: the daemon runs outside a pod, and nothing is labelled.
    NoSuchPod,
}

/// Labels `pod` as the leader's and takes the label from every other pod in `namespace`.
pub async fn mark(client: &Client, namespace: &str, pod: &str) -> anyhow::Result<Marked> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if pods
        .get_metadata_opt(pod)
        .await
        .with_context(|| format!("reading pod {namespace}/{pod}"))?
        .is_none()
    {
        return Ok(Marked::NoSuchPod);
    }
    pods.patch_metadata(pod, &PatchParams::default(), &label_patch(Some("true")))
        .await
        .with_context(|| format!("labelling pod {namespace}/{pod} {LEADER_LABEL}=true"))?;
    let labelled = pods
        .list_metadata(&ListParams::default().labels(&format!("{LEADER_LABEL}=true")))
        .await
        .with_context(|| format!("listing the pods labelled {LEADER_LABEL} in {namespace}"))?;
    let mut unmarked = Vec::new();
    for other in labelled.items {
        let name = other.name_any();
        if name == pod {
            continue;
        }
        unmark(client, namespace, &name).await?;
        unmarked.push(name);
    }
    Ok(Marked::Pod { unmarked })
}

/// Takes the leader label from `pod`, if it exists and has it.
pub async fn unmark(client: &Client, namespace: &str, pod: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods
        .patch_metadata(pod, &PatchParams::default(), &label_patch(None))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error).with_context(|| {
            format!("removing the label {LEADER_LABEL} from pod {namespace}/{pod}")
        }),
    }
}

/// A JSON merge patch that sets the label (or removes it: `null`).
fn label_patch(value: Option<&str>) -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_the_label_or_removes_it_with_null() {
        let Patch::Merge(set) = label_patch(Some("true")) else {
            panic!("a merge patch")
        };
        assert_eq!(
            set,
            serde_json::json!({"metadata": {"labels": {"imagecatalog.dev/leader": "true"}}})
        );
        let Patch::Merge(remove) = label_patch(None) else {
            panic!("a merge patch")
        };
        assert_eq!(
            remove,
            serde_json::json!({"metadata": {"labels": {"imagecatalog.dev/leader": null}}})
        );
    }
}
