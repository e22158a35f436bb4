//! Semantic correlation: events joined into groups by causal rules, each group with its
//! root cause, causal chain, impact and predictions, and one trace per group.
//!
//! Every event that can be a cause (its type is a rule's cause) opens a provisional group
//! whose id derives from its own id, so its trace id is already the group's when it leaves:
//! events stream out one by one and cannot be rewritten once a later effect joins. An
//! effect joins the group of its best-matching cause (highest confidence, then latest),
//! its span's parent is that cause's span, and the link is recorded on it. A group with
//! one event is not an incident and is not counted or reported.
//!
//! Bounded: causes are remembered per (type, entity) for their rules' longest delay, at most
//! [`Limits::causes_per_key`] each; groups close after [`Limits::quiet`] of event time without
//! a new member, at most [`Limits::max_groups`] are open (the quietest closes first) and at
//! most [`Limits::max_group_events`] join one group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::Correlator;
use super::entities::{EntityIndex, FxMap};
use super::rules::{Relation, Rule};
use crate::event::{CausalLink, Correlation, Event, EventId, GroupId, Severity, SpanId, TraceId};

/// The engine's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A group with no new member for this long (event time) closes.
    pub quiet: Duration,
    /// Open groups at most.
    pub max_groups: usize,
    /// Events in one group at most; later effects start groups of their own.
    pub max_group_events: usize,
    /// Remembered causes per (cause type, relation, entity).
    pub causes_per_key: usize,
    /// Containers (and as many processes) the entity index remembers.
    pub entities: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            quiet: Duration::from_mins(5),
            max_groups: 10_000,
            max_group_events: 1_000,
            causes_per_key: 8,
            entities: 65_536,
        }
    }
}

/// A likely next effect of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The event type expected next.
    pub event_type: &'static str,
    /// 0..1.
    pub probability: f64,
    /// What would prevent it, from the group's evidence.
    pub prevention: Vec<String>,
}

/// One event of a group, as its span: what the trace exporter needs once the event itself
/// has left.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The event's id.
    pub id: EventId,
    /// Its type: the span's name.
    pub kind: String,
    /// Event time, Unix nanoseconds.
    pub timestamp: u64,
    /// Its span in the group's trace.
    pub span: Option<SpanId>,
    /// Its causal predecessor's span; `None` for the root cause.
    pub parent: Option<SpanId>,
    /// The trace context the event arrived with (an application's), linked from its span.
    pub own_context: Option<(TraceId, SpanId)>,
    /// Causes that matched in other groups: span links across traces.
    pub cross_links: Vec<(TraceId, SpanId)>,
    /// Severity.
    pub severity: Severity,
    /// Human text.
    pub message: String,
    /// What it touched.
    pub entities: crate::event::Entities,
}

/// A group as it stands: what the server and the trace exporter receive when it closes.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Its id (derived from the root cause's event id).
    pub id: GroupId,
    /// Its trace id (derived from the group id).
    pub trace_id: TraceId,
    /// The earliest cause in the rule graph.
    pub root: EventId,
    /// Member events, in arrival order.
    pub events: Vec<EventId>,
    /// The same members with what their spans need.
    pub members: Vec<Member>,
    /// Every causal link: (effect, link).
    pub chain: Vec<(EventId, CausalLink)>,
    /// 0..1.
    pub impact: f64,
    /// Likely next effects.
    pub predictions: Vec<Prediction>,
    /// 0..1: how likely at least one more effect follows, 1 - prod(1 - p) over predictions.
    pub cascade_risk: f64,
    /// Event time of the first and the last member.
    pub first_seen: u64,
    /// See `first_seen`.
    pub last_seen: u64,
    /// One line for humans.
    pub summary: String,
    root_kind: &'static str,
    kinds: HashSet<&'static str>,
    pods: HashSet<Arc<str>>,
    severity: Severity,
    evidence: Vec<String>,
    recurrence: u32,
    critical: bool,
}

/// A remembered cause.
#[derive(Clone, Debug)]
struct Cause {
    id: EventId,
    timestamp: u64,
    span: Option<SpanId>,
    severity: Severity,
    group: GroupId,
}

