//! `systemd`: unit lifecycle from the systemd manager over D-Bus (zbus).
//!
//! The collector subscribes to `org.freedesktop.systemd1` and follows each unit's
//! `ActiveState` through `PropertiesChanged` signals, `NRestarts` on services, and
//! `JobRemoved` for jobs that did not finish `done`. At start, and again after each
//! reconnect, it reports the units that are already failed. When the bus goes away it says
//! so once, reconnects with backoff, and takes a fresh snapshot.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_stream::StreamExt as _;
use zbus::{Connection, Message, MessageStream, OwnedObjectPath, OwnedVariant};

use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};

/// Registry name.
pub const NAME: &str = "systemd";

const SERVICE: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// Messages queued before zbus would drop them: far above a burst of unit changes (a boot
/// starts a few hundred units, each a handful of signals).
const QUEUE: usize = 16_384;

/// Units remembered at most; beyond it, removed units are forgotten.
const MAX_UNITS: usize = 16_384;

/// Unit types systemd has.
const TYPES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Options of the `systemd` collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemdConfig {
    /// D-Bus address of the bus systemd is on, e.g. `unix:path=/run/dbus/system_bus_socket`
    /// (a host bus mounted into a container) or a user manager's bus; unset: the system bus.
    pub bus_address: Option<String>,
    /// Only units whose names match one of these patterns (`*` and `?` wildcards).
    pub units: Vec<String>,
    /// Only units of these types (`service`, `socket`, `timer`, `mount`, ...).
    pub types: Vec<String>,
}

impl SystemdConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if let Some(address) = &self.bus_address
            && let Err(e) = address.parse::<zbus::Address>()
        {
            problems.push(format!(
                "{prefix}.bus_address: not a D-Bus address (`{address}`): {e}"
            ));
        }
        for (i, pattern) in self.units.iter().enumerate() {
            if pattern.is_empty() {
                problems.push(format!("{prefix}.units[{i}]: must not be empty"));
            }
        }
        for (i, kind) in self.types.iter().enumerate() {
            if !TYPES.contains(&kind.as_str()) {
                problems.push(format!(
                    "{prefix}.types[{i}]: one of {}, got `{kind}`",
                    TYPES.join(", ")
                ));
            }
        }
    }

    /// Whether events about `unit` pass the filters.
    #[must_use]
    pub fn wants(&self, unit: &str) -> bool {
        let kind = unit.rsplit_once('.').map_or("", |(_, t)| t);
        (self.types.is_empty() || self.types.iter().any(|t| t == kind))
            && (self.units.is_empty() || self.units.iter().any(|p| glob(p, unit)))
    }
}

/// `*` matches any run of characters, `?` any one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl CollectorConfig for SystemdConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Systemd);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            // A bus that is not there fails here, at start; later losses are reconnected.
            let session = Session::open(&self).await.map_err(|e| {
                let bus = self.bus_address.as_deref().unwrap_or("the system bus");
                Error::unavailable_by(format!("cannot reach systemd on {bus}"), e)
            })?;
            Ok::<Running, Error>(Box::pin(run(self, cx.node_name.into(), session, context)))
        })
    }
}

/// What a unit was last seen as.
#[derive(Clone, Debug, Default)]
struct Unit {
    name: String,
    active: String,
    sub: String,
    restarts: Option<u32>,
    // Unloaded by systemd; kept a while, since its last state changes can arrive after
    // the removal.
    removed: bool,
}

