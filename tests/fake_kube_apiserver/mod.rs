//! A FAKE Kubernetes API server: no real one can be installed here (DESIGN.md section 7).
//! It speaks the parts of the real protocol the kubeapi collector uses, over plain HTTP/1.1
//! on loopback: list with a `resourceVersion`, watch as a chunked stream of JSON lines
//! from a resource version, bookmarks, field selectors (`a=b`, comma-separated), and
//! `410 Gone` (an `ERROR` watch event with an `Expired` status) once the history a watch
//! asks for has been compacted. Objects are the JSON the test gives it.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The resources served, all cluster-wide: (plural, kind, path).
const RESOURCES: [(&str, &str, &str); 4] = [
    ("pods", "Pod", "/api/v1/pods"),
    ("nodes", "Node", "/api/v1/nodes"),
    ("events", "Event", "/api/v1/events"),
    (
        "endpointslices",
        "EndpointSlice",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
];

#[derive(Default)]
struct Inner {
    rv: u64,
    /// (plural, namespace/name) -> object.
    objects: BTreeMap<(String, String), Value>,
    /// (rv, plural, type, object), oldest first.
    history: Vec<(u64, String, &'static str, Value)>,
    /// A watch from below this resource version gets 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch.
    generation: u64,
    /// (plural, "list" or "watch") -> requests served.
    requests: HashMap<(String, &'static str), usize>,
    /// Every field selector asked for, per plural.
    selectors: Vec<(String, String)>,
    /// Watches answered with 410 Gone.
    gone: usize,
}

/// The fake API server; it stops when dropped.
#[derive(Clone)]
pub struct FakeApiServer {
    pub port: u16,
    shared: Arc<(Mutex<Inner>, Condvar)>,
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default()
    )
}

/// Whether `object` passes `selector` (`path=value`, comma-separated; paths are dotted).
fn selected(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (path, want) = term.split_once('=').unwrap_or((term, ""));
        let mut value = object;
        for part in path.split('.') {
            value = &value[part];
        }
        value.as_str() == Some(want)
    })
}