/// The engine.
#[derive(Debug)]
pub struct Semantic {
    node: Arc<str>,
    index: EntityIndex,
    critical: Vec<String>,
    rules: Vec<Rule>,
    by_effect: FxMap<&'static str, Vec<usize>>,
    // Per cause type: the longest delay of its rules and the lowest severity any accepts.
    cause_types: FxMap<&'static str, (Duration, Severity)>,
    limits: Limits,
    causes: FxMap<(&'static str, Relation, u64), VecDeque<Cause>>,
    groups: FxMap<GroupId, Group>,
    closed: Vec<Group>,
    recurrences: HashMap<String, u32>,
    clock: u64,
    processed: u64,
}

impl Semantic {
    /// An engine with `rules` and `limits`, stamping `node` on events that lack one.
    #[must_use]
    pub fn new(node: &str, rules: Vec<Rule>, limits: Limits) -> Self {
        let mut by_effect: FxMap<&'static str, Vec<usize>> = FxMap::default();
        let mut cause_types: FxMap<&'static str, (Duration, Severity)> = FxMap::default();
        for (i, rule) in rules.iter().enumerate() {
            by_effect.entry(rule.effect).or_default().push(i);
            let (longest, lowest) = cause_types
                .entry(rule.cause)
                .or_insert((Duration::ZERO, Severity::Critical));
            *longest = (*longest).max(rule.max_delay);
            *lowest = (*lowest).min(rule.cause_min_severity);
        }
        Self {
            node: node.into(),
            index: EntityIndex::new(limits.entities),
            critical: Vec::new(),
            rules,
            by_effect,
            cause_types,
            limits,
            causes: FxMap::default(),
            groups: FxMap::default(),
            closed: Vec::new(),
            recurrences: HashMap::new(),
            clock: 0,
            processed: 0,
        }
    }

    /// Scales down the impact of groups that touch none of `namespaces` (empty: no effect).
    #[must_use]
    pub fn with_critical_namespaces(mut self, namespaces: Vec<String>) -> Self {
        self.critical = namespaces;
        self
    }

    /// Groups closed since the last call (quiet, evicted or at shutdown), oldest first.
    pub fn take_closed(&mut self) -> Vec<Group> {
        std::mem::take(&mut self.closed)
    }

    /// Closes every open group (at shutdown).
    pub fn close_all(&mut self) {
        let mut open: Vec<Group> = self.groups.drain().map(|(_, g)| g).collect();
        open.sort_by_key(|g| (g.first_seen, g.id));
        self.closed
            .extend(open.into_iter().filter(|g| g.events.len() > 1));
    }