/// The unit name an object path encodes: systemd escapes every byte outside
/// `[A-Za-z0-9]` as `_xx` (hex).
fn unit_name(path: &str) -> Option<String> {
    let escaped = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a session ended.
enum Ended {
    Shutdown,
    BusGone(String),
}

async fn run(
    config: SystemdConfig,
    node: Arc<str>,
    session: Session,
    context: Context,
) -> Result<(), Error> {
    let address = config
        .bus_address
        .clone()
        .unwrap_or_else(|| "the system bus".to_owned());
    let mut events = Events {
        ids: IdGenerator::new(),
        node,
        context: &context,
        config: &config,
    };
    let mut first = true;
    // Reconnects wait 0.5 s, doubling up to 30 s; a session that came up starts over.
    let retries = || {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build()
    };
    let mut delays = retries();
    let mut opened = Some(session);
    loop {
        let session = if let Some(session) = opened.take() {
            Ok(session)
        } else {
            tokio::select! {
                () = context.shutdown.cancelled() => return Ok(()),
                session = Session::open(&config) => session,
            }
        };
        let Ok(mut session) = session else {
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                () = context.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            continue;
        };
        if !first {
            tracing::info!(bus = %address, "systemd: reconnected; taking a fresh snapshot of failed units.");
            context.stats.set_health(crate::telemetry::Health::Running);
        }
        first = false;
        delays = retries();
        let ended = match session.snapshot(&mut events).await {
            Ok(()) => session.follow(&mut events).await?,
            Err(e) => Ended::BusGone(e.to_string()),
        };
        match ended {
            Ended::Shutdown => return Ok(()),
            Ended::BusGone(reason) => {
                tracing::warn!(bus = %address, %reason, "systemd: lost the bus; reconnecting with backoff.");
                context.degraded(format!("bus lost: {reason}"));
            }
        }
    }
}

/// Builds and sends events.
struct Events<'a> {
    ids: IdGenerator,
    node: Arc<str>,
    context: &'a Context,
    config: &'a SystemdConfig,
}

impl Events<'_> {
    fn event(&mut self, kind: &'static str, unit: &Unit, severity: Severity) -> Event {
        let mut event = Event::new(self.ids.next_id(), unix_nanos_now(), kind, NAME);
        event.severity = severity;
        event.entities.node = Arc::clone(&self.node);
        event.entities.unit = unit.name.as_str().into();
        let kind = unit.name.rsplit_once('.').map_or("", |(_, t)| t);
        event.attributes.set("unit_type", kind);
        event.attributes.set("active_state", unit.active.as_str());
        event.attributes.set("sub_state", unit.sub.as_str());
        event
    }

    async fn send(&self, event: Event) -> Result<(), Error> {
        self.context.out.send(event).await.map_err(Error::from)
    }
}

/// One connection to the bus and what was learnt over it.
struct Session {
    conn: Connection,
    // Every message of the connection in arrival order: a unit's removal must not overtake
    // its last state change, as it could across two streams.
    messages: MessageStream,
    units: HashMap<OwnedObjectPath, Unit>,
}

type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

