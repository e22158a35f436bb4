//! NATS JetStream between collectors and servers: what the collector's sink and
//! tapio-server's consumer share. How to connect (credentials, TLS), the stream both
//! expect, and checking an existing stream against it.
//!
//! The queue is JetStream itself, never a home-made one: a durable file-backed stream,
//! duplicate detection by `Nats-Msg-Id` (a resent batch is dropped by the stream), and one
//! durable pull consumer shared by every server, so servers split the load and a batch a
//! dead server did not ack is redelivered to another.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;

use crate::units::{deserialize_bytes, deserialize_duration};

/// Why NATS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are unusable before anything is tried.
    #[error("{field}: {reason}")]
    Setting {
        /// The setting, as the YAML or the flag names it.
        field: String,
        /// Why.
        reason: String,
    },
    /// The server answered and refused: credentials, TLS, or a malformed URL. Retrying
    /// will not help.
    #[error("NATS at {url} refused the connection: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Nothing answered (yet): connection refused, timeout, DNS.
    #[error("cannot reach NATS at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The stream is missing (and may not be created) or differs from what is asked.
    #[error("JetStream stream {stream:?}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
}

/// How to reach NATS and prove who we are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// A `.creds` file (JWT and nkey seed), as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    /// A file holding a token.
    pub token_file: Option<PathBuf>,
    /// A user name, with `password_file`.
    pub user: Option<String>,
    /// A file holding `user`'s password.
    pub password_file: Option<PathBuf>,
    /// PEM CA of the NATS server's certificate; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// The collector's `nats:` section: where batches go with `server.transport: nats`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated: `nats://host:4222`, `tls://host:4222`.
    pub url: String,
    /// Subject batches are published on; one per node group splits the stream's load
    /// (`tapio.events.eu1`, ...).
    pub subject: String,
    /// Credentials and TLS.
    pub auth: Auth,
    /// The stream, created or checked at start.
    pub stream: StreamSettings,
    /// How long a batch waits for JetStream's ack before it is sent again.
    #[serde(deserialize_with = "deserialize_duration")]
    pub ack_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject: "tapio.events".into(),
            auth: Auth::default(),
            stream: StreamSettings::default(),
            ack_timeout: Duration::from_secs(10),
        }
    }
}

impl NatsConfig {
    /// Checks the values; each problem names its field.
    pub fn validate(&self, problems: &mut Vec<String>) {
        for url in self.url.split(',') {
            let url = url.trim();
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s))
                || !url.contains("://");
            if url.is_empty() || !scheme_ok {
                problems.push(format!(
                    "nats.url: {url:?} is not a NATS URL (nats://host:4222 or tls://host:4222)"
                ));
            }
        }
        if let Err(reason) = check_subject(&self.subject, false) {
            problems.push(format!("nats.subject: {reason}"));
        } else if !self
            .stream
            .subjects
            .iter()
            .any(|p| covers(p, &self.subject))
        {
            problems.push(format!(
                "nats.subject: {:?} is not among nats.stream.subjects {:?}",
                self.subject, self.stream.subjects
            ));
        }
        self.stream.validate("nats.stream", problems);
        if self.ack_timeout < Duration::from_secs(1) {
            problems.push(format!(
                "nats.ack_timeout: must be at least 1s, got {:?}",
                self.ack_timeout
            ));
        }
    }
}

/// What happens to a message once a server has acked it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Removed once acked (by any server): the stream holds only what waits.
    #[default]
    Workqueue,
    /// Kept until `max_bytes` or `max_age`, acked or not (replayable).
    Limits,
}

/// The stream batches go through.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Its name.
    pub name: String,
    /// Subjects it takes; the collectors' subject must be among them (wildcards allowed).
    pub subjects: Vec<String>,
    /// See [`Retention`].
    pub retention: Retention,
    /// Cap on its size; at the cap new batches are refused, so collectors spool.
    #[serde(deserialize_with = "deserialize_bytes")]
    pub max_bytes: u64,
    /// Batches older than this are removed, acked or not.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_age: Duration,
    /// Copies of each message in a JetStream cluster (1, 3 or 5).
    pub replicas: usize,
    /// How long a `Nats-Msg-Id` is remembered to drop a resent batch.
    #[serde(deserialize_with = "deserialize_duration")]
    pub duplicate_window: Duration,
    /// Create the stream when it is missing; `false` requires one made by the operator.
    pub create: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "TAPIO_EVENTS".into(),
            subjects: vec!["tapio.events".into(), "tapio.events.>".into()],
            retention: Retention::Workqueue,
            max_bytes: 10 << 30,
            max_age: Duration::from_hours(24),
            replicas: 1,
            duplicate_window: Duration::from_mins(2),
            create: true,
        }
    }
}