    /// The open group `id`.
    #[must_use]
    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id)
    }

    /// Remembered causes, over every key: the engine's main memory besides open groups.
    #[must_use]
    pub fn remembered_causes(&self) -> usize {
        self.causes.values().map(VecDeque::len).sum()
    }

    /// Open groups, including provisional one-event groups.
    #[must_use]
    pub fn open_group_slots(&self) -> usize {
        self.groups.len()
    }

    /// The best cause of `event` among remembered ones: (rule index, cause).
    fn best_cause(&self, event: &Event) -> Vec<(usize, Cause)> {
        let Some(rules) = self.by_effect.get(event.kind.as_ref()) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for &i in rules {
            let rule = &self.rules[i];
            let Some(key) = rule.relation.key(&event.entities) else {
                continue;
            };
            let Some(causes) = self.causes.get(&(rule.cause, rule.relation, key)) else {
                continue;
            };
            let max = rule.max_delay.as_nanos() as u64;
            let latest = causes.iter().rev().find(|c| {
                c.id != event.id
                    && c.severity >= rule.cause_min_severity
                    && event.timestamp >= c.timestamp
                    && event.timestamp - c.timestamp <= max
                    && self
                        .groups
                        .get(&c.group)
                        .is_some_and(|g| g.events.len() < self.limits.max_group_events)
            });
            if let Some(cause) = latest {
                found.push((i, cause.clone()));
            }
        }
        // Highest confidence first, then the latest cause.
        found.sort_by(|a, b| {
            self.rules[b.0]
                .confidence
                .total_cmp(&self.rules[a.0].confidence)
                .then(b.1.timestamp.cmp(&a.1.timestamp))
        });
        found
    }

    fn remember(&mut self, event: &Event, group: GroupId) {
        if !self.cause_types.contains_key(event.kind.as_ref()) {
            return;
        }
        for rule in &self.rules {
            if rule.cause != event.kind || event.severity < rule.cause_min_severity {
                continue;
            }
            let Some(key) = rule.relation.key(&event.entities) else {
                continue;
            };
            let causes = self
                .causes
                .entry((rule.cause, rule.relation, key))
                .or_default();
            if causes.iter().any(|c| c.id == event.id) {
                continue;
            }
            if causes.len() >= self.limits.causes_per_key {
                causes.pop_front();
            }
            causes.push_back(Cause {
                id: event.id,
                timestamp: event.timestamp,
                span: event.span_id,
                severity: event.severity,
                group,
            });
        }
    }

    /// Forgets causes older than their rules allow and closes quiet groups; run every so
    /// often, by event time.
    fn sweep(&mut self) {
        let now = self.clock;
        let cause_types = &self.cause_types;
        self.causes.retain(|(kind, _, _), causes| {
            let keep = cause_types
                .get(kind)
                .map_or(0, |(d, _)| d.as_nanos() as u64);
            causes.retain(|c| now.saturating_sub(c.timestamp) <= keep);
            !causes.is_empty()
        });
        let quiet = self.limits.quiet.as_nanos() as u64;
        let done: Vec<GroupId> = self
            .groups
            .values()
            .filter(|g| now.saturating_sub(g.last_seen) > quiet)
            .map(|g| g.id)
            .collect();
        self.close(&done);
    }

    fn close(&mut self, ids: &[GroupId]) {
        let mut closing: Vec<Group> = ids.iter().filter_map(|id| self.groups.remove(id)).collect();
        closing.sort_by_key(|g| (g.first_seen, g.id));
        self.closed
            .extend(closing.into_iter().filter(|g| g.events.len() > 1));
    }

    /// Makes room for one more group by closing the quietest.
    fn make_room(&mut self) {
        while self.groups.len() >= self.limits.max_groups {
            let Some(quietest) = self
                .groups
                .values()
                .min_by_key(|g| (g.last_seen, g.id))
                .map(|g| g.id)
            else {
                return;
            };
            self.close(&[quietest]);
        }
    }
}

fn group_id_of(root: EventId) -> GroupId {
    // The root's id is unique and non-zero; flipping a fixed pattern keeps it unique while
    // making the group id visibly different from the event id.
    GroupId::new((root.as_u128() ^ 0x5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a).to_be_bytes())
}

fn trace_id_of(group: GroupId) -> TraceId {
    TraceId::new(group.to_bytes()).unwrap_or_else(|| TraceId::new([1; 16]).expect("non-zero"))
}

fn severity_weight(severity: Severity) -> f64 {
    match severity {
        Severity::Debug => 0.1,
        Severity::Info => 0.25,
        Severity::Warning => 0.5,
        Severity::Error => 0.75,
        Severity::Critical => 1.0,
    }
}

impl Group {
    /// The group as the server receives it.
    #[must_use]
    pub fn to_proto(&self) -> crate::pb::SemanticGroup {
        crate::pb::SemanticGroup {
            group_id: self.id.to_bytes().to_vec(),
            trace_id: self.trace_id.to_bytes().to_vec(),
            root_cause_event_id: self.root.to_bytes().to_vec(),
            event_ids: self
                .events
                .iter()
                .map(|id| id.to_bytes().to_vec())
                .collect(),
            impact: self.impact,
            causal_chain: self
                .chain
                .iter()
                .map(|(_, link)| link.clone().into())
                .collect(),
            predictions: self
                .predictions
                .iter()
                .map(|p| crate::pb::Prediction {
                    event_type: p.event_type.to_owned(),
                    probability: p.probability,
                    prevention_actions: p.prevention.clone(),
                })
                .collect(),
            first_seen_unix_nano: self.first_seen,
            last_seen_unix_nano: self.last_seen,
            summary: self.summary.clone(),
            cascade_risk: self.cascade_risk,
        }
    }

