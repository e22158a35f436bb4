//! The Dockerfile and the Helm chart, checked with the real tools (no Docker engine or
//! cluster runs here, DESIGN.md section 7): hadolint, `helm lint`, `helm template`, and
//! kubernetes-validate in strict mode on what the chart renders; the collector itself
//! validates the configuration file the chart renders.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{COLLECTOR, text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(name: &str, args: &[&str]) -> Output {
    let helm = Path::new("/usr/local/bin/helm");
    let program = if name == "helm" && helm.exists() {
        helm.to_str().unwrap_or(name)
    } else {
        name
    };
    Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (scripts/setup installs it)"))
}

/// Every optional part of the chart on.
const ALL_ON: &[&str] = &[
    "--set",
    "tapioServer.enabled=true",
    "--set",
    "tls.enabled=true",
    "--set",
    "tls.secretName=tapio-tls",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "server.tokenSecret=tapio-token",
    "--set",
    "privileged=false",
    "--set",
    "collectors.cri.enabled=true",
    "--set",
    "collectors.systemd.enabled=true",
    "--set",
    "collectors.etcd-metrics.enabled=true",
    "--set",
    "collectors.syscall-errors.enabled=true",
    "--set",
    "otel.endpoint=tempo.monitoring:4317",
];

#[test]
fn the_dockerfile_has_no_hadolint_findings() {
    let out = tool("hadolint", &["Dockerfile"]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn render(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "tapio",
        "charts/tapio-collector",
        "--namespace",
        "observability",
    ];
    args.extend_from_slice(extra);
    let out = tool("helm", &args);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Several servers sharing PostgreSQL, fed through NATS JetStream.
const SCALE_OUT: &[&str] = &[
    "--set",
    "tapioServer.enabled=true",
    "--set",
    "tapioServer.replicas=3",
    "--set",
    "tapioServer.store=postgres",
    "--set",
    "tapioServer.postgres.urlSecret=tapio-postgres",
    "--set",
    "server.transport=nats",
    "--set",
    "nats.credsSecret=tapio-nats",
];

#[test]
fn the_chart_lints_and_renders_valid_manifests_by_default_and_with_everything_on() {
    for extra in [&[][..], ALL_ON, SCALE_OUT] {
        let mut lint = vec!["lint", "charts/tapio-collector", "--strict"];
        lint.extend_from_slice(extra);
        let out = tool("helm", &lint);
        assert!(
            out.status.success(),
            "helm lint {extra:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );

        let rendered = render(extra);
        let file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("temp file");
        std::fs::write(file.path(), &rendered).expect("writes");
        for version in ["1.33.0", "1.37.0"] {
            let out = tool(
                "kubernetes-validate",
                &[
                    "--strict",
                    "-k",
                    version,
                    file.path().to_str().expect("utf-8"),
                ],
            );
            let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(
                out.status.success() && !report.contains("ERROR"),
                "{extra:?} on {version}:\n{report}"
            );
            // ServiceMonitor is a CRD of the Prometheus Operator, outside the core schemas.
            for line in report.lines().filter(|l| l.contains("WARN")) {
                assert!(line.contains("ServiceMonitor"), "{line}");
            }
        }
    }
}

#[test]
fn the_rendered_configuration_is_one_the_collector_accepts() {
    for extra in [&[][..], ALL_ON, SCALE_OUT] {
        let rendered = render(extra);
        let config_map = rendered
            .split("\n---")
            .find(|doc| doc.contains("kind: ConfigMap") && doc.contains("config.yaml: |"))
            .expect("a ConfigMap");
        let body = config_map
            .split_once("config.yaml: |\n")
            .expect("the config.yaml key")
            .1;
        let config: String = body
            .lines()
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned() + "\n")
            .collect();
        let file = common::config(&config);
        let out = Command::new(COLLECTOR)
            .args(["validate", "--config", file.path().to_str().expect("utf-8")])
            .output()
            .expect("validate runs");
        assert!(
            out.status.success(),
            "{extra:?}: {}\n{config}",
            text(&out.stderr)
        );
    }
    let rendered = render(ALL_ON);
    for expected in [
        "--server=tapio-tapio-collector-server.observability.svc:9090",
        "--tls-client-ca=/etc/tapio/tls/ca.crt",
        "- NET_RAW",
        "kind: StatefulSet",
        "kind: ServiceMonitor",
        "resources: [nodes/stats, nodes/proxy]",
        "--metrics-listen=0.0.0.0:9465",
        "--memory-limit=230MiB",
        "grafana_dashboard: \"1\"",
        "tapio_server_commit_latency_seconds_bucket",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected} in the rendered chart"
        );
    }
    let scaled = render(SCALE_OUT);
    for expected in [
        "replicas: 3",
        "--nats=nats://nats.nats.svc:4222",
        "--nats-creds=/etc/tapio/nats/creds",
        "name: TAPIO_STORE",
        "name: tapio-postgres",
        "transport: nats",
        "creds_file: /etc/tapio/nats/creds",
        "path: /readyz",
        "service: tapio.v1.TapioService",
    ] {
        assert!(
            scaled.contains(expected),
            "{expected} in the scaled-out chart"
        );
    }
    assert!(
        !scaled.contains("--server="),
        "collectors publish to NATS, not to a server"
    );
    assert!(
        !scaled.contains("volumeClaimTemplates"),
        "servers on PostgreSQL keep nothing of their own"
    );
}

#[test]
fn several_servers_on_sqlite_are_refused_by_name() {
    let out = tool(
        "helm",
        &[
            "template",
            "tapio",
            "charts/tapio-collector",
            "--set",
            "tapioServer.enabled=true",
            "--set",
            "tapioServer.replicas=2",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("tapioServer.replicas"),
        "{}",
        text(&out.stderr)
    );
}