impl StreamSettings {
    /// Checks the values; each problem names its field under `prefix`.
    pub fn validate(&self, prefix: &str, problems: &mut Vec<String>) {
        if self.name.is_empty() || self.name.contains(['.', ' ', '*', '>', '\t']) {
            problems.push(format!(
                "{prefix}.name: {:?} must be non-empty without '.', spaces, '*' or '>'",
                self.name
            ));
        }
        if self.subjects.is_empty() {
            problems.push(format!("{prefix}.subjects: give at least one subject"));
        }
        for subject in &self.subjects {
            if let Err(reason) = check_subject(subject, true) {
                problems.push(format!("{prefix}.subjects: {reason}"));
            }
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            problems.push(format!(
                "{prefix}.replicas: must be 1, 3 or 5, got {}",
                self.replicas
            ));
        }
        if self.max_bytes < 1 << 20 {
            problems.push(format!(
                "{prefix}.max_bytes: must be at least 1MiB, got {}",
                self.max_bytes
            ));
        }
        if self.duplicate_window.is_zero() || self.duplicate_window > self.max_age {
            problems.push(format!(
                "{prefix}.duplicate_window: must be above 0 and at most max_age ({:?}), got {:?}",
                self.max_age, self.duplicate_window
            ));
        }
    }

    fn config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: match self.retention {
                Retention::Workqueue => jetstream::stream::RetentionPolicy::WorkQueue,
                Retention::Limits => jetstream::stream::RetentionPolicy::Limits,
            },
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            max_age: self.max_age,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            storage: jetstream::stream::StorageType::File,
            // Full: refuse new batches (collectors keep them) rather than drop old ones.
            discard: jetstream::stream::DiscardPolicy::New,
            ..jetstream::stream::Config::default()
        }
    }
}

/// Checks a subject (`wildcards`: `*` and a final `>` allowed); the reason names it.
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty()
        || tokens
            .iter()
            .any(|t| t.is_empty() || t.contains(char::is_whitespace))
    {
        return Err(format!(
            "{subject:?} is not a NATS subject (dot-separated tokens)"
        ));
    }
    for (i, token) in tokens.iter().enumerate() {
        let wild = *token == "*" || (*token == ">" && i == tokens.len() - 1);
        if token.contains(['*', '>']) && !(wildcards && wild) {
            return Err(format!(
                "{subject:?}: wildcards are not allowed here, or misplaced"
            ));
        }
    }
    Ok(())
}

