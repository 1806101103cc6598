//! What the chart's RBAC lets the daemon's ServiceAccount do, as the real apiserver answers
//! it, against what the code calls: exactly those grants, nothing more. A grant added to the
//! chart without a call that needs it (or a call without its grant) fails here; the in-cluster
//! test checks from the audit log that every request the daemon made was allowed.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{TestEnv, testenv};

const ACCOUNT: &str = "system:serviceaccount:image-catalog:image-catalog";

/// Every Kubernetes call of the daemon, by where it is allowed, with the code that makes it.
const CLUSTER_WIDE: &[(&str, &str, &str)] = &[
    (
        "clustervirtualimages.virtualization.deckhouse.io",
        "create delete get list patch watch",
        "sync::controller (apply = patch + create, prune = delete, the watch of owned images); \
         both controllers' finalizers (patch); k8s::cvi_status (get after a conflict)",
    ),
    (
        "clustervirtualimages.virtualization.deckhouse.io/status",
        "patch",
        "k8s::cvi_status, the one status writer (server-side apply)",
    ),
    (
        "virtualimages.virtualization.deckhouse.io",
        "get",
        "import::object_ref: the source of an ObjectRef image",
    ),
    (
        "virtualdisks.virtualization.deckhouse.io",
        "get",
        "import::object_ref: the source of an ObjectRef image",
    ),
    (
        "imagecatalogs.imagecatalog.dev",
        "get list patch watch",
        "sync::controller (the watch, the finalizer), sync::webhook (get)",
    ),
    (
        "imagecatalogs.imagecatalog.dev/status",
        "patch",
        "sync::controller: the catalog's status",
    ),
    (
        "events.events.k8s.io",
        "create patch",
        "the Event recorders of both controllers and of leader election",
    ),
];

/// Added in the daemon's own namespace.
const OWN_NAMESPACE: &[(&str, &str, &str)] = &[
    (
        "secrets",
        "get",
        "k8s::secrets: DVCR's credentials, the catalogs' Secrets, imagePullSecrets",
    ),
    (
        "leases.coordination.k8s.io",
        "create get update",
        "k8s::lease: leader election",
    ),
    (
        "leases.coordination.k8s.io",
        "delete get list patch",
        "k8s::checkpoints: import checkpoints",
    ),
    (
        "pods",
        "get list patch",
        "k8s::leader_pod: the leader label",
    ),
];

/// Added in a namespace of --pull-secret-namespace, through its RoleBinding.
const PULL_SECRET_NAMESPACE: &[(&str, &str, &str)] = &[(
    "secrets",
    "get",
    "k8s::secrets: imagePullSecrets named by CVIs",
)];

/// What every authenticated account may do, whatever the chart says.
const EVERYONE: &[&str] = &[
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
];

/// `kubectl auth can-i --list` as the daemon's account in `namespace`: resource → verbs.
fn granted(env: &TestEnv, namespace: &str) -> BTreeMap<String, BTreeSet<String>> {
    let output = env.kubectl_ok(&["auth", "can-i", "--list", "--as", ACCOUNT, "-n", namespace]);
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in output.lines().skip(1) {
        // Resources, Non-Resource URLs, Resource Names, Verbs ([get list]).
        let Some((head, verbs)) = line.rsplit_once('[') else {
            continue;
        };
        let columns: Vec<&str> = head.split_whitespace().collect();
        let Some(resource) = columns.first() else {
            continue;
        };
        // Non-resource URLs (/api, /healthz, …) are shown in brackets.
        if resource.starts_with('[') || EVERYONE.contains(resource) {
            continue;
        }
        let verbs = verbs.trim_end().trim_end_matches(']');
        granted
            .entry(resource.to_string())
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_string));
    }
    granted
}

fn expected(tables: &[&[(&str, &str, &str)]]) -> BTreeMap<String, BTreeSet<String>> {
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for table in tables {
        for (resource, verbs, _) in *table {
            expected
                .entry(resource.to_string())
                .or_default()
                .extend(verbs.split_whitespace().map(str::to_string));
        }
    }
    expected
}

fn show(what: &str, grants: &BTreeMap<String, BTreeSet<String>>) {
    eprintln!("{what}:");
    for (resource, verbs) in grants {
        let verbs: Vec<_> = verbs.iter().map(String::as_str).collect();
        eprintln!("  {resource}: {}", verbs.join(" "));
    }
}

#[test]
fn the_chart_grants_exactly_what_the_code_calls_and_no_secret_outside_its_namespaces() {
    let env = testenv();
    env.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        common::repo_root()
            .join("deploy/rbac.yaml")
            .to_str()
            .unwrap(),
    ]);
    // A namespace the daemon may read pull secrets in, bound as the chart's
    // pullSecretNamespaces binds it, and a tenant's namespace that is not.
    env.bind_pull_secrets("rbac-pull-secrets");
    let _ = env
        .kubectl()
        .args(["create", "namespace", "rbac-tenant"])
        .output();

    let cases = [
        ("image-catalog", expected(&[CLUSTER_WIDE, OWN_NAMESPACE])),
        (
            "rbac-pull-secrets",
            expected(&[CLUSTER_WIDE, PULL_SECRET_NAMESPACE]),
        ),
        ("rbac-tenant", expected(&[CLUSTER_WIDE])),
    ];
    for (namespace, expected) in cases {
        let granted = granted(env, namespace);
        show(&format!("the chart grants in {namespace}"), &granted);
        show(&format!("the code calls in {namespace}"), &expected);
        assert_eq!(granted, expected, "in {namespace}");
    }
    // Secrets are never listed or watched, nor read cluster-wide.
    for (verb, namespace) in [
        ("list", "image-catalog"),
        ("watch", "image-catalog"),
        ("get", "rbac-tenant"),
        ("get", "default"),
    ] {
        let output = env
            .kubectl()
            .args([
                "auth", "can-i", verb, "secrets", "--as", ACCOUNT, "-n", namespace,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "no",
            "{verb} secrets in {namespace}"
        );
    }
}