    fn new(id: GroupId, root: &Event, recurrence: u32, rules: &[Rule]) -> Self {
        Self {
            root_kind: known_kind(rules, &root.kind),
            id,
            trace_id: trace_id_of(id),
            root: root.id,
            events: Vec::new(),
            members: Vec::new(),
            chain: Vec::new(),
            impact: 0.0,
            predictions: Vec::new(),
            cascade_risk: 0.0,
            first_seen: root.timestamp,
            last_seen: root.timestamp,
            summary: String::new(),
            kinds: HashSet::new(),
            pods: HashSet::new(),
            severity: Severity::Debug,
            evidence: Vec::new(),
            recurrence,
            critical: false,
        }
    }

    fn add(
        &mut self,
        event: &Event,
        parent: Option<SpanId>,
        cross_links: Vec<(TraceId, SpanId)>,
        links: &[CausalLink],
        rules: &[Rule],
        critical: &[String],
    ) {
        self.critical |= critical.is_empty()
            || critical
                .iter()
                .any(|ns| **ns == *event.entities.pod_namespace);
        self.events.push(event.id);
        let own_context = event
            .trace_id
            .filter(|t| *t != self.trace_id)
            .zip(event.parent_span_id.or(event.span_id));
        self.members.push(Member {
            id: event.id,
            kind: event.kind.to_string(),
            timestamp: event.timestamp,
            span: event.span_id,
            parent,
            own_context,
            cross_links,
            severity: event.severity,
            message: event.message.clone(),
            entities: event.entities.clone(),
        });
        self.chain
            .extend(links.iter().map(|l| (event.id, l.clone())));
        self.first_seen = self.first_seen.min(event.timestamp);
        self.last_seen = self.last_seen.max(event.timestamp);
        self.severity = self.severity.max(event.severity);
        self.kinds.insert(known_kind(rules, &event.kind));
        if !event.entities.pod_uid.is_empty() {
            self.pods.insert(Arc::clone(&event.entities.pod_uid));
        }
        if let Some(fact) = evidence(event)
            && !self.evidence.contains(&fact)
        {
            self.evidence.push(fact);
        }
        // Impact: how bad (severity) x how wide (pods touched) x how often (recurrence) x
        // where (a critical namespace, when any are configured).
        let blast = 1.0 - 0.5f64.powi(i32::try_from(self.pods.len().max(1)).unwrap_or(i32::MAX));
        let recurring = (0.8 + 0.1 * f64::from(self.recurrence.saturating_sub(1))).min(1.0);
        let criticality = if self.critical { 1.0 } else { 0.75 };
        self.impact =
            (severity_weight(self.severity) * (0.6 + 0.4 * blast) * recurring * criticality)
                .clamp(0.0, 1.0);
        // What comes next: the rules leading on from the newest member, and the spread of
        // the root cause across its workload while the group is open.
        let newest = known_kind(rules, &event.kind);
        self.predictions = rules
            .iter()
            .filter(|r| {
                r.cause == newest || (r.cause == self.root_kind && r.relation == Relation::Workload)
            })
            .map(|r| Prediction {
                event_type: r.effect,
                probability: r.confidence,
                prevention: self.evidence.clone(),
            })
            .collect();
        self.predictions.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then(a.event_type.cmp(b.event_type))
        });
        self.predictions
            .dedup_by(|a, b| a.event_type == b.event_type);
        self.cascade_risk = 1.0
            - self
                .predictions
                .iter()
                .map(|p| 1.0 - p.probability)
                .product::<f64>();
        let mut effects: Vec<&str> = self
            .kinds
            .iter()
            .copied()
            .filter(|k| *k != self.root_kind)
            .collect();
        effects.sort_unstable();
        self.summary = format!(
            "{} led to {} ({} events, {} pods)",
            self.root_kind,
            if effects.is_empty() {
                "nothing yet".to_owned()
            } else {
                effects.join(", ")
            },
            self.events.len(),
            self.pods.len()
        );
    }
}

