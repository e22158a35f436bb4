//! A semantic group while it is open: its members (one span each), reach (blast radius),
//! impact, criticality and summary, until it closes into an incident.

use super::predict::{Evidence, cascade_risk, evidence, predict};
use super::{Join, trace_id_of};
use crate::correlation::rules::{Relation, Rule};

/// A small set, as a list: a group touches a handful of entities and types, where a hash
/// set per group cost an allocation and a hash per member.
type Few<T> = Vec<T>;

fn put<T: PartialEq>(set: &mut Few<T>, item: T) {
    if !set.contains(&item) {
        set.push(item);
    }
}
use crate::event::{
    CausalLink, Entities, Event, EventId, GroupId, Incident, Member, Severity, SpanId, TraceId,
    keys,
};

/// A group while it is open: the incident it will become, and what the engine keeps to
/// grow it (kinds seen, reach, evidence).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Group {
    /// The incident as it stands; handed over when the group closes.
    pub(super) incident: Incident,
    pub(super) root_kind: &'static str,
    pub(super) kinds: Few<&'static str>,
    pub(super) reach: Reach,
    pub(super) related: usize,
    pub(super) severity: Severity,
    /// The worst severity among its causal members (related ones aside).
    pub(super) causal_severity: Severity,
    /// The type of its newest causal member, which the predictions lead on from.
    pub(super) newest: &'static str,
    pub(super) evidence: Vec<Evidence>,
    pub(super) recurrence: u32,
    pub(super) critical: bool,
}

/// The distinct entities a group touched (by key): its blast radius.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Reach {
    pub(super) pods: Few<u64>,
    pub(super) workloads: Few<u64>,
    pub(super) services: Few<u64>,
    pub(super) units: Few<u64>,
}

impl Reach {
    fn add(&mut self, e: &Entities, service: Option<&str>) {
        if let Some(key) = Relation::Pod.key(e) {
            put(&mut self.pods, key);
        }
        if let Some(key) = Relation::Workload.key(e) {
            put(&mut self.workloads, key);
        }
        if let Some(key) = Relation::Unit.key(e) {
            put(&mut self.units, key);
        }
        if let Some(service) = service {
            put(
                &mut self.services,
                crate::bounded::key_parts(&[e.pod_namespace.as_bytes(), service.as_bytes()]),
            );
        }
    }

    /// Entities touched, counting a workload only beyond the first (its pods count already).
    fn width(&self) -> usize {
        self.pods.len()
            + self.workloads.len().saturating_sub(1)
            + self.services.len()
            + self.units.len()
    }

    fn describe(&self) -> String {
        let mut parts = vec![plural(self.pods.len(), "pod")];
        for (n, what) in [
            (self.workloads.len(), "workload"),
            (self.services.len(), "service"),
            (self.units.len(), "unit"),
        ] {
            if n > 0 {
                parts.push(plural(n, what));
            }
        }
        parts.join(", ")
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What makes an incident matter most. Empty: everything matters the same; otherwise a
/// group touching none of it has its impact scaled by 0.75.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Criticality {
    /// Pod namespaces.
    pub namespaces: Vec<String>,
    /// Pod labels as (key, value); no value: the key alone. Read from `k8s.pod.label.<key>`
    /// attributes, and remembered per pod for its events that carry none.
    pub labels: Vec<(String, Option<String>)>,
    /// systemd units.
    pub units: Vec<String>,
}

impl Criticality {
    pub(super) fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.labels.is_empty() && self.units.is_empty()
    }

    pub(super) fn by_labels(&self, event: &Event) -> bool {
        self.labels.iter().any(|(key, value)| {
            event.attributes.iter().any(|a| {
                a.key.strip_prefix(keys::POD_LABEL_PREFIX) == Some(key.as_str())
                    && value.as_ref().is_none_or(
                        |v| matches!(&a.value, crate::event::AttrValue::Str(s) if s == v),
                    )
            })
        })
    }
}

pub(super) fn severity_weight(severity: Severity) -> f64 {
    match severity {
        Severity::Debug => 0.1,
        Severity::Info => 0.25,
        Severity::Warning => 0.5,
        Severity::Error => 0.75,
        Severity::Critical => 1.0,
    }
}

