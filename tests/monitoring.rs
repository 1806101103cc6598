//! The chart's alerts and dashboard: valid for Prometheus and Grafana, naming only metrics the
//! daemon exposes, and each alert firing on the trouble it names and staying quiet otherwise
//! (checked with Prometheus' own promtool).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use image_catalog::api::ClusterVirtualImage;
use image_catalog::metrics::{CatalogSync, Exposition, Metrics, Reconciler};
use serde::Deserialize;
use serde_json::Value;

const RULES: &str = "deploy/chart/files/prometheus-rules.yaml";
const DASHBOARD: &str = "deploy/chart/files/grafana-dashboard.json";

use common::repo_root;

fn promtool(args: &[&str]) -> (bool, String) {
    common::promtool(args, "")
}

/// Every sample name the daemon's registry writes, with each part of it used once so that
/// every family has a series.
fn exposed_sample_names() -> BTreeSet<String> {
    let metrics = Metrics::new();
    metrics.imports.failed("HTTP", "SourceNotFound");
    metrics.imports.succeeded("HTTP", Duration::from_secs(1));
    metrics.reconciles.failed(Reconciler::Import, "kube");
    metrics.catalogs.synced(CatalogSync {
        catalog: "base",
        result: "applied",
        reason: "Succeeded".into(),
        writes: 1,
        took: Duration::from_millis(10),
        conditions: vec![("Ready".into(), "True".into())],
    });
    metrics.webhooks.called("accepted");
    metrics.verifications.verified("image", "Verified", true, 1);
    let (store, _writer) = kube::runtime::reflector::store::<ClusterVirtualImage>();
    let _watching = metrics.images.watch(store);
    metrics
        .encode(Exposition::PrometheusText)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The `image_catalog_*` metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("image_catalog_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn rules() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    let file: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    file["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap().clone())
        .collect()
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn alerts_and_dashboard_read_only_metrics_the_daemon_exposes() {
    let exposed = exposed_sample_names();
    let mut read = Vec::new();
    for rule in rules() {
        read.push(rule["expr"].as_str().unwrap().to_string());
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "the dashboard has its panels: {exprs:?}");
    read.extend(exprs);
    for expr in &read {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr} reads no metric of the daemon");
        for name in names {
            assert!(
                exposed.contains(&name),
                "{expr} reads {name}, which the daemon does not expose; it exposes {exposed:?}"
            );
        }
    }
}

#[test]
fn alert_rules_and_dashboard_queries_are_valid_promql() {
    let (ok, output) = promtool(&["check", "rules", repo_root().join(RULES).to_str().unwrap()]);
    assert!(ok, "{output}");
    // The dashboard's queries, with Grafana's variables set, as recording rules: promtool
    // parses each one.
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Value> = dashboard_exprs()
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*");
            serde_json::json!({"record": format!("dashboard:panel_{i}"), "expr": expr})
        })
        .collect();
    let file = dir.path().join("dashboard-rules.yaml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": records}]});
    std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
    let (ok, output) = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(ok, "{output}");
}