/// The rule table's own spelling of `kind`, or `other`: group bookkeeping holds only
/// `&'static str` kinds, so event types outside the rules cannot grow it.
fn known_kind(rules: &[Rule], kind: &str) -> &'static str {
    rules
        .iter()
        .find_map(|r| {
            if r.cause == kind {
                Some(r.cause)
            } else if r.effect == kind {
                Some(r.effect)
            } else {
                None
            }
        })
        .unwrap_or("other")
}

/// A prevention action read off an event's figures.
fn evidence(event: &Event) -> Option<String> {
    use crate::event::AttrValue;
    if event.kind != "memory.oom_kill" {
        return None;
    }
    let int = |key: &str| match event.attributes.get(key) {
        Some(AttrValue::Int(n)) => Some(*n),
        _ => None,
    };
    let peak = int("memory_usage_peak_bytes").or_else(|| int("anon_rss_bytes"))?;
    let who = if event.entities.workload_name.is_empty() {
        event.entities.comm.to_string()
    } else {
        format!(
            "{}/{}",
            event.entities.pod_namespace, event.entities.workload_name
        )
    };
    let mib = |b: i64| b >> 20;
    // Head-room of a quarter over the observed peak, rounded up to 64 MiB.
    let suggested = ((peak + peak / 4) >> 26) + 1;
    Some(match int("memory_limit_bytes") {
        Some(limit) => format!(
            "raise the memory limit of {who} from {} MiB to at least {} MiB (peak observed {} MiB)",
            mib(limit),
            suggested * 64,
            mib(peak)
        ),
        None => format!(
            "give {who} a memory limit above {} MiB (peak observed {} MiB)",
            suggested * 64,
            mib(peak)
        ),
    })
}

impl Correlator for Semantic {
    fn process(&mut self, event: &mut Event) {
        if event.entities.node.is_empty() {
            event.entities.node = Arc::clone(&self.node);
        }
        let exited = event.kind == "process.exit";
        self.index.resolve(&mut event.entities, exited);
        if event.span_id.is_none() {
            event.span_id = SpanId::new(super::basic::span_bits(event.id.as_u128()).to_be_bytes());
        }
        self.clock = self.clock.max(event.timestamp);
        self.processed += 1;
        if self.processed.is_multiple_of(1024) {
            self.sweep();
        }

        let found = self.best_cause(event);
        // A cause only when some rule would accept it as one (a NOERROR answer causes nothing).
        let is_cause = self
            .cause_types
            .get(event.kind.as_ref())
            .is_some_and(|(_, lowest)| event.severity >= *lowest);
        let group_id = if let Some((_, best)) = found.first() {
            let links: Vec<CausalLink> = found
                .iter()
                .filter(|(_, c)| c.group == best.group)
                .map(|(i, c)| CausalLink {
                    cause_event_id: c.id,
                    rule: self.rules[*i].name.to_owned(),
                    confidence: self.rules[*i].confidence,
                })
                .collect();
            let cross_links = found
                .iter()
                .filter(|(_, c)| c.group != best.group)
                .filter_map(|(_, c)| Some((self.groups.get(&c.group)?.trace_id, c.span?)))
                .collect();
            let group = self
                .groups
                .get_mut(&best.group)
                .expect("a remembered cause's group is open");
            group.add(
                event,
                best.span,
                cross_links,
                &links,
                &self.rules,
                &self.critical,
            );
            if event.trace_id.is_none() {
                event.trace_id = Some(group.trace_id);
                event.parent_span_id = best.span;
            }
            event.correlation = Some(Correlation {
                group_id: group.id,
                impact: group.impact,
                causal_links: links,
            });
            Some(best.group)
        } else if is_cause {
            self.make_room();
            let id = group_id_of(event.id);
            let key = format!(
                "{}@{}",
                event.kind,
                Relation::Workload.key(&event.entities).unwrap_or_default()
            );
            let recurrence = {
                let seen = self.recurrences.entry(key).or_default();
                *seen += 1;
                *seen
            };
            if self.recurrences.len() > self.limits.max_groups * 4 {
                self.recurrences.clear();
            }
            let mut group = Group::new(id, event, recurrence, &self.rules);
            group.add(event, None, Vec::new(), &[], &self.rules, &self.critical);
            if event.trace_id.is_none() {
                event.trace_id = Some(group.trace_id);
            }
            event.correlation = Some(Correlation {
                group_id: id,
                impact: group.impact,
                causal_links: Vec::new(),
            });
            self.groups.insert(id, group);
            Some(id)
        } else {
            None
        };
        if event.trace_id.is_none() {
            event.trace_id = TraceId::new(event.id.as_u128().to_be_bytes());
        }
        if let Some(group) = group_id {
            self.remember(event, group);
        }
    }