/// Impact: how bad (`severity`) x how wide (`width`: pods, workloads, services and units
/// touched) x how often (`recurrence`) x where (something `critical`, when configured).
pub(super) fn impact(severity: Severity, width: usize, recurrence: u32, critical: bool) -> f64 {
    let width = i32::try_from(width.max(1)).unwrap_or(i32::MAX);
    let blast = 1.0 - 0.5f64.powi(width);
    let recurring = (0.8 + 0.1 * f64::from(recurrence.saturating_sub(1))).min(1.0);
    let criticality = if critical { 1.0 } else { 0.75 };
    (severity_weight(severity) * (0.6 + 0.4 * blast) * recurring * criticality).clamp(0.0, 1.0)
}

/// A span of some trace.
type Context = (TraceId, SpanId);

/// The trace context `event` arrived with, linked from its span in the group's trace
/// `group_trace`, and the application span it is (an `app.span`'s own), which the export
/// joins both ways instead.
pub(super) fn contexts(event: &Event, group_trace: TraceId) -> (Option<Context>, Option<Context>) {
    if event.kind == "app.span" {
        return (None, event.trace_id.zip(event.span_id));
    }
    let own = event
        .trace_id
        .filter(|t| *t != group_trace)
        .zip(event.parent_span_id.or(event.span_id));
    (own, None)
}

impl Group {
    /// A group rooted at the event `root` of type `root_kind`, seen at `timestamp`.
    pub(super) fn new(
        id: GroupId,
        (root, timestamp): (EventId, u64),
        root_kind: &'static str,
        recurrence: u32,
    ) -> Self {
        Self {
            root_kind,
            incident: Incident {
                id,
                trace_id: trace_id_of(id),
                root,
                // Most incidents are a handful of events: one allocation each, not three.
                events: Vec::with_capacity(8),
                members: Vec::with_capacity(8),
                chain: Vec::new(),
                impact: 0.0,
                predictions: Vec::new(),
                cascade_risk: 0.0,
                first_seen: timestamp,
                last_seen: timestamp,
                summary: String::new(),
            },
            kinds: Few::new(),
            reach: Reach::default(),
            related: 0,
            severity: Severity::Debug,
            causal_severity: Severity::Debug,
            newest: "other",
            evidence: Vec::new(),
            recurrence,
            critical: false,
        }
    }

    /// Adds `event`, of the rule table's type `kind` (see `Semantic::kind`).
    pub(super) fn add(&mut self, event: &Event, kind: &'static str, join: Join, critical: bool) {
        let Join {
            parent,
            cross_links,
            links,
            joined_on,
        } = join;
        let (own_context, app) = contexts(event, self.incident.trace_id);
        let member = Box::new(Member {
            id: event.id,
            kind: event.kind.clone(),
            timestamp: event.timestamp,
            span: event.span_id,
            parent,
            own_context,
            cross_links,
            app,
            joined_on: joined_on.map(Relation::name),
            severity: event.severity,
            message: event.message.clone(),
            entities: event.entities.clone(),
        });
        let fact = evidence(event);
        let service = event.attributes.text(keys::SERVICE_NAME);
        self.add_member(member, kind, links, service, fact, critical);
    }

    /// Adds `member`, of the rule table's type `kind`, with the links to its causes, the
    /// service it serves and what it is evidence of.
    pub(super) fn add_member(
        &mut self,
        member: Box<Member>,
        kind: &'static str,
        links: Vec<CausalLink>,
        service: Option<&str>,
        fact: Option<Evidence>,
        critical: bool,
    ) {
        let (id, timestamp, severity) = (member.id, member.timestamp, member.severity);
        let related = member.joined_on.is_some();
        self.critical |= critical;
        self.incident.events.push(id);
        self.reach.add(&member.entities, service);
        self.incident.members.push(member);
        self.incident
            .chain
            .extend(links.into_iter().map(|l| (id, l)));
        self.incident.first_seen = self.incident.first_seen.min(timestamp);
        self.incident.last_seen = self.incident.last_seen.max(timestamp);
        self.severity = self.severity.max(severity);
        if related {
            self.related += 1;
        } else {
            self.causal_severity = self.causal_severity.max(severity);
            put(&mut self.kinds, kind);
        }
        if let Some(fact) = fact {
            Evidence::merge(&mut self.evidence, fact);
        }
        self.incident.impact = impact(
            self.severity,
            self.reach.width(),
            self.recurrence,
            self.critical,
        );
        // A related member changes neither the causal kinds nor the evidence.
        if !related {
            self.newest = kind;
        }
    }