/// Whether `pattern` (with `*` and `>` wildcards) matches the literal `subject`.
#[must_use]
pub fn covers(pattern: &str, subject: &str) -> bool {
    let mut wanted = subject.split('.');
    for token in pattern.split('.') {
        match (token, wanted.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

/// Connects once: a refusal (credentials, TLS, malformed URL) and an unreachable server
/// are told apart, so a caller can fail at start on the first and retry the second. Once
/// connected, the client reconnects by itself, forever.
pub async fn connect(url: &str, auth: &Auth, name: &str) -> Result<async_nats::Client, Error> {
    let setting = |field: &str, reason: String| Error::Setting {
        field: field.to_owned(),
        reason,
    };
    let read = |field: &str, path: &PathBuf| {
        crate::tls::read_token(path).map_err(|e| setting(field, e.to_string()))
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        // A publish waits this long for the stream's ack before the batch is resent.
        .request_timeout(Some(Duration::from_secs(10)));
    if let Some(path) = &auth.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| setting("creds_file", format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &auth.token_file {
        options = options.token(read("token_file", path)?);
    }
    match (&auth.user, &auth.password_file) {
        (Some(user), Some(path)) => {
            options = options.user_and_password(user.clone(), read("password_file", path)?);
        }
        (None, None) => {}
        _ => {
            return Err(setting("user", "user and password_file go together".into()));
        }
    }
    if let Some(ca) = &auth.tls_ca {
        crate::tls::roots(ca, "NATS CA").map_err(|e| setting("tls_ca", e.to_string()))?;
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&auth.tls_cert, &auth.tls_key) {
        (Some(cert), Some(key)) => {
            crate::tls::client_identity(cert, key)
                .map_err(|e| setting("tls_cert", e.to_string()))?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        (None, None) => {}
        _ => {
            return Err(setting(
                "tls_cert",
                "tls_cert and tls_key go together".into(),
            ));
        }
    }
    let shown = url.to_owned();
    options.connect(url).await.map_err(|e| {
        use async_nats::ConnectErrorKind as Kind;
        let reason = crate::tls::error_chain(&e);
        match e.kind() {
            Kind::Dns | Kind::TimedOut | Kind::Io | Kind::MaxReconnects => {
                Error::Unreachable { url: shown, reason }
            }
            Kind::ServerParse | Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls => {
                Error::Refused { url: shown, reason }
            }
        }
    })
}

/// The stream a server reads, as it is; created with `settings` (the server's
/// `--nats-stream`, `--nats-max-bytes`, `--nats-max-age` and `--nats-replicas`) when no
/// collector has created it yet.
pub async fn open_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<jetstream::stream::Stream, Error> {
    let name = &settings.name;
    match js.get_stream(name).await {
        Ok(stream) => Ok(stream),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            create(js, settings, "--nats-max-bytes").await
        }
        Err(e) => Err(Error::Stream {
            stream: name.clone(),
            reason: format!("cannot read it: {}", crate::tls::error_chain(&e)),
        }),
    }
}

/// Creates the stream; a refusal for want of storage names `field`, the setting to lower.
async fn create(
    js: &jetstream::Context,
    settings: &StreamSettings,
    field: &str,
) -> Result<jetstream::stream::Stream, Error> {
    js.create_stream(settings.config()).await.map_err(|e| {
        let chain = crate::tls::error_chain(&e);
        // NATS reserves max_bytes up front against its own storage limit, which by
        // default is 75% of the free disk under its store directory.
        let reason = if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED)
        {
            format!(
                "cannot create it: {chain}; the NATS server cannot reserve the {} bytes \
                 {field} asks for: lower {field}, or give the NATS server more JetStream \
                 storage (max_file_store)",
                settings.max_bytes
            )
        } else {
            format!("cannot create it: {chain}")
        };
        Error::Stream {
            stream: settings.name.clone(),
            reason,
        }
    })
}

/// The stream, created when missing (if `settings.create`), or checked when it exists:
/// it must take `subject`, and its retention, caps and replicas must be what is asked.
pub async fn stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
    subject: Option<&str>,
) -> Result<jetstream::stream::Stream, Error> {
    let error = |reason: String| Error::Stream {
        stream: settings.name.clone(),
        reason,
    };
    if let Some(subject) = subject
        && !settings.subjects.iter().any(|p| covers(p, subject))
    {
        return Err(error(format!(
            "its subjects {:?} do not take the collectors' subject {subject:?}",
            settings.subjects
        )));
    }
    let mut stream = match js.get_stream(&settings.name).await {
        Ok(stream) => stream,
        Err(e)
            if settings.create
                && matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return create(js, settings, "nats.stream.max_bytes").await;
        }
        Err(e) => {
            return Err(error(format!(
                "cannot read it ({}){}",
                crate::tls::error_chain(&e),
                if settings.create {
                    ""
                } else {
                    "; create is false, so it must exist"
                }
            )));
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|e| error(format!("cannot read it: {}", crate::tls::error_chain(&e))))?;
    let have = &info.config;
    let want = settings.config();
    let mut differ = Vec::new();
    if let Some(subject) = subject
        && !have.subjects.iter().any(|p| covers(p, subject))
    {
        differ.push(format!(
            "subjects {:?} do not take {subject:?}",
            have.subjects
        ));
    }
    if have.retention != want.retention {
        differ.push(format!(
            "retention is {:?}, asked {:?}",
            have.retention, want.retention
        ));
    }
    if have.max_bytes != want.max_bytes {
        differ.push(format!(
            "max_bytes is {}, asked {}",
            have.max_bytes, want.max_bytes
        ));
    }
    if have.max_age != want.max_age {
        differ.push(format!(
            "max_age is {:?}, asked {:?}",
            have.max_age, want.max_age
        ));
    }
    if have.num_replicas != want.num_replicas {
        differ.push(format!(
            "replicas is {}, asked {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if differ.is_empty() {
        Ok(stream)
    } else {
        Err(error(format!(
            "exists with other settings: {}; change the settings to match, or the stream \
             (`nats stream edit`)",
            differ.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_subjects_as_nats_matches_them() {
        assert!(covers("tapio.events", "tapio.events"));
        assert!(covers("tapio.events.>", "tapio.events.eu1"));
        assert!(covers("tapio.events.>", "tapio.events.eu1.rack2"));
        assert!(!covers("tapio.events.>", "tapio.events"));
        assert!(covers("tapio.*.x", "tapio.events.x"));
        assert!(!covers("tapio.*", "tapio.events.x"));
        assert!(!covers("tapio.events", "tapio.events.x"));
    }

    #[test]
    fn subjects_are_checked_by_name() {
        assert!(check_subject("tapio.events", false).is_ok());
        assert!(check_subject("tapio.events.>", true).is_ok());
        assert!(check_subject("tapio.events.>", false).is_err());
        assert!(check_subject("tapio..events", true).is_err());
        assert!(check_subject("tapio.>.events", true).is_err());
        assert!(check_subject("", true).is_err());
    }

    #[test]
    fn stream_settings_name_each_bad_field() {
        let bad = StreamSettings {
            name: "a.b".into(),
            replicas: 2,
            max_bytes: 10,
            duplicate_window: Duration::from_hours(48),
            ..StreamSettings::default()
        };
        let mut problems = Vec::new();
        bad.validate("nats.stream", &mut problems);
        for field in ["name", "replicas", "max_bytes", "duplicate_window"] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("nats.stream.{field}:"))),
                "{field}: {problems:?}"
            );
        }
        let mut none = Vec::new();
        StreamSettings::default().validate("nats.stream", &mut none);
        assert!(none.is_empty(), "{none:?}");
    }
}