fn query(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect();
    (path.to_owned(), params)
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FakeApiServer {
    /// Starts serving on a free loopback port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = Self {
            port,
            shared: Arc::new((Mutex::new(Inner::default()), Condvar::new())),
        };
        let accepting = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = accepting.clone();
                std::thread::spawn(move || handler.serve(stream));
            }
        });
        server
    }

    /// A kubeconfig that points at this server, without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.port
        )
    }

    /// Creates or replaces an object of `plural` (`pods`, `nodes`, `events`).
    pub fn apply(&self, plural: &str, mut object: Value) {
        let (lock, changed) = &*self.shared;
        let mut inner = lock.lock().expect("lock");
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (plural.to_owned(), key_of(&object));
        let kind = if inner.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.objects.insert(key, object.clone());
        inner.history.push((rv, plural.to_owned(), kind, object));
        changed.notify_all();
    }

    /// Forgets the watch history, as etcd compaction does: the revision moves on, and a
    /// watch resuming from any version before it gets 410 Gone.
    pub fn compact(&self) {
        let (lock, _) = &*self.shared;
        let mut inner = lock.lock().expect("lock");
        inner.rv += 1;
        inner.oldest = inner.rv;
        inner.history.clear();
    }

    /// Ends every open watch, as an API server restart or a load balancer would.
    pub fn close_watches(&self) {
        let (lock, changed) = &*self.shared;
        lock.lock().expect("lock").generation += 1;
        changed.notify_all();
    }

    /// Requests served for `plural`: `list` or `watch`.
    pub fn requests(&self, plural: &str, verb: &'static str) -> usize {
        let (lock, _) = &*self.shared;
        let inner = lock.lock().expect("lock");
        inner
            .requests
            .get(&(plural.to_owned(), verb))
            .copied()
            .unwrap_or(0)
    }

    /// Watches answered with 410 Gone.
    pub fn gone(&self) -> usize {
        self.shared.0.lock().expect("lock").gone
    }

    /// The field selectors asked for `plural`.
    pub fn selectors(&self, plural: &str) -> Vec<String> {
        let (lock, _) = &*self.shared;
        let inner = lock.lock().expect("lock");
        inner
            .selectors
            .iter()
            .filter(|(p, _)| p == plural)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Waits until `check` holds, failing after a minute.
    pub fn wait_until(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !check(self) {
            assert!(
                started.elapsed() < Duration::from_mins(1),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        loop {
            let mut request = String::new();
            if reader.read_line(&mut request).unwrap_or(0) == 0 {
                return;
            }
            // Headers, up to the blank line; requests here have no body.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (path, params) = query(&target);
            let Some((plural, kind)) = RESOURCES
                .iter()
                .find(|(_, _, at)| path == *at)
                .map(|(p, k, _)| ((*p).to_owned(), *k))
            else {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).to_string();
                let _ = write!(
                    writer,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                continue;
            };
            let selector = params.get("fieldSelector").cloned().unwrap_or_default();
            let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
            {
                let (lock, _) = &*self.shared;
                let mut inner = lock.lock().expect("lock");
                *inner
                    .requests
                    .entry((plural.clone(), if watching { "watch" } else { "list" }))
                    .or_default() += 1;
                inner.selectors.push((plural.clone(), selector.clone()));
            }
            let ok = if watching {
                self.watch(&mut writer, &plural, kind, &selector, &params)
            } else {
                self.list(&mut writer, &plural, kind, &selector)
            };
            if !ok {
                return;
            }
        }
    }

    fn list(&self, writer: &mut TcpStream, plural: &str, kind: &str, selector: &str) -> bool {
        let (lock, _) = &*self.shared;
        let inner = lock.lock().expect("lock");
        let items: Vec<&Value> = inner
            .objects
            .iter()
            .filter(|((p, _), o)| p == plural && selected(o, selector))
            .map(|(_, o)| o)
            .collect();
        let api_version = if kind == "EndpointSlice" {
            "discovery.k8s.io/v1"
        } else {
            "v1"
        };
        let body = json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        })
        .to_string();
        drop(inner);
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .is_ok()
    }

    fn watch(
        &self,
        writer: &mut TcpStream,
        plural: &str,
        kind: &str,
        selector: &str,
        params: &HashMap<String, String>,
    ) -> bool {
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(290), Duration::from_secs);
        let bookmarks = params
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        if write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let send = |writer: &mut TcpStream, line: &Value| -> bool {
            let text = format!("{line}\n");
            write!(writer, "{:x}\r\n{text}\r\n", text.len()).is_ok() && writer.flush().is_ok()
        };
        let (lock, changed) = &*self.shared;
        let mut inner = lock.lock().expect("lock");
        if from != 0 && from < inner.oldest {
            inner.gone += 1;
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", inner.oldest),
                "reason": "Expired", "code": 410}});
            drop(inner);
            return send(writer, &gone) && write!(writer, "0\r\n\r\n").is_ok();
        }
        let generation = inner.generation;
        let started = Instant::now();
        let mut delivered_rv = from;
        let mut last_bookmark = Instant::now();
        loop {
            // A closed watch sends nothing more, even what arrived as it closed.
            if inner.generation != generation || started.elapsed() >= timeout {
                drop(inner);
                return write!(writer, "0\r\n\r\n").is_ok();
            }
            let pending: Vec<Value> = inner
                .history
                .iter()
                .filter(|(rv, p, _, o)| *rv > delivered_rv && p == plural && selected(o, selector))
                .map(|(_, _, t, o)| json!({"type": t, "object": o}))
                .collect();
            delivered_rv = inner.rv;
            if !pending.is_empty() {
                drop(inner);
                for line in &pending {
                    if !send(writer, line) {
                        return false;
                    }
                }
                inner = lock.lock().expect("lock");
                continue;
            }
            if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
                let mark = json!({"type": "BOOKMARK", "object": {
                    "kind": kind, "apiVersion": "v1",
                    "metadata": {"resourceVersion": inner.rv.to_string()}}});
                drop(inner);
                if !send(writer, &mark) {
                    return false;
                }
                last_bookmark = Instant::now();
                inner = lock.lock().expect("lock");
                continue;
            }
            inner = changed
                .wait_timeout(inner, Duration::from_millis(200))
                .expect("lock")
                .0;
        }
    }
}