/// A `promtool test rules` case: input series and, at each evaluation time, the alerts (by
/// their labels) expected then.
fn alert_case(series: &[(&str, &str)], checks: &[(&str, &str, Vec<Value>)]) -> Value {
    serde_json::json!({
        "interval": "1m",
        "input_series": series
            .iter()
            .map(|(series, values)| serde_json::json!({"series": series, "values": values}))
            .collect::<Vec<_>>(),
        "alert_rule_test": checks
            .iter()
            .map(|(at, alert, labels)| serde_json::json!({
                "eval_time": at,
                "alertname": alert,
                "exp_alerts": labels.iter().map(|l| serde_json::json!({"exp_labels": l})).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>(),
    })
}

fn fired(labels: Value) -> Vec<Value> {
    vec![labels]
}

#[test]
fn each_alert_fires_on_its_trouble_and_not_otherwise() {
    // The rules as shipped, without their annotations: promtool compares annotations too,
    // and the texts are for people, not for this test.
    let mut groups: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(RULES)).unwrap()).unwrap();
    for group in groups["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rule_file = dir.path().join("rules.yaml");
    std::fs::write(&rule_file, serde_yaml::to_string(&groups).unwrap()).unwrap();

    let none = Vec::new;
    let tests = vec![
        alert_case(
            &[
                (
                    r#"image_catalog_images{namespace="a",pod="p",phase="ImageLost"}"#,
                    "1x20",
                ),
                (
                    r#"image_catalog_images{namespace="b",pod="p",phase="ImageLost"}"#,
                    "0x20",
                ),
            ],
            &[
                ("3m", "ImageCatalogImageLost", none()),
                (
                    "10m",
                    "ImageCatalogImageLost",
                    fired(serde_json::json!({"namespace": "a", "severity": "critical"})),
                ),
            ],
        ),
        alert_case(
            &[
                (
                    r#"image_catalog_verifications_total{namespace="a",outcome="failed",reason="ChecksumMismatch"}"#,
                    "0 0 0 1x30",
                ),
                (
                    r#"image_catalog_verifications_total{namespace="a",outcome="verified",reason="Verified"}"#,
                    "0+1x30",
                ),
            ],
            &[
                ("2m", "ImageCatalogVerificationFailing", none()),
                (
                    "10m",
                    "ImageCatalogVerificationFailing",
                    fired(
                        serde_json::json!({"namespace": "a", "reason": "ChecksumMismatch", "severity": "warning"}),
                    ),
                ),
            ],
        ),
        alert_case(
            &[
                (
                    r#"image_catalog_catalog_condition{namespace="a",catalog="base",type="Stalled",status="True"}"#,
                    "1x30",
                ),
                (
                    r#"image_catalog_catalog_condition{namespace="a",catalog="fine",type="Stalled",status="True"}"#,
                    "0x30",
                ),
            ],
            &[
                ("5m", "ImageCatalogCatalogStalled", none()),
                (
                    "15m",
                    "ImageCatalogCatalogStalled",
                    fired(
                        serde_json::json!({"namespace": "a", "catalog": "base", "severity": "warning"}),
                    ),
                ),
            ],
        ),
        alert_case(
            &[
                (
                    r#"image_catalog_catalog_syncs_total{namespace="a",catalog="broken",result="fetch_failed"}"#,
                    "0+1x40",
                ),
                (
                    r#"image_catalog_catalog_syncs_total{namespace="a",catalog="flaky",result="fetch_failed"}"#,
                    "0+1x40",
                ),
                (
                    r#"image_catalog_catalog_syncs_total{namespace="a",catalog="flaky",result="unchanged"}"#,
                    "0+1x40",
                ),
            ],
            &[(
                "20m",
                "ImageCatalogCatalogSyncFailing",
                fired(
                    serde_json::json!({"namespace": "a", "catalog": "broken", "severity": "warning"}),
                ),
            )],
        ),
        alert_case(
            &[
                (
                    r#"image_catalog_imports_in_flight{namespace="a",pod="p"}"#,
                    "1x60",
                ),
                (
                    r#"image_catalog_imports_queued{namespace="a",pod="p"}"#,
                    "2x60",
                ),
                (
                    r#"image_catalog_imported_bytes_total{namespace="a",pod="p",source="HTTP"}"#,
                    "5x60",
                ),
                (
                    r#"image_catalog_imports_in_flight{namespace="b",pod="p"}"#,
                    "1x60",
                ),
                (
                    r#"image_catalog_imports_queued{namespace="b",pod="p"}"#,
                    "0x60",
                ),
                (
                    r#"image_catalog_imported_bytes_total{namespace="b",pod="p",source="HTTP"}"#,
                    "0+1000x60",
                ),
            ],
            &[
                ("10m", "ImageCatalogImportsStuck", none()),
                (
                    "40m",
                    "ImageCatalogImportsStuck",
                    fired(serde_json::json!({"namespace": "a", "severity": "warning"})),
                ),
            ],
        ),
        alert_case(
            &[
                (r#"image_catalog_leader{namespace="a",pod="p1"}"#, "0x20"),
                (r#"image_catalog_leader{namespace="a",pod="p2"}"#, "0x20"),
                (r#"image_catalog_leader{namespace="b",pod="p1"}"#, "0x20"),
                (r#"image_catalog_leader{namespace="b",pod="p2"}"#, "1x20"),
            ],
            &[
                ("3m", "ImageCatalogNoLeader", none()),
                (
                    "10m",
                    "ImageCatalogNoLeader",
                    fired(serde_json::json!({"namespace": "a", "severity": "critical"})),
                ),
            ],
        ),
    ];
    let alerted: BTreeSet<String> = tests
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_array().unwrap().clone())
        .map(|check| check["alertname"].as_str().unwrap().to_string())
        .collect();
    let shipped: BTreeSet<String> = rules()
        .iter()
        .filter_map(|rule| rule["alert"].as_str().map(str::to_string))
        .collect();
    assert_eq!(alerted, shipped, "every shipped alert has its case here");

    let unit = serde_json::json!({
        "rule_files": [rule_file.to_str().unwrap()],
        "evaluation_interval": "1m",
        "tests": tests,
    });
    let unit_file: PathBuf = dir.path().join("alerts_test.yaml");
    std::fs::write(&unit_file, serde_yaml::to_string(&unit).unwrap()).unwrap();
    let (ok, output) = promtool(&["test", "rules", unit_file.to_str().unwrap()]);
    assert!(ok, "{output}");
}

fn helm_template(values: &[&str]) -> Vec<serde_yaml::Value> {
    let mut command = Command::new(repo_root().join("scripts/helm"));
    command
        .args(["template", "image-catalog"])
        .arg(repo_root().join("deploy/chart"));
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde_yaml::Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

#[test]
fn the_chart_ships_the_alerts_and_dashboard_only_when_asked_and_as_the_files_say() {
    let kinds = |documents: &[serde_yaml::Value]| -> Vec<String> {
        documents
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or_default(),
                    d["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let defaults = helm_template(&[]);
    let default_kinds = kinds(&defaults);
    assert!(
        !default_kinds
            .iter()
            .any(|k| k.starts_with("PrometheusRule/") || k.ends_with("-dashboard")),
        "{default_kinds:?}"
    );

    let enabled = helm_template(&[
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=prometheus",
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
    ]);
    let rule = enabled
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(RULES)).unwrap()).unwrap();
    assert_eq!(
        rule["spec"], file,
        "the PrometheusRule holds the rule file as it is"
    );

    let dashboard = enabled
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "image-catalog-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["image-catalog.json"].as_str().unwrap()).unwrap();
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap())
            .unwrap();
    assert_eq!(shipped, checked_in);
}