    fn open_groups(&self) -> usize {
        self.groups.values().filter(|g| g.events.len() > 1).count()
    }

    fn take_closed(&mut self) -> Vec<Group> {
        Semantic::take_closed(self)
    }

    fn close_all(&mut self) {
        Semantic::close_all(self);
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;
    use crate::collectors::synthetic::{Scenario, SyntheticConfig, World};
    use crate::correlation::rules::builtin;

    fn synthetic(scenario: Scenario, seed: u64, count: usize) -> Vec<Event> {
        let config = SyntheticConfig {
            scenario,
            seed,
            ..SyntheticConfig::default()
        };
        let mut world = World::new(&config, "node-a".into(), 1_790_000_000_000_000_000);
        (0..count).map(|_| world.next_event()).collect()
    }

    /// Runs `events` through a fresh engine; returns them enriched and every group closed.
    fn correlate(events: &mut [Event], limits: Limits) -> Vec<Group> {
        let mut engine = Semantic::new("node-a", builtin(), limits);
        for event in events.iter_mut() {
            engine.process(event);
        }
        engine.close_all();
        engine.take_closed()
    }

    /// Where an event happened, as a reviewer names it: pod, else unit, else node.
    fn place(event: &Event) -> String {
        let e = &event.entities;
        if !e.pod_name.is_empty() {
            format!("{}/{}", e.pod_namespace, e.pod_name)
        } else if !e.unit.is_empty() {
            e.unit.to_string()
        } else {
            format!("node {}", e.node)
        }
    }

    /// Groups as a reviewer reads them: no ids, times relative to the group's start.
    fn render(groups: &[Group], events: &[Event]) -> String {
        let by_id: HashMap<EventId, &Event> = events.iter().map(|e| (e.id, e)).collect();
        let mut out = String::new();
        for (n, group) in groups.iter().enumerate() {
            let root = by_id[&group.root];
            let _ = writeln!(
                out,
                "group {}: impact {:.2}, cascade risk {:.2}; root cause {} on {}\n  summary: {}",
                n + 1,
                group.impact,
                group.cascade_risk,
                root.kind,
                place(root),
                group.summary
            );
            for id in &group.events {
                let event = by_id[id];
                let _ = write!(
                    out,
                    "  +{:>6.1}s {:<22} {}",
                    Duration::from_nanos(event.timestamp - group.first_seen).as_secs_f64(),
                    event.kind,
                    place(event)
                );
                for (_, link) in group.chain.iter().filter(|(effect, _)| effect == id) {
                    let _ = write!(
                        out,
                        "  <- {} ({}, {:.2})",
                        by_id[&link.cause_event_id].kind, link.rule, link.confidence
                    );
                }
                out.push('\n');
            }
            for prediction in &group.predictions {
                let _ = writeln!(
                    out,
                    "  predicts {} p={:.2}",
                    prediction.event_type, prediction.probability
                );
                for action in &prediction.prevention {
                    let _ = writeln!(out, "    prevent: {action}");
                }
            }
        }
        out
    }

    fn golden(name: &str, actual: &str) {
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
            std::fs::write(&path, actual).expect("writes golden file");
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_GOLDEN=1 writes it)"));
        assert!(
            expected == actual,
            "{path} differs (UPDATE_GOLDEN=1 rewrites it after review):\n--- expected\n{expected}\n--- actual\n{actual}"
        );
    }

    /// Whether `event` is part of the scenario's scripted incident rather than background.
    fn scripted(event: &Event) -> bool {
        use crate::event::AttrValue;
        let text = |key: &str| match event.attributes.get(key) {
            Some(AttrValue::Str(s)) => s.as_str(),
            _ => "",
        };
        match event.kind.as_ref() {
            "dns.query" => text("rcode") == "SERVFAIL",
            "net.tcp.connect_failed" => text("error") == "EAI_AGAIN",
            kind => ![
                "process.exec",
                "process.exit",
                "net.tcp.connect",
                "syscall.error",
            ]
            .contains(&kind),
        }
    }