impl Session {
    async fn open(config: &SystemdConfig) -> zbus::Result<Self> {
        let mut conn = match &config.bus_address {
            Some(address) => {
                zbus::connection::Builder::address(address.as_str())
                    .build()
                    .await?
            }
            None => Connection::system().await?,
        };
        if let Some(queue) = NonZeroUsize::new(QUEUE) {
            conn.set_max_queued(queue);
        }
        let messages = MessageStream::from(&conn);
        for rule in [
            format!("type='signal',sender='{SERVICE}',interface='{MANAGER}'"),
            format!(
                "type='signal',sender='{SERVICE}',interface='{PROPERTIES}',member='PropertiesChanged',path_namespace='{MANAGER_PATH}/unit'"
            ),
        ] {
            conn.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "AddMatch",
                &(rule.as_str(),),
            )
            .await?;
        }
        conn.call_method(Some(SERVICE), MANAGER_PATH, Some(MANAGER), "Subscribe", &())
            .await?;
        Ok(Self {
            conn,
            messages,
            units: HashMap::new(),
        })
    }

    /// Learns every loaded unit's state, and reports the failed ones.
    async fn snapshot(&mut self, events: &mut Events<'_>) -> Result<(), Error> {
        let listed: Vec<ListedUnit> = self
            .manager_call("ListUnits", &())
            .await
            .map_err(|e| Error::unavailable_by("ListUnits", e))?;
        self.units.clear();
        for (name, _, _, active, sub, _, path, _, _, _) in listed {
            let mut unit = Unit {
                name,
                active,
                sub,
                ..Unit::default()
            };
            if !events.config.wants(&unit.name) {
                continue;
            }
            if unit.name.ends_with(".service") {
                unit.restarts = self.service_u32(&path, "NRestarts").await;
            }
            if unit.active == "failed" {
                let mut event = events.event("systemd.unit.failed", &unit, Severity::Error);
                event.attributes.set("snapshot", true);
                self.describe_failure(&path, &unit, &mut event).await;
                events.send(event).await?;
            }
            self.units.insert(path, unit);
        }
        Ok(())
    }

    /// Follows signals until shutdown or until the bus goes away.
    async fn follow(&mut self, events: &mut Events<'_>) -> Result<Ended, Error> {
        loop {
            let message = tokio::select! {
                () = events.context.shutdown.cancelled() => return Ok(Ended::Shutdown),
                m = self.messages.next() => m,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Ok(Ended::BusGone(e.to_string())),
                None => return Ok(Ended::BusGone("the connection closed".into())),
            };
            self.handle(&message, events).await?;
        }
    }

    async fn handle(&mut self, message: &Message, events: &mut Events<'_>) -> Result<(), Error> {
        if message.message_type() != zbus::message::Type::Signal {
            return Ok(());
        }
        let header = message.header();
        let member = header.member().map(|m| m.as_str().to_owned());
        let path = header.path().map(|p| OwnedObjectPath::from(p.to_owned()));
        match member.as_deref() {
            Some("PropertiesChanged") => {
                let Some(path) = path else { return Ok(()) };
                let Ok((interface, changed, _)) =
                    message
                        .body()
                        .deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                else {
                    return Ok(());
                };
                self.changed(&path, &interface, &changed, events).await
            }
            Some("UnitNew") => {
                if let Ok((name, path)) = message.body().deserialize::<(String, OwnedObjectPath)>()
                {
                    let unit = self.units.entry(path).or_insert_with(|| Unit {
                        name,
                        active: "inactive".into(),
                        sub: "dead".into(),
                        restarts: Some(0),
                        removed: false,
                    });
                    unit.removed = false;
                }
                Ok(())
            }
            Some("UnitRemoved") => {
                if let Ok((_, path)) = message.body().deserialize::<(String, OwnedObjectPath)>()
                    && let Some(unit) = self.units.get_mut(&path)
                {
                    unit.removed = true;
                }
                if self.units.len() > MAX_UNITS {
                    self.units.retain(|_, u| !u.removed);
                }
                Ok(())
            }
            Some("JobRemoved") => {
                let Ok((id, _, unit, result)) =
                    message
                        .body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    return Ok(());
                };
                if result == "done" || !events.config.wants(&unit) {
                    return Ok(());
                }
                let severity = match result.as_str() {
                    "canceled" | "skipped" => Severity::Info,
                    _ => Severity::Warning,
                };
                let known = self
                    .units
                    .values()
                    .find(|u| u.name == unit)
                    .cloned()
                    .unwrap_or_else(|| Unit {
                        name: unit.clone(),
                        ..Unit::default()
                    });
                let mut event = events.event("systemd.job.finished", &known, severity);
                event.message = format!("job {id} for {unit} finished: {result}");
                event.attributes.set("job_id", i64::from(id));
                event.attributes.set("result", result);
                events.send(event).await
            }
            _ => Ok(()),
        }
    }

    async fn changed(
        &mut self,
        path: &OwnedObjectPath,
        interface: &str,
        changed: &HashMap<String, OwnedVariant>,
        events: &mut Events<'_>,
    ) -> Result<(), Error> {
        if !self.units.contains_key(path) {
            // First heard of now: it was inactive until this change.
            let Some(name) = unit_name(path.as_str()) else {
                return Ok(());
            };
            let unit = Unit {
                name,
                active: "inactive".into(),
                ..Unit::default()
            };
            self.units.insert(path.clone(), unit);
        }
        let known = self.units.get(path).cloned().unwrap_or_default();
        if !events.config.wants(&known.name) {
            return Ok(());
        }
        match interface {
            UNIT => {
                let text = |key: &str| {
                    changed
                        .get(key)
                        .and_then(|v| <&str>::try_from(v).ok())
                        .map(str::to_owned)
                };
                let Some(active) = text("ActiveState") else {
                    if let (Some(sub), Some(unit)) = (text("SubState"), self.units.get_mut(path)) {
                        unit.sub = sub;
                    }
                    return Ok(());
                };
                let sub = text("SubState").unwrap_or_else(|| known.sub.clone());
                let before = known.active.clone();
                let now = Unit {
                    active: active.clone(),
                    sub,
                    ..known
                };
                self.units.insert(path.clone(), now.clone());
                self.transition(path, &before, &now, events).await
            }
            SERVICE_IFACE => {
                let Some(restarts) = changed.get("NRestarts").and_then(|v| u32::try_from(v).ok())
                else {
                    return Ok(());
                };
                let before = known.restarts;
                if let Some(unit) = self.units.get_mut(path) {
                    unit.restarts = Some(restarts);
                }
                if before.is_some_and(|b| restarts > b) || (before.is_none() && restarts > 0) {
                    let mut event =
                        events.event("systemd.unit.restarted", &known, Severity::Warning);
                    event.message = format!("{} restarted (restart {restarts})", known.name);
                    event.attributes.set("n_restarts", i64::from(restarts));
                    events.send(event).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn transition(
        &self,
        path: &OwnedObjectPath,
        before: &str,
        now: &Unit,
        events: &mut Events<'_>,
    ) -> Result<(), Error> {
        if before == now.active {
            return Ok(());
        }
        let (kind, severity, verb) = match now.active.as_str() {
            "active" if before == "reloading" => return Ok(()),
            "active" => ("systemd.unit.started", Severity::Info, "started"),
            "reloading" => ("systemd.unit.reloading", Severity::Info, "is reloading"),
            "inactive" => ("systemd.unit.stopped", Severity::Info, "stopped"),
            "failed" => ("systemd.unit.failed", Severity::Error, "failed"),
            _ => return Ok(()),
        };
        let mut event = events.event(kind, now, severity);
        event.attributes.set("previous_state", before);
        event.message = format!("{} {verb}", now.name);
        if now.name.ends_with(".service") {
            if now.active == "active" {
                // Only the main pid: the result and exit fields still describe the last run.
                if let Some(pid) = self.service_u32(path, "MainPID").await.filter(|p| *p != 0) {
                    event.entities.pid = pid;
                }
            } else {
                self.describe_failure(path, now, &mut event).await;
            }
        }
        events.send(event).await
    }

    /// Adds what the service's properties say about its main process and how it ended.
    async fn describe_failure(&self, path: &OwnedObjectPath, unit: &Unit, event: &mut Event) {
        let Ok(props) = self.service_props(path).await else {
            return;
        };
        let text = |key: &str| props.get(key).and_then(|v| <&str>::try_from(v).ok());
        let int = |key: &str| props.get(key).and_then(|v| i32::try_from(v).ok());
        let uint = |key: &str| props.get(key).and_then(|v| u32::try_from(v).ok());
        let main = uint("MainPID")
            .filter(|p| *p != 0)
            .or_else(|| uint("ExecMainPID"));
        if let Some(pid) = main.filter(|p| *p != 0) {
            event.entities.pid = pid;
        }
        if let Some(result) = text("Result") {
            event.attributes.set("result", result);
        }
        if let Some(restarts) = uint("NRestarts") {
            event.attributes.set("n_restarts", i64::from(restarts));
        }
        let code = int("ExecMainCode").unwrap_or(0);
        let status = int("ExecMainStatus");
        // ExecMainCode is a CLD_* code: how the main process ended.
        let ended = match code {
            1 => Some("exited"),
            2 => Some("killed"),
            3 => Some("dumped"),
            _ => None,
        };
        if let (Some(ended), Some(status)) = (ended, status) {
            event.attributes.set("exit_code", ended);
            event.attributes.set("exit_status", i64::from(status));
            if event.kind == "systemd.unit.failed" {
                let what = if code == 1 { "status" } else { "signal" };
                event.message = format!(
                    "{} failed (result {}, {what} {status})",
                    unit.name,
                    text("Result").unwrap_or("unknown")
                );
            }
        }
    }

    async fn service_u32(&self, path: &OwnedObjectPath, key: &str) -> Option<u32> {
        let props = self.service_props(path).await.ok()?;
        props.get(key).and_then(|v| u32::try_from(v).ok())
    }

    async fn service_props(
        &self,
        path: &OwnedObjectPath,
    ) -> zbus::Result<HashMap<String, OwnedVariant>> {
        self.props(path, SERVICE_IFACE).await
    }

    async fn props(
        &self,
        path: &OwnedObjectPath,
        interface: &str,
    ) -> zbus::Result<HashMap<String, OwnedVariant>> {
        let reply = self
            .conn
            .call_method(
                Some(SERVICE),
                path,
                Some(PROPERTIES),
                "GetAll",
                &(interface,),
            )
            .await?;
        reply.body().deserialize()
    }

    async fn manager_call<B, R>(&self, method: &str, body: &B) -> zbus::Result<R>
    where
        B: serde::Serialize + zbus::wire::DynamicType,
        R: for<'d> serde::Deserialize<'d> + zbus::wire::Type,
    {
        let reply = self
            .conn
            .call_method(Some(SERVICE), MANAGER_PATH, Some(MANAGER), method, body)
            .await?;
        reply.body().deserialize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_decode_to_unit_names() {
        assert_eq!(
            unit_name("/org/freedesktop/systemd1/unit/tapio_2dok_2eservice").as_deref(),
            Some("tapio-ok.service")
        );
        assert_eq!(
            unit_name("/org/freedesktop/systemd1/unit/user_40_2eservice").as_deref(),
            Some("user@.service")
        );
        assert_eq!(unit_name("/org/freedesktop/systemd1/job/7"), None);
    }

    #[test]
    fn globs_match_like_systemctl_patterns() {
        assert!(glob("kube*", "kubelet.service"));
        assert!(glob("*.service", "nginx.service"));
        assert!(glob("tapio-?.service", "tapio-a.service"));
        assert!(!glob("tapio-?.service", "tapio-ab.service"));
        assert!(!glob("kube*", "containerd.service"));
        assert!(glob("*", ""));
    }

    #[test]
    fn filters_take_patterns_and_types() {
        let config = SystemdConfig {
            units: vec!["kube*".into(), "containerd.service".into()],
            types: vec!["service".into()],
            ..SystemdConfig::default()
        };
        assert!(config.wants("kubelet.service"));
        assert!(config.wants("containerd.service"));
        assert!(!config.wants("kube-proxy.socket"));
        assert!(!config.wants("sshd.service"));
    }

    #[test]
    fn bad_options_are_named() {
        let config = SystemdConfig {
            bus_address: Some("no-transport".into()),
            units: vec![String::new()],
            types: vec!["servce".into()],
        };
        let mut problems = Vec::new();
        config.validate("collectors.systemd.config", &mut problems);
        let text = problems.join("\n");
        for expected in [
            "collectors.systemd.config.bus_address",
            "collectors.systemd.config.units[0]",
            "collectors.systemd.config.types[0]",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }
}