    /// Names the pod of members that knew only its uid (a kernel event seen before any
    /// Kubernetes event of its pod) from the members that name it: spans are built at
    /// close, so they all carry the pod.
    fn name_pods(&mut self) {
        let members = &mut self.incident.members;
        // Only when some member lacks its pod's name: a lookup per member, not a copy.
        if !members
            .iter()
            .any(|m| !m.entities.pod_uid.is_empty() && m.entities.pod_name.is_empty())
        {
            return;
        }
        let mut named: crate::bounded::FxMap<std::sync::Arc<str>, usize> =
            crate::bounded::FxMap::default();
        for (at, m) in members.iter().enumerate() {
            if !m.entities.pod_uid.is_empty() && !m.entities.pod_name.is_empty() {
                named
                    .entry(std::sync::Arc::clone(&m.entities.pod_uid))
                    .or_insert(at);
            }
        }
        for at in 0..members.len() {
            let e = &members[at].entities;
            if e.pod_uid.is_empty() || !e.pod_name.is_empty() {
                continue;
            }
            let Some(&from) = named.get(&e.pod_uid) else {
                continue;
            };
            let pod = members[from].entities.clone();
            let e = &mut members[at].entities;
            e.pod_namespace = pod.pod_namespace;
            e.pod_name = pod.pod_name;
            if e.workload_name.is_empty() {
                e.workload_kind = pod.workload_kind;
                e.workload_name = pod.workload_name;
            }
        }
    }

    /// Adds the question `member` that a member's failed answer replied to (a DNS query):
    /// part of the same failed lookup, neither a cause nor an effect.
    pub(super) fn add_question(&mut self, member: Member) {
        self.incident.first_seen = self.incident.first_seen.min(member.timestamp);
        self.incident.events.push(member.id);
        self.incident.members.push(Box::new(member));
        self.related += 1;
    }

    /// Adds `event`, a cause that arrived after its effect `effect` (a member): when the
    /// effect is the root, the cause becomes the root and the old root's parent; else the
    /// cause's span sits beside the effect, under the effect's parent.
    pub(super) fn add_late_cause(
        &mut self,
        event: &Event,
        kind: &'static str,
        effect: EventId,
        link: CausalLink,
        critical: bool,
    ) {
        let effect_parent = self
            .incident
            .members
            .iter()
            .find(|m| m.id == effect)
            .and_then(|m| m.parent);
        let join = Join {
            parent: effect_parent,
            ..Join::default()
        };
        // What comes next leads on from the latest effect, not from a cause reported late.
        let newest = self.newest;
        self.add(event, kind, join, critical);
        self.newest = newest;
        if self.incident.root == effect {
            self.incident.root = event.id;
            self.root_kind = kind;
            if let Some(member) = self.incident.members.iter_mut().find(|m| m.id == effect) {
                member.parent = event.span_id;
            }
        }
        self.incident.chain.push((effect, link));
    }

    /// The incident, summarised: once, when the group closes, since nothing reads the
    /// summary before.
    /// `apps`: whether applications' spans reach the engine, so their failures can be
    /// predicted.
    pub(super) fn close(mut self, rules: &[Rule], apps: bool) -> Incident {
        self.name_pods();
        let evidence: Vec<String> = self.evidence.iter().map(Evidence::text).collect();
        self.incident.predictions = predict(
            rules,
            self.newest,
            self.root_kind,
            &evidence,
            !self.reach.services.is_empty(),
            apps,
        );
        self.incident.cascade_risk = cascade_risk(&self.incident.predictions);
        let mut effects: Vec<&str> = self
            .kinds
            .iter()
            .copied()
            .filter(|k| *k != self.root_kind)
            .collect();
        effects.sort_unstable();
        let related = match self.related {
            0 => String::new(),
            n => format!(", {} on the same entities", plural(n, "related event")),
        };
        self.incident.summary = format!(
            "{} led to {} ({}{related}; {})",
            self.root_kind,
            if effects.is_empty() {
                "nothing yet".to_owned()
            } else {
                effects.join(", ")
            },
            plural(self.incident.events.len(), "event"),
            self.reach.describe()
        );
        self.incident
    }
}