    #[test]
    fn each_incident_among_noise_is_grouped_under_its_true_root_cause() {
        for (scenario, file, root_kind) in [
            (Scenario::OomCascade, "oom_cascade.txt", "memory.oom_kill"),
            (Scenario::DnsOutage, "dns_outage.txt", "dns.query"),
            (
                Scenario::RestartStorm,
                "restart_storm.txt",
                "container.exit",
            ),
            (
                Scenario::NodePressure,
                "node_pressure.txt",
                "k8s.node.pressure",
            ),
            (
                Scenario::UnitFailure,
                "unit_failure.txt",
                "block.latency_spike",
            ),
        ] {
            let mut events = synthetic(scenario, 9, 200);
            let groups = correlate(&mut events, Limits::default());
            golden(file, &render(&groups, &events));
            let group_of: HashMap<EventId, &Group> = groups
                .iter()
                .flat_map(|g| g.events.iter().map(move |id| (*id, g)))
                .collect();
            let incident: Vec<&Event> = events.iter().filter(|e| scripted(e)).collect();
            assert!(
                incident.len() >= 15,
                "{scenario:?}: the scenario scripts incidents"
            );
            for event in incident {
                let group = group_of.get(&event.id).unwrap_or_else(|| {
                    panic!("{scenario:?}: scripted {} is in no group", event.kind)
                });
                let root = events.iter().find(|e| e.id == group.root).expect("root");
                assert_eq!(
                    root.kind, root_kind,
                    "{scenario:?}: the true root, not the first event seen"
                );
            }
            for group in &groups {
                assert!(
                    group.chain.iter().all(|(effect, _)| *effect != group.root),
                    "the root has no cause"
                );
                // Every member carries the group's trace; every effect's parent is its cause.
                for id in &group.events {
                    let event = events.iter().find(|e| e.id == *id).expect("member");
                    assert_eq!(event.trace_id, Some(group.trace_id));
                    if let Some((_, link)) = group.chain.iter().find(|(effect, _)| effect == id) {
                        let cause = events
                            .iter()
                            .find(|e| e.id == link.cause_event_id)
                            .expect("cause");
                        assert_eq!(event.parent_span_id, cause.span_id);
                        assert!(cause.timestamp <= event.timestamp, "causes come first");
                    }
                }
            }
        }
    }

    #[test]
    fn a_cause_in_another_group_becomes_a_span_link() {
        let mut engine = Semantic::new("node-a", builtin(), Limits::default());
        let at = |secs: u64| 1_000_000_000_000 + secs * 1_000_000_000;
        let mut n = 0u128;
        let mut next = |kind: &str, secs: u64| {
            n += 1;
            let mut e = Event::new(EventId::from_u128(n), at(secs), kind.to_owned(), "t");
            e.entities.pod_uid = "pod-1".into();
            e.entities.container_id = "ctr-1".into();
            e
        };
        // A crash loop: exit -> restart -> back-off (group 1) ...
        let mut storm = [
            next("container.exit", 0),
            next("k8s.pod.restart", 1),
            next("k8s.pod.backoff", 6),
        ];
        for e in &mut storm {
            engine.process(e);
        }
        // ... then an OOM kill opens group 2; its restart has causes in both.
        let mut kill = next("memory.oom_kill", 200);
        let mut exit = next("container.exit", 200);
        let mut restart = next("k8s.pod.restart", 201);
        for e in [&mut kill, &mut exit, &mut restart] {
            engine.process(e);
        }
        let second = engine
            .group(kill.correlation.as_ref().expect("grouped").group_id)
            .expect("open");
        let member = second
            .members
            .iter()
            .find(|m| m.id == restart.id)
            .expect("a member");
        assert_eq!(
            member.parent, exit.span_id,
            "the parent is the best cause, in its own group"
        );
        let first_trace = storm[2].trace_id.expect("traced");
        assert_eq!(
            member.cross_links,
            vec![(first_trace, storm[2].span_id.expect("span"))]
        );
        assert_ne!(first_trace, second.trace_id);
    }

