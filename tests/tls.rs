//! TLS and mutual TLS between a real collector and a real server, with certificates made
//! by the test: good credentials deliver, bad ones are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{COLLECTOR, ServerProcess, config, stats, text};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA, a server certificate for localhost and a client certificate, all as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("writes PEM");
    path
}

fn pki(dir: &Path, prefix: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("signs");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["collector.test".into()]);
    Pki {
        ca: write(dir, &format!("{prefix}-ca.pem"), &ca.pem()),
        server_cert: write(dir, &format!("{prefix}-server.pem"), &server_cert),
        server_key: write(dir, &format!("{prefix}-server-key.pem"), &server_key),
        client_cert: write(dir, &format!("{prefix}-client.pem"), &client_cert),
        client_key: write(dir, &format!("{prefix}-client-key.pem"), &client_key),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn collect(server: &ServerProcess, flags: &[&str]) -> Output {
    let yaml = config("collectors:\n  synthetic: { config: { events: 300 } }\n");
    Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args([
            "--server",
            &format!("localhost:{}", server.port),
            "--drain-timeout",
            "2s",
        ])
        .args(flags)
        .output()
        .expect("collector runs")
}

/// A server with `pki`'s certificate; with `mutual`, it requires clients signed by its CA.
fn tls_server(pki: &Pki, store: &Path, mutual: bool) -> ServerProcess {
    let mut flags = vec![
        "--tls-cert",
        path(&pki.server_cert),
        "--tls-key",
        path(&pki.server_key),
    ];
    if mutual {
        flags.extend(["--tls-client-ca", path(&pki.ca)]);
    }
    ServerProcess::start(0, store, &flags)
}

/// Collector flags for TLS trusting `ca`, presenting `identity`'s client certificate if any.
fn tls_client<'a>(ca: &'a Path, identity: Option<&'a Pki>) -> Vec<&'a str> {
    let mut flags = vec!["--grpc-insecure=false", "--tls-ca", path(ca)];
    if let Some(pki) = identity {
        flags.extend([
            "--tls-cert",
            path(&pki.client_cert),
            "--tls-key",
            path(&pki.client_key),
        ]);
    }
    flags
}

#[test]
fn tls_delivers_with_the_right_ca_and_refuses_a_stranger() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = pki(dir.path(), "good");
    let rogue = pki(dir.path(), "rogue");
    let store = dir.path().join("store");
    let server = tls_server(&good, &store, false);
    let ok = collect(&server, &tls_client(&good.ca, None));
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(stats(&store).0, 300);

    let untrusted = collect(&server, &tls_client(&rogue.ca, None));
    let stderr = text(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Cannot reach the server"), "{stderr}");

    let plaintext = collect(&server, &[]);
    assert_eq!(
        plaintext.status.code(),
        Some(1),
        "plain text to a TLS port is refused"
    );
    assert_eq!(
        stats(&store).0,
        300,
        "nothing arrived over the refused connections"
    );
}

#[test]
fn mutual_tls_accepts_only_clients_signed_by_its_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = pki(dir.path(), "good");
    let rogue = pki(dir.path(), "rogue");
    let store = dir.path().join("store");
    let server = tls_server(&good, &store, true);
    let trusted = collect(&server, &tls_client(&good.ca, Some(&good)));
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
    assert_eq!(stats(&store).0, 300);

    let stranger = collect(&server, &tls_client(&good.ca, Some(&rogue)));
    assert_eq!(
        stranger.status.code(),
        Some(1),
        "{}",
        text(&stranger.stderr)
    );

    let anonymous = collect(&server, &tls_client(&good.ca, None));
    assert_eq!(
        anonymous.status.code(),
        Some(1),
        "{}",
        text(&anonymous.stderr)
    );
    assert_eq!(stats(&store).0, 300, "refused clients stored nothing");
}

#[test]
fn tls_files_that_are_not_pem_are_named_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = write(dir.path(), "junk.pem", "not a certificate");
    let yaml = config("collectors:\n  synthetic: { config: { events: 1 } }\n");
    let out = Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args([
            "--server",
            "localhost:1",
            "--grpc-insecure=false",
            "--tls-ca",
            path(&junk),
        ])
        .output()
        .expect("runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("junk.pem is not PEM"), "{stderr}");
}

#[test]
fn a_certificate_and_a_key_that_do_not_match_are_named_on_both_sides_before_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = pki(dir.path(), "good");
    let rogue = pki(dir.path(), "rogue");
    let out = Command::new(common::SERVER)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("store"))
        .args([
            "--tls-cert",
            path(&good.server_cert),
            "--tls-key",
            path(&rogue.server_key),
        ])
        .output()
        .expect("server runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("Listening."),
        "refused before listening: {stderr}"
    );
    assert!(
        stderr.contains("good-server.pem") && stderr.contains("rogue-server-key.pem"),
        "{stderr}"
    );

    let server = tls_server(&good, &dir.path().join("store"), true);
    let out = collect(
        &server,
        &[
            "--grpc-insecure=false",
            "--tls-ca",
            path(&good.ca),
            "--tls-cert",
            path(&good.client_cert),
            "--tls-key",
            path(&rogue.client_key),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("invalid server address"), "{stderr}");
    assert!(
        stderr.contains("TLS to the server")
            && stderr.contains("good-client.pem")
            && stderr.contains("rogue-client-key.pem"),
        "{stderr}"
    );
}

#[test]
fn a_failed_handshake_is_logged_by_the_server_and_explained_by_the_collector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = pki(dir.path(), "good");
    let rogue = pki(dir.path(), "rogue");
    let server = tls_server(&good, &dir.path().join("store"), false);
    let out = collect(&server, &tls_client(&rogue.ca, None));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let reason = stderr
        .lines()
        .find(|l| l.contains("Cannot reach the server"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        reason.contains("certificate") && !reason.ends_with("transport error"),
        "the collector says why: {reason}"
    );
    let log = server.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
}