    #[test]
    fn background_events_keep_their_own_traces_and_no_group() {
        let mut events = synthetic(Scenario::Uniform, 3, 2_000);
        let groups = correlate(&mut events, Limits::default());
        assert!(
            events
                .iter()
                .all(|e| e.trace_id.is_some() && e.span_id.is_some())
        );
        let grouped: HashSet<EventId> = groups
            .iter()
            .flat_map(|g| g.events.iter().copied())
            .collect();
        for event in events.iter().filter(|e| !grouped.contains(&e.id)) {
            assert!(
                event
                    .correlation
                    .as_ref()
                    .is_none_or(|c| c.causal_links.is_empty()),
                "{} has links but no group",
                event.kind
            );
        }
    }

    #[test]
    fn memory_stays_flat_under_endless_input() {
        let limits = Limits::default();
        let mut engine = Semantic::new("node-a", builtin(), limits.clone());
        let config = SyntheticConfig {
            scenario: Scenario::OomCascade,
            seed: 5,
            ..SyntheticConfig::default()
        };
        let mut world = World::new(&config, "node-a".into(), 1_790_000_000_000_000_000);
        let mut sizes = Vec::new();
        for round in 0..6 {
            for _ in 0..50_000 {
                let mut event = world.next_event();
                engine.process(&mut event);
            }
            drop(engine.take_closed());
            sizes.push((engine.open_group_slots(), engine.remembered_causes()));
            if round > 0 {
                assert!(engine.open_group_slots() <= limits.max_groups);
            }
        }
        let (first, last) = (sizes[1], sizes[5]);
        assert!(
            last.0 <= first.0 * 2 + 16 && last.1 <= first.1 * 2 + 16,
            "open groups and remembered causes plateau: {sizes:?}"
        );
    }

    fn arbitrary_events() -> impl Strategy<Value = Vec<Event>> {
        let kinds = [
            "memory.oom_kill",
            "container.exit",
            "k8s.pod.restart",
            "k8s.pod.backoff",
            "dns.query",
            "net.tcp.connect_failed",
            "process.exec",
        ];
        prop::collection::vec((0..kinds.len(), 0..3u8, 0..60u64, 0..5u8), 1..200).prop_map(
            move |specs| {
                let mut at = 1_000_000_000_000u64;
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (kind, pod, gap, severity))| {
                        at += gap * 1_000_000_000;
                        let mut event =
                            Event::new(EventId::from_u128(i as u128 + 1), at, kinds[kind], "test");
                        event.severity = [
                            Severity::Debug,
                            Severity::Info,
                            Severity::Warning,
                            Severity::Error,
                            Severity::Critical,
                        ][usize::from(severity)];
                        event.entities.pod_uid = format!("pod-{pod}").into();
                        event.entities.container_id = format!("ctr-{pod}").into();
                        event.entities.pod_namespace = "ns".into();
                        event.entities.workload_kind = "Deployment".into();
                        event.entities.workload_name = "web".into();
                        event
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn grouping_is_deterministic_given_the_input_order(events in arbitrary_events()) {
            let (mut a, mut b) = (events.clone(), events);
            let first = correlate(&mut a, Limits::default());
            let second = correlate(&mut b, Limits::default());
            prop_assert_eq!(first, second);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn no_group_exceeds_its_caps(events in arbitrary_events()) {
            let limits = Limits { quiet: Duration::from_mins(2), max_groups: 3, max_group_events: 4, causes_per_key: 2, entities: 8 };
            let mut engine = Semantic::new("node-a", builtin(), limits.clone());
            for mut event in events {
                engine.process(&mut event);
                prop_assert!(engine.open_group_slots() <= limits.max_groups);
                prop_assert!(engine.groups.values().all(|g| g.events.len() <= limits.max_group_events));
                prop_assert!(engine.causes.values().all(|c| c.len() <= limits.causes_per_key));
            }
            engine.close_all();
            prop_assert!(engine.take_closed().iter().all(|g| g.events.len() <= limits.max_group_events && g.events.len() > 1));
        }
    }
}
