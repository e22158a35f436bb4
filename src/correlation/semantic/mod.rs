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
//! An event that no rule explains but that is at least a warning joins an open group that
//! touched the same pod, container or unit within [`Limits::join_window`]: the group gains a
//! related member (its span's parent is the group's latest span on that entity) but no
//! causal link, since the engine cannot say which caused which.
//!
//! Bounded: causes are remembered per (type, entity) for their rules' longest delay, at most
//! [`Limits::causes_per_key`] each; groups close after [`Limits::quiet`] of event time without
//! a new member (or the longest delay of the rules their newest causal member is the cause
//! of, when that is longer: a memory growth waits for its OOM kill), at most [`Limits::max_groups`] are open (the quietest closes first) and at
//! most [`Limits::max_group_events`] join one group.

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

mod app;
mod group;
mod predict;

use super::Correlator;
use super::deps::Dependencies;
use super::entities::EntityIndex;
use super::rules::{Condition, Relation, Rule};
use crate::bounded::{Bounded, FxMap};
use crate::event::{
    CausalLink, Correlation, Event, EventId, GroupId, Incident, Member, Severity, SpanId, TraceId,
};
pub use group::Criticality;
use group::Group;

/// The engine's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A group with no new member for this long (event time) closes, unless its newest
    /// causal member is the cause of a rule with a longer delay: then it waits that long.
    pub quiet: Duration,
    /// Open groups at most.
    pub max_groups: usize,
    /// Events in one group at most; later effects start groups of their own. At most a
    /// quarter of them may be related (shared-entity) members.
    pub max_group_events: usize,
    /// Events in all open groups together at most (each costs a few hundred bytes); beyond
    /// it the quietest sixteenth of the groups close.
    pub max_open_events: usize,
    /// Remembered causes per (cause type, relation, entity).
    pub causes_per_key: usize,
    /// Containers (and as many processes) the entity index remembers; also the most
    /// (entity, group) pairs kept for shared-entity joins.
    pub entities: usize,
    /// How long after a group last touched an entity a warning on that entity joins it;
    /// zero turns shared-entity joins off.
    pub join_window: Duration,
    /// How late (in event time behind the newest event seen) a cause may arrive and still
    /// join the group of its effect, as its new root when the effect was the root.
    pub late_window: Duration,
    /// Keep incident members for the join with applications' spans from the start (the
    /// `otel` collector is on), not only from the first application event.
    pub app_join: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            quiet: Duration::from_mins(5),
            max_groups: 10_000,
            max_group_events: 1_000,
            max_open_events: 100_000,
            causes_per_key: 8,
            entities: 16_384,
            join_window: Duration::from_mins(1),
            late_window: Duration::from_mins(1),
            app_join: false,
        }
    }
}

/// A remembered cause.
#[derive(Clone, Debug)]
struct Cause {
    id: EventId,
    timestamp: u64,
    span: Option<SpanId>,
    group: GroupId,
}

/// A group member that a cause arriving late may still explain.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    id: EventId,
    timestamp: u64,
    group: GroupId,
}

/// The rules an event type takes part in.
#[derive(Debug, Default)]
struct KindRules {
    effects: Vec<usize>,
    causes: Vec<usize>,
    /// The distinct conditions of their sides for this type.
    conditions: Vec<usize>,
    /// The longest delay of the rules it is the cause of (nanoseconds): a group whose
    /// newest causal member is of this type stays open that long, so that a memory growth
    /// still roots the OOM kill it predicts half an hour later.
    hold: u64,
}

impl KindRules {
    fn uses(&mut self, condition: usize) {
        if !self.conditions.contains(&condition) {
            self.conditions.push(condition);
        }
    }
}

/// A group not built yet: its one event, and what building it needs.
#[derive(Debug, PartialEq)]
struct Seed {
    /// The member its event becomes, of the rule table's type `kind`.
    member: Member,
    kind: &'static str,
    /// The service its event serves (the group's reach), and what it is evidence of.
    service: Option<String>,
    fact: Option<predict::Evidence>,
    recurrence: u32,
    critical: bool,
}

/// How much later than its effect a cause may be stamped: collectors stamp what they see
/// from different clocks and at different moments (the kubelet's event and the pod's
/// status change for one failure are a few hundred milliseconds apart either way).
const SKEW: u64 = 1_000_000_000;

/// An entity's keys under one rule's relation (0: none).
type Keys = [u64; 3];

/// One event's keys under each relation, as a cause and as an effect, each computed once
/// (a `callee` key looks the server up; many rules share a relation).
#[derive(Default)]
struct KeyCache {
    cause: [Option<Keys>; 8],
    effect: [Option<Keys>; 8],
}

/// Where a group last touched an entity, for shared-entity joins.
#[derive(Clone, Copy, Debug)]
struct Touch {
    group: GroupId,
    span: Option<SpanId>,
    timestamp: u64,
}

/// Relations a related event may share with a group, most specific first.
const JOIN_ON: [Relation; 3] = [Relation::Container, Relation::Pod, Relation::Unit];

/// The engine.
#[derive(Debug)]
pub struct Semantic {
    node: Arc<str>,
    index: EntityIndex,
    critical: Criticality,
    // Pods (by key) a label made critical, for their events that carry no labels.
    critical_pods: Bounded<u64, ()>,
    touched: FxMap<(Relation, u64), Touch>,
    directory: Option<Arc<crate::metadata::PodDirectory>>,
    rules: Vec<Rule>,
    // Per event type: the rules it is the effect and the cause of, and their conditions.
    by_kind: FxMap<&'static str, KindRules>,
    // The rules' distinct conditions, each side of each rule by index into this.
    conditions: Vec<Condition>,
    cause_condition: Vec<usize>,
    effect_condition: Vec<usize>,
    deps: Dependencies,
    limits: Limits,
    // Rules whose cause sides are alike (type, condition, relation) share one class, and
    // a cause is remembered once per class and key, not once per rule; likewise effects.
    cause_class: Vec<usize>,
    effect_class: Vec<usize>,
    // Per cause class: how long its causes are kept (the longest delay of its rules).
    class_keep: Vec<u64>,
    // Remembered causes by (cause class, key of the entity the relation names), newest
    // last; inline, since most keys see one or two.
    causes: FxMap<(usize, u64), SmallVec<[Cause; 2]>>,
    // Group members by (effect class, key) for which a cause may still arrive late.
    waiting: FxMap<(usize, u64), SmallVec<[Waiting; 2]>>,
    // DNS queries by lookup (client, transaction, name) until their answer comes,
    // direct-mapped: an answer follows its query within moments, and most answers are
    // fine and never ask, so a newer query simply takes an older one's slot.
    questions: Vec<Option<(u64, Question)>>,
    groups: FxMap<GroupId, Group>,
    closed: Vec<Incident>,
    // Groups opened per (cause type, workload), for recurrence.
    recurrences: FxMap<u64, u32>,
    // Causes at info level and effects still waiting for a cause: the groups they would
    // root, built only when another event joins (most never are).
    // Boxed: the map moves its entries as it rehashes, and a seed is an event's size.
    seeds: Bounded<GroupId, Box<Seed>>,
    // Seeds absorbed into an open group, to the group: what remembered causes and waiting
    // members of the seed name now lives there.
    absorbed: Bounded<GroupId, GroupId>,
    clock: u64,
    processed: u64,
    open_events: usize,
    // Whether applications' spans or logs (the otel collector's) have been seen.
    apps: bool,
    // Application spans and the incident members on their entities, for the join.
    app: app::AppJoin,
    // The rule lists of the event in hand (effects, causes), kept to reuse their memory.
    scratch: (Vec<usize>, Vec<usize>),
}

impl Semantic {
    /// An engine with `rules` and `limits`, stamping `node` on events that lack one.
    #[must_use]
    pub fn new(node: &str, rules: Vec<Rule>, limits: Limits) -> Self {
        let app_join = limits.app_join;
        let mut by_kind: FxMap<&'static str, KindRules> = FxMap::default();
        let mut conditions: Vec<Condition> = Vec::new();
        let mut intern = |condition: &Condition| {
            conditions
                .iter()
                .position(|c| c == condition)
                .unwrap_or_else(|| {
                    conditions.push(condition.clone());
                    conditions.len() - 1
                })
        };
        let (mut cause_condition, mut effect_condition) = (Vec::new(), Vec::new());
        let (mut cause_sides, mut effect_sides) = (Vec::new(), Vec::new());
        let (mut cause_class, mut effect_class, mut class_keep) =
            (Vec::new(), Vec::new(), Vec::new());
        let class = |sides: &mut Vec<_>, side| {
            sides.iter().position(|s| *s == side).unwrap_or_else(|| {
                sides.push(side);
                sides.len() - 1
            })
        };
        for (i, rule) in rules.iter().enumerate() {
            let (cause, effect) = (intern(&rule.cause_when), intern(&rule.effect_when));
            cause_condition.push(cause);
            effect_condition.push(effect);
            let c = class(&mut cause_sides, (rule.cause, cause, rule.relation));
            if c == class_keep.len() {
                class_keep.push(0);
            }
            class_keep[c] = class_keep[c].max(rule.max_delay.as_nanos() as u64);
            cause_class.push(c);
            effect_class.push(class(
                &mut effect_sides,
                (rule.effect, effect, rule.relation),
            ));
            let of_effect = by_kind.entry(rule.effect).or_default();
            of_effect.effects.push(i);
            of_effect.uses(effect);
            let of_cause = by_kind.entry(rule.cause).or_default();
            of_cause.hold = of_cause.hold.max(rule.max_delay.as_nanos() as u64);
            of_cause.causes.push(i);
            of_cause.uses(cause);
        }
        Self {
            node: node.into(),
            index: EntityIndex::new(limits.entities),
            critical: Criticality::default(),
            critical_pods: Bounded::new(limits.entities),
            touched: FxMap::default(),
            directory: None,
            rules,
            by_kind,
            conditions,
            cause_condition,
            effect_condition,
            cause_class,
            effect_class,
            class_keep,
            deps: Dependencies::new(limits.entities),
            questions: vec![None; (limits.entities / 4).max(1).next_power_of_two()],
            seeds: Bounded::new(limits.entities / 4),
            absorbed: Bounded::new(limits.entities / 4),
            limits,
            causes: FxMap::default(),
            waiting: FxMap::default(),
            groups: FxMap::default(),
            closed: Vec::new(),
            recurrences: FxMap::default(),
            clock: 0,
            processed: 0,
            open_events: 0,
            apps: false,
            app: app::AppJoin::new(app_join),
            scratch: (Vec::new(), Vec::new()),
        }
    }

    /// Scales down the impact of groups that touch nothing `critical` names.
    #[must_use]
    pub fn with_criticality(mut self, critical: Criticality) -> Self {
        self.critical = critical;
        self
    }

    /// Resolves containers the entity index has not seen through `directory` (filled by
    /// the `kubeapi` collector), and reads pod labels there for criticality.
    #[must_use]
    pub fn with_directory(mut self, directory: Arc<crate::metadata::PodDirectory>) -> Self {
        self.index.set_directory(Arc::clone(&directory));
        self.directory = Some(directory);
        self
    }

    /// Whether `event` touches something critical (always, when nothing is configured).
    fn is_critical(&mut self, event: &Event) -> bool {
        let c = &self.critical;
        if c.is_empty() {
            return true;
        }
        let e = &event.entities;
        if c.namespaces.iter().any(|ns| **ns == *e.pod_namespace)
            || c.units.iter().any(|u| **u == *e.unit)
        {
            return true;
        }
        let pod = Relation::Pod.key(e);
        if c.by_labels(event) {
            if let Some(pod) = pod {
                self.critical_pods.insert(pod, ());
            }
            return true;
        }
        if pod.is_some_and(|pod| self.critical_pods.get(&pod).is_some()) {
            return true;
        }
        // The kubeapi collector's view of the pod's labels.
        let labels = self
            .directory
            .as_ref()
            .filter(|_| !c.labels.is_empty() && !e.pod_uid.is_empty())
            .and_then(|d| d.pod(&e.pod_uid));
        labels.is_some_and(|meta| {
            c.labels.iter().any(|(key, value)| {
                meta.label(key)
                    .is_some_and(|v| value.as_ref().is_none_or(|want| want == v))
            })
        })
    }

    /// Remembers that `group` touched `event`'s entities, for shared-entity joins.
    fn touch(&mut self, event: &Event, group: GroupId) {
        if self.limits.join_window.is_zero() {
            return;
        }
        for relation in JOIN_ON {
            let Some(key) = relation.key(&event.entities) else {
                continue;
            };
            if self.touched.len() >= self.limits.entities
                && !self.touched.contains_key(&(relation, key))
            {
                continue;
            }
            self.touched.insert(
                (relation, key),
                Touch {
                    group,
                    span: event.span_id,
                    timestamp: event.timestamp,
                },
            );
        }
    }

    /// The open group `event` shares an entity with lately, and on which entity.
    fn shared(&self, event: &Event) -> Option<(Touch, Relation)> {
        let window = self.limits.join_window.as_nanos() as u64;
        JOIN_ON.iter().find_map(|&relation| {
            let touch = self
                .touched
                .get(&(relation, relation.key(&event.entities)?))?;
            let open = self.groups.get(&touch.group).is_some_and(|g| {
                g.incident.events.len() < self.limits.max_group_events
                    && g.related < self.limits.max_group_events / 4
            });
            (open && event.timestamp.abs_diff(touch.timestamp) <= window)
                .then_some((*touch, relation))
        })
    }

    /// Groups closed since the last call (quiet, evicted or at shutdown), oldest first.
    pub fn take_closed(&mut self) -> Vec<Incident> {
        std::mem::take(&mut self.closed)
    }

    /// Closes every open group (at shutdown).
    pub fn close_all(&mut self) {
        let open: Vec<Group> = self.groups.drain().map(|(_, g)| g).collect();
        self.finish(open);
    }

    /// Hands closing groups over, oldest first, summarised; one-event groups are dropped.
    fn finish(&mut self, mut closing: Vec<Group>) {
        let members: usize = closing.iter().map(|g| g.incident.events.len()).sum();
        self.open_events = self.open_events.saturating_sub(members);
        closing.retain(|g| g.incident.events.len() > 1);
        closing.sort_by_key(|g| (g.incident.first_seen, g.incident.id));
        let (rules, apps) = (&self.rules, self.apps);
        self.closed
            .extend(closing.into_iter().map(|group| group.close(rules, apps)));
    }

    /// The open group `id`.
    #[must_use]
    pub fn group(&self, id: GroupId) -> Option<&Incident> {
        self.groups.get(&id).map(|g| &g.incident)
    }

    /// Remembered causes, over every key: the engine's main memory besides open groups.
    #[must_use]
    pub fn remembered_causes(&self) -> usize {
        self.causes.values().map(SmallVec::len).sum()
    }

    /// Open groups, including provisional one-event groups.
    #[must_use]
    pub fn open_group_slots(&self) -> usize {
        self.groups.len()
    }

    /// The keys of `event` as the cause of rule `i`: the entity its relation names, or for
    /// `callee` the server the event happened to.
    fn cause_keys(&self, i: usize, event: &Event, cache: &mut KeyCache) -> Keys {
        let relation = self.rules[i].relation;
        if let Some(keys) = cache.cause[relation as usize] {
            return keys;
        }
        let keys = match relation {
            Relation::Callee => {
                let mut keys = [0; 3];
                for (slot, key) in keys.iter_mut().zip(self.deps.identity(event).keys()) {
                    *slot = key;
                }
                keys
            }
            relation => [relation.key(&event.entities).unwrap_or(0), 0, 0],
        };
        cache.cause[relation as usize] = Some(keys);
        keys
    }

    /// The keys of `event` as the effect of rule `i`: the entity its relation names, for
    /// `callee` the server the event called, for `node_pods` its node when it is a pod's.
    fn effect_keys(&self, i: usize, event: &Event, cache: &mut KeyCache) -> Keys {
        let relation = self.rules[i].relation;
        if let Some(keys) = cache.effect[relation as usize] {
            return keys;
        }
        let keys = match relation {
            Relation::Callee => {
                let mut keys = [0; 3];
                if let Some(server) = self.deps.callee(event) {
                    for (slot, key) in keys.iter_mut().zip(server.keys()) {
                        *slot = key;
                    }
                }
                keys
            }
            Relation::NodePods
                if event.entities.pod_uid.is_empty() && event.entities.pod_name.is_empty() =>
            {
                [0; 3]
            }
            relation => [relation.key(&event.entities).unwrap_or(0), 0, 0],
        };
        cache.effect[relation as usize] = Some(keys);
        keys
    }

    /// The rules `event` can be the effect of, and those it can be the cause of: by its
    /// type, then by their conditions, each distinct condition tested once.
    fn rules_of(&self, event: &Event, effects: &mut Vec<usize>, causes: &mut Vec<usize>) {
        effects.clear();
        causes.clear();
        let Some(of) = self.by_kind.get(event.kind.as_ref()) else {
            return;
        };
        // A handful of distinct conditions per type: tested once each, on the stack.
        let mut held = [false; 16];
        for (slot, &c) in held.iter_mut().zip(&of.conditions) {
            *slot = self.conditions[c].holds(event);
        }
        let holds = |c: usize| match of.conditions.iter().position(|&x| x == c) {
            Some(at) if at < held.len() => held[at],
            _ => self.conditions[c].holds(event),
        };
        effects.extend(
            of.effects
                .iter()
                .copied()
                .filter(|&i| holds(self.effect_condition[i])),
        );
        causes.extend(
            of.causes
                .iter()
                .copied()
                .filter(|&i| holds(self.cause_condition[i])),
        );
    }

    /// The rule table's own spelling of `kind`, or `other`: group bookkeeping holds only
    /// `&'static str` kinds, so event types outside the rules cannot grow it.
    fn kind(&self, kind: &str) -> &'static str {
        self.by_kind
            .get_key_value(kind)
            .map_or("other", |(k, _)| *k)
    }

    /// Whether some rule takes events of type `kind` as its effect.
    fn is_effect_type(&self, kind: &str) -> bool {
        self.by_kind
            .get(kind)
            .is_some_and(|of| !of.effects.is_empty())
    }

    /// Where the group `id` lives now: the group that absorbed it, if it was a seed.
    fn live(&self, id: GroupId) -> GroupId {
        self.absorbed.get(&id).copied().unwrap_or(id)
    }

    fn has_room(&self, group: GroupId) -> bool {
        let group = self.live(group);
        match self.groups.get(&group) {
            Some(g) => g.incident.events.len() < self.limits.max_group_events,
            None => self.seeds.get(&group).is_some(),
        }
    }

    /// The causes of `event` among remembered ones, best first: (rule index, cause).
    fn best_cause(
        &self,
        event: &Event,
        effect_rules: &[usize],
        cache: &mut KeyCache,
    ) -> Vec<(usize, Cause)> {
        let mut found = Vec::new();
        for &i in effect_rules {
            let rule = &self.rules[i];
            let max = rule.max_delay.as_nanos() as u64;
            let latest = self
                .effect_keys(i, event, cache)
                .into_iter()
                .filter(|key| *key != 0)
                .filter_map(|key| self.causes.get(&(self.cause_class[i], key)))
                .flat_map(|causes| causes.iter().rev())
                .filter(|c| {
                    c.id != event.id
                        && event.timestamp + SKEW >= c.timestamp
                        && event.timestamp.saturating_sub(c.timestamp) <= max
                        && self.has_room(c.group)
                })
                .max_by_key(|c| c.timestamp);
            if let Some(cause) = latest {
                let mut cause = cause.clone();
                cause.group = self.live(cause.group);
                found.push((i, cause));
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

    /// The member of an open group that `event`, arriving late, caused: (rule index, it).
    /// The effect happened after the cause within the rule's delay, and the cause is at
    /// most `late_window` behind the newest event seen.
    fn late_effect(
        &self,
        event: &Event,
        cause_rules: &[usize],
        cache: &mut KeyCache,
    ) -> Option<(usize, Waiting)> {
        let late = self.limits.late_window.as_nanos() as u64;
        if self.clock.saturating_sub(event.timestamp) > late {
            return None;
        }
        let mut best: Option<(usize, Waiting)> = None;
        for &i in cause_rules {
            let rule = &self.rules[i];
            let max = rule.max_delay.as_nanos() as u64;
            for key in self.cause_keys(i, event, cache) {
                let Some(waiting) = (key != 0)
                    .then(|| self.waiting.get(&(self.effect_class[i], key)))
                    .flatten()
                else {
                    continue;
                };
                for w in waiting {
                    if w.id == event.id
                        || w.timestamp + SKEW < event.timestamp
                        || w.timestamp.saturating_sub(event.timestamp) > max
                        || !self.has_room(w.group)
                    {
                        continue;
                    }
                    let better = best.as_ref().is_none_or(|(j, b)| {
                        rule.confidence
                            .total_cmp(&self.rules[*j].confidence)
                            .then(b.timestamp.cmp(&w.timestamp))
                            .is_gt()
                    });
                    if better {
                        best = Some((
                            i,
                            Waiting {
                                group: self.live(w.group),
                                ..*w
                            },
                        ));
                    }
                }
            }
        }
        best
    }

    fn remember(
        &mut self,
        event: &Event,
        group: GroupId,
        cause_rules: &[usize],
        cache: &mut KeyCache,
    ) {
        for &i in cause_rules {
            for key in self.cause_keys(i, event, cache) {
                if key == 0 {
                    continue;
                }
                let cause = Cause {
                    id: event.id,
                    timestamp: event.timestamp,
                    span: event.span_id,
                    group,
                };
                let causes = self.causes.entry((self.cause_class[i], key)).or_default();
                keep_newest(causes, cause, self.limits.causes_per_key, |c| c.id);
            }
        }
    }

    /// Remembers a member of `group` for causes that may still arrive late.
    fn wait_for_late_causes(
        &mut self,
        event: &Event,
        group: GroupId,
        effect_rules: &[usize],
        cache: &mut KeyCache,
    ) {
        for &i in effect_rules {
            for key in self.effect_keys(i, event, cache) {
                if key == 0 {
                    continue;
                }
                let member = Waiting {
                    id: event.id,
                    timestamp: event.timestamp,
                    group,
                };
                let waiting = self.waiting.entry((self.effect_class[i], key)).or_default();
                keep_newest(waiting, member, self.limits.causes_per_key, |w| w.id);
            }
        }
    }

    /// Forgets causes older than their rules allow and closes quiet groups; run every so
    /// often, by event time.
    fn sweep(&mut self) {
        let now = self.clock;
        let class_keep = &self.class_keep;
        self.causes.retain(|(c, _), causes| {
            let keep = class_keep[*c];
            causes.retain(|c| now.saturating_sub(c.timestamp) <= keep);
            !causes.is_empty()
        });
        let late = self.limits.late_window.as_nanos() as u64;
        self.waiting.retain(|_, waiting| {
            waiting.retain(|w| now.saturating_sub(w.timestamp) <= late);
            !waiting.is_empty()
        });
        let window = self.limits.join_window.as_nanos() as u64;
        self.touched
            .retain(|_, t| now.saturating_sub(t.timestamp) <= window);
        if self.app.is_on() {
            self.app.sweep(now, late);
        }
        let quiet = self.limits.quiet.as_nanos() as u64;
        let by_kind = &self.by_kind;
        let done: Vec<GroupId> = self
            .groups
            .values()
            .filter(|g| {
                let hold = by_kind.get(g.newest).map_or(0, |k| k.hold);
                now.saturating_sub(g.incident.last_seen) > quiet.max(hold)
            })
            .map(|g| g.incident.id)
            .collect();
        self.close(&done);
    }

    fn close(&mut self, ids: &[GroupId]) {
        let closing: Vec<Group> = ids.iter().filter_map(|id| self.groups.remove(id)).collect();
        self.finish(closing);
    }

    /// Closes the quietest sixteenth of the open groups when there are `max_groups` of them
    /// or `max_open_events` members: one scan makes room for many new groups.
    fn make_room(&mut self, events: usize) {
        if self.groups.len() < self.limits.max_groups
            && self.open_events + events <= self.limits.max_open_events
        {
            return;
        }
        let mut by_quiet: Vec<(u64, GroupId)> = self
            .groups
            .values()
            .map(|g| (g.incident.last_seen, g.incident.id))
            .collect();
        let n = (by_quiet.len() / 16).max(1).min(by_quiet.len());
        if n == 0 {
            return;
        }
        by_quiet.select_nth_unstable(n - 1);
        let quietest: Vec<GroupId> = by_quiet[..n].iter().map(|(_, id)| *id).collect();
        self.close(&quietest);
    }
}

impl Semantic {
    /// Adds `event` to the open group `id` and stamps the group on it.
    fn join(&mut self, event: &mut Event, id: GroupId, join: Join) -> GroupId {
        let critical = self.is_critical(event);
        let kind = self.kind(&event.kind);
        self.build(id);
        let group = self
            .groups
            .get_mut(&id)
            .expect("a remembered cause or touch names an open group or a seed");
        let parent = join.parent;
        let links = join.links.clone();
        group.add(event, kind, join, critical);
        self.open_events += 1;
        if event.trace_id.is_none() {
            event.trace_id = Some(group.incident.trace_id);
            event.parent_span_id = parent;
        }
        event.correlation = Some(Correlation {
            group_id: group.incident.id,
            impact: group.incident.impact,
            causal_links: links,
        });
        id
    }

    /// How many groups `event`'s type has opened in its workload, this one included.
    fn recurrence(&mut self, event: &Event) -> u32 {
        let key = crate::bounded::key_parts(&[
            event.kind.as_bytes(),
            &Relation::Workload
                .key(&event.entities)
                .unwrap_or_default()
                .to_le_bytes(),
        ]);
        if self.recurrences.len() > self.limits.max_groups * 4 {
            self.recurrences.clear();
        }
        let seen = self.recurrences.entry(key).or_default();
        *seen += 1;
        *seen
    }

    /// Plants the group `event` would root, to be built when another event joins it.
    fn seed(&mut self, event: &mut Event) -> GroupId {
        let id = group_id_of(event.id);
        let recurrence = self.recurrence(event);
        let critical = self.is_critical(event);
        if event.trace_id.is_none() {
            event.trace_id = Some(trace_id_of(id));
        }
        let e = &event.entities;
        let width = usize::from(!e.pod_uid.is_empty() || !e.pod_name.is_empty())
            + usize::from(
                event
                    .attributes
                    .get(crate::event::keys::SERVICE_NAME)
                    .is_some(),
            )
            + usize::from(!e.unit.is_empty());
        event.correlation = Some(Correlation {
            group_id: id,
            impact: group::impact(event.severity, width, recurrence, critical),
            causal_links: Vec::new(),
        });
        // What building the group reads, and no more: the member, the service (its reach)
        // and the evidence; not the event.
        let (own_context, app) = group::contexts(event, trace_id_of(id));
        let member = Member {
            id: event.id,
            kind: event.kind.clone(),
            timestamp: event.timestamp,
            span: event.span_id,
            parent: None,
            own_context,
            cross_links: Vec::new(),
            app,
            joined_on: None,
            severity: event.severity,
            message: event.message.clone(),
            entities: event.entities.clone(),
        };
        let seed = Seed {
            member,
            kind: self.kind(&event.kind),
            service: event
                .attributes
                .text(crate::event::keys::SERVICE_NAME)
                .map(str::to_owned),
            fact: predict::evidence(event),
            recurrence,
            critical,
        };
        self.seeds.insert(id, Box::new(seed));
        id
    }

    /// Builds the group `id` from its seed, if it is one.
    fn build(&mut self, id: GroupId) {
        if self.groups.contains_key(&id) {
            return;
        }
        let Some(seed) = self.seeds.take(&id) else {
            return;
        };
        // Its root, and the event that joins it.
        self.make_room(2);
        let seed = *seed;
        let root = (seed.member.id, seed.member.timestamp);
        let mut group = Group::new(id, root, seed.kind, seed.recurrence);
        let service = seed.service.as_deref();
        group.add_member(
            Box::new(seed.member),
            seed.kind,
            Vec::new(),
            service,
            seed.fact,
            seed.critical,
        );
        self.open_events += 1;
        self.groups.insert(id, group);
    }

    /// Opens a provisional group rooted at the cause `event`.
    fn open(&mut self, event: &mut Event) -> GroupId {
        self.make_room(1);
        let id = group_id_of(event.id);
        let recurrence = self.recurrence(event);
        let critical = self.is_critical(event);
        let kind = self.kind(&event.kind);
        let mut group = Group::new(id, (event.id, event.timestamp), kind, recurrence);
        group.add(event, kind, Join::default(), critical);
        self.open_events += 1;
        if event.trace_id.is_none() {
            event.trace_id = Some(group.incident.trace_id);
        }
        event.correlation = Some(Correlation {
            group_id: id,
            impact: group.incident.impact,
            causal_links: Vec::new(),
        });
        self.groups.insert(id, group);
        id
    }
}

impl Semantic {
    /// Joins `event` to the group of its best cause in `found`, linked to every cause it
    /// has there and span-linked to those in other groups.
    fn join_causes(&mut self, event: &mut Event, found: &mut [(usize, Cause)]) -> GroupId {
        self.absorb_seed(found);
        let best = &found[0].1;
        let links: Vec<CausalLink> = found
            .iter()
            .filter(|(_, c)| c.group == best.group)
            .map(|(i, c)| CausalLink {
                cause_event_id: c.id,
                rule: self.rules[*i].name.into(),
                confidence: self.rules[*i].confidence,
            })
            .collect();
        let cross_links = found
            .iter()
            .filter(|(_, c)| c.group != best.group)
            .filter_map(|(_, c)| Some((self.groups.get(&c.group)?.incident.trace_id, c.span?)))
            .collect();
        let join = Join {
            parent: best.span,
            cross_links,
            links,
            joined_on: None,
        };
        self.join(event, best.group, join)
    }

    /// When the best cause in `found` is a seed (one routine event, no group yet) and
    /// another cause is in an open incident, the seed joins that incident, under that
    /// cause, rather than starting a second one: a crash loop's next missing file is the
    /// same incident as the first. Its event already went out with the seed's trace id,
    /// which its span keeps as a link.
    fn absorb_seed(&mut self, found: &mut [(usize, Cause)]) {
        let seed_id = found[0].1.group;
        if self.groups.contains_key(&seed_id) {
            return;
        }
        let Some((into, parent)) = found[1..]
            .iter()
            .find(|(_, c)| self.groups.contains_key(&c.group))
            .map(|(_, c)| (c.group, c.span))
        else {
            return;
        };
        // Room for the seed and then the effect that joins.
        let room = self
            .groups
            .get(&into)
            .is_some_and(|g| g.incident.events.len() + 2 <= self.limits.max_group_events);
        if !room || self.open_events + 2 > self.limits.max_open_events {
            return;
        }
        let Some(seed) = self.seeds.take(&seed_id) else {
            return;
        };
        let seed = *seed;
        let mut member = seed.member;
        member.parent = parent;
        member.own_context = member.span.map(|span| (trace_id_of(seed_id), span));
        let group = self.groups.get_mut(&into).expect("checked above");
        group.add_member(
            Box::new(member),
            seed.kind,
            Vec::new(),
            seed.service.as_deref(),
            seed.fact,
            seed.critical,
        );
        self.open_events += 1;
        self.absorbed.insert(seed_id, into);
        for (_, cause) in found.iter_mut() {
            if cause.group == seed_id {
                cause.group = into;
            }
        }
    }

    fn question_slot(&self, lookup: u64) -> usize {
        // The key is a mixed hash already: its low bits pick the slot.
        lookup as usize & (self.questions.len() - 1)
    }

    /// A DNS query waits for its answer; a failed answer that joined a group brings its
    /// query along.
    fn pair_question(&mut self, event: &Event, group_id: Option<GroupId>) {
        if event.kind == "dns.query" && group_id.is_none() {
            if let Some(lookup) = lookup_key(event) {
                let slot = self.question_slot(lookup);
                self.questions[slot] = Some((
                    lookup,
                    Question {
                        id: event.id,
                        timestamp: event.timestamp,
                        span: event.span_id,
                    },
                ));
            }
        } else if let Some(group) = group_id
            && event.kind == "dns.response"
            && let Some(lookup) = lookup_key(event)
            && let slot = self.question_slot(lookup)
            && self.questions[slot].is_some_and(|(key, _)| key == lookup)
            && let Some((_, query)) = self.questions[slot].take()
        {
            self.build(group);
            if self.open_events < self.limits.max_open_events
                && let Some(g) = self.groups.get_mut(&group)
            {
                g.add_question(question(&query, event));
                self.open_events += 1;
            }
        }
    }

    /// Adds `event`, a cause that arrived after its effect `effect` had joined a group, to
    /// that group: as its new root when the effect was the root, else as one more cause.
    fn adopt(&mut self, event: &mut Event, i: usize, effect: Waiting) -> GroupId {
        let critical = self.is_critical(event);
        let kind = self.kind(&event.kind);
        self.build(effect.group);
        let rule = &self.rules[i];
        let link = CausalLink {
            cause_event_id: event.id,
            rule: rule.name.into(),
            confidence: rule.confidence,
        };
        let group = self
            .groups
            .get_mut(&effect.group)
            .expect("a waiting member names an open group or a seed");
        group.add_late_cause(event, kind, effect.id, link, critical);
        self.open_events += 1;
        if event.trace_id.is_none() {
            event.trace_id = Some(group.incident.trace_id);
        }
        event.correlation = Some(Correlation {
            group_id: group.incident.id,
            impact: group.incident.impact,
            causal_links: Vec::new(),
        });
        effect.group
    }
}

impl Semantic {
    /// An event that joined a group through its own cause may also be the late cause of
    /// an effect that arrived before it and is still alone (the OOM killer's SIGKILL,
    /// reported a moment before the kill it is part of, when the kill itself has a cause
    /// such as a memory growth): that effect moves into the group, under this event. An
    /// effect already in an incident of its own is left there.
    fn pull_lone_effect(
        &mut self,
        event: &Event,
        into: GroupId,
        cause_rules: &[usize],
        cache: &mut KeyCache,
    ) {
        let Some((i, effect)) = self.late_effect(event, cause_rules, cache) else {
            return;
        };
        let from = effect.group;
        let room = self
            .groups
            .get(&into)
            .is_some_and(|g| g.incident.events.len() < self.limits.max_group_events);
        if from == into || !room || self.open_events >= self.limits.max_open_events {
            return;
        }
        let (member, kind, critical) = if let Some(group) = self.groups.get(&from) {
            if group.incident.events.len() != 1 {
                return;
            }
            let critical = group.critical;
            let Some(group) = self.groups.remove(&from) else {
                return;
            };
            let kind = group.root_kind;
            let Some(member) = group.incident.members.into_iter().next() else {
                return;
            };
            (member, kind, critical)
        } else if let Some(seed) = self.seeds.take(&from) {
            // A seed is no member yet; it becomes one now.
            self.open_events += 1;
            let seed = *seed;
            (Box::new(seed.member), seed.kind, seed.critical)
        } else {
            return;
        };
        let mut member = member;
        member.parent = event.span_id;
        // It went out with its own group's trace id: its span links there.
        member.own_context = member.span.map(|span| (trace_id_of(from), span));
        let rule = &self.rules[i];
        let link = CausalLink {
            cause_event_id: event.id,
            rule: rule.name.into(),
            confidence: rule.confidence,
        };
        if let Some(group) = self.groups.get_mut(&into) {
            group.add_member(member, kind, vec![link], None, None, critical);
            self.absorbed.insert(from, into);
        }
    }

    /// The join with applications' traces: an application span marks the members it
    /// holds; a member takes the known span that holds it.
    fn join_app(&mut self, event: &Event, group: Option<GroupId>) {
        if event.source == "otel" {
            self.app.turn_on();
        }
        if event.kind == "app.span" && event.source == "otel" {
            if let Some(span) = app::AppSpan::of(event) {
                for seen in self.app.span(span, &event.entities) {
                    self.mark_app(seen.id, seen.group, span.context);
                }
            }
        } else if let Some(group) = group
            && event.source != "otel"
            && let Some(context) = self.app.member(event, group)
        {
            self.mark_app(event.id, group, context);
        }
    }

    /// Records on member `id` of `group` (open, or still a seed) the application span it
    /// happened in, unless it knows one already.
    fn mark_app(&mut self, id: EventId, group: GroupId, context: (TraceId, SpanId)) {
        let group = self.live(group);
        let member = match self.groups.get_mut(&group) {
            Some(g) => g
                .incident
                .members
                .iter_mut()
                .find(|m| m.id == id)
                .map(|m| &mut **m),
            None => self
                .seeds
                .get_mut(&group)
                .map(|seed| &mut seed.member)
                .filter(|m| m.id == id),
        };
        if let Some(member) = member
            && member.app.is_none()
        {
            member.app = Some(context);
        }
    }
}

/// Appends `item` to `list` (newest last) unless the list holds its event already,
/// forgetting the oldest beyond `cap`.
fn keep_newest<T>(
    list: &mut SmallVec<[T; 2]>,
    item: T,
    cap: usize,
    event_of: impl Fn(&T) -> EventId,
) {
    if list.iter().any(|known| event_of(known) == event_of(&item)) {
        return;
    }
    if list.len() >= cap {
        list.remove(0);
    }
    list.push(item);
}

/// A DNS query waiting for its answer: what its member needs besides what the answer
/// repeats (the process, the name, the server).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Question {
    id: EventId,
    timestamp: u64,
    span: Option<SpanId>,
}

/// A DNS lookup's key: the client's address and port, the transaction id and the name,
/// which a query and its answer share.
fn lookup_key(event: &Event) -> Option<u64> {
    let a = &event.attributes;
    Some(crate::bounded::key_parts(&[
        a.text("client")?.as_bytes(),
        &a.int("transaction_id")?.to_le_bytes(),
        a.text("query_name")?.as_bytes(),
    ]))
}

/// A query as the member it becomes if its answer fails.
fn question(query: &Question, answer: &Event) -> Member {
    let text = |key: &str| answer.attributes.text(key).unwrap_or_default();
    Member {
        id: query.id,
        kind: "dns.query".into(),
        timestamp: query.timestamp,
        span: query.span,
        parent: None,
        own_context: None,
        cross_links: Vec::new(),
        app: None,
        joined_on: Some("lookup"),
        severity: crate::event::Severity::Info,
        message: format!(
            "{} {} asked {}:53",
            text("query_type"),
            text("query_name"),
            text("server")
        ),
        // The same process asked and was answered.
        entities: answer.entities.clone(),
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

/// How an event joins a group.
#[derive(Default)]
struct Join {
    /// The span of its causal predecessor, or of the group's latest event on a shared entity.
    parent: Option<SpanId>,
    cross_links: Vec<(TraceId, SpanId)>,
    links: Vec<CausalLink>,
    joined_on: Option<Relation>,
}

impl Correlator for Semantic {
    fn process(&mut self, event: &mut Event) {
        if event.entities.node.is_empty() {
            event.entities.node = Arc::clone(&self.node);
        }
        let exited = event.kind == "process.exit";
        self.apps |= event.source == "otel";
        self.index.resolve(&mut event.entities, exited);
        if event.span_id.is_none() {
            event.span_id = SpanId::new(super::basic::span_bits(event.id.as_u128()).to_be_bytes());
        }
        self.clock = self.clock.max(event.timestamp);
        self.processed += 1;
        if self.processed.is_multiple_of(1024) {
            self.sweep();
        }
        if self.open_events >= self.limits.max_open_events {
            self.make_room(1);
        }

        self.deps.learn(event);
        // Two lists reused from event to event: most events match a rule or two.
        let (mut effect_rules, mut cause_rules) = std::mem::take(&mut self.scratch);
        self.rules_of(event, &mut effect_rules, &mut cause_rules);
        let mut cache = KeyCache::default();
        let mut found = self.best_cause(event, &effect_rules, &mut cache);
        // Whether the event's own entities become the group's for shared-entity joins: not
        // for one that joined across entities (a caller of a failed server, a pod of a
        // failed node), whose other warnings are its own business.
        let mut touches = true;
        let mut related = false;
        let group_id = if let Some((i, _)) = found.first() {
            touches = matches!(
                self.rules[*i].relation,
                Relation::Process | Relation::Container | Relation::Pod | Relation::Unit
            );
            let group = self.join_causes(event, &mut found);
            self.pull_lone_effect(event, group, &cause_rules, &mut cache);
            Some(group)
        } else if let Some((i, effect)) = self.late_effect(event, &cause_rules, &mut cache) {
            Some(self.adopt(event, i, effect))
        } else if !cause_rules.is_empty()
            && event.severity >= Severity::Warning
            && let Some((touch, relation)) = self.shared(event)
            && self
                .groups
                .get(&touch.group)
                .is_some_and(|g| g.causal_severity >= Severity::Warning)
        {
            // A second failure of the entity an open incident is about (the unit logs
            // another error, its process dies) is part of that incident, not a new one;
            // it still causes what follows.
            let join = Join {
                parent: touch.span,
                joined_on: Some(relation),
                ..Join::default()
            };
            Some(self.join(event, touch.group, join))
        } else if !cause_rules.is_empty() && event.severity >= Severity::Warning {
            Some(self.open(event))
        } else if !cause_rules.is_empty() {
            // An info-level cause (a syscall error, an exit code): most are routine.
            touches = false;
            Some(self.seed(event))
        } else if event.severity >= Severity::Warning
            // A type the rules explain, unexplained here, is unrelated; so is one whose
            // type the rules explain only in other forms (an NXDOMAIN, where a failing
            // server answers SERVFAIL): the rules say which of its kind are symptoms.
            && !self.is_effect_type(&event.kind)
            && let Some((touch, relation)) = self.shared(event)
        {
            let join = Join {
                parent: touch.span,
                joined_on: Some(relation),
                ..Join::default()
            };
            (touches, related) = (false, true);
            Some(self.join(event, touch.group, join))
        } else if !effect_rules.is_empty() {
            // An effect whose cause has not arrived yet: a provisional group of its own,
            // for a cause that arrives late. Nothing joins it by shared entity until then.
            touches = false;
            Some(self.seed(event))
        } else {
            None
        };
        if event.trace_id.is_none() {
            event.trace_id = TraceId::new(event.id.as_u128().to_be_bytes());
        }
        self.pair_question(event, group_id);
        self.join_app(event, group_id);
        if let Some(group) = group_id {
            self.remember(event, group, &cause_rules, &mut cache);
            if !related {
                self.wait_for_late_causes(event, group, &effect_rules, &mut cache);
            }
            // The window runs from the group's last causal event on the entity, so a pod
            // that keeps warning does not hold its incident open forever.
            if touches {
                self.touch(event, group);
            }
        }
        self.scratch = (effect_rules, cause_rules);
    }

    fn open_groups(&self) -> usize {
        self.groups
            .values()
            .filter(|g| g.incident.events.len() > 1)
            .count()
    }

    fn index_entries(&self) -> usize {
        self.index.entries()
    }

    fn reconfigure(&mut self, config: &super::CorrelationConfig) {
        // The index and the tables sized by it keep their size.
        self.limits = Limits {
            entities: self.limits.entities,
            causes_per_key: self.limits.causes_per_key,
            ..super::limits_of(config)
        };
        self.critical = super::criticality_of(config);
    }

    fn take_closed(&mut self) -> Vec<Incident> {
        Semantic::take_closed(self)
    }

    fn close_all(&mut self) {
        Semantic::close_all(self);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;
    use crate::collectors::synthetic::{Scenario, Scripted, SyntheticConfig, World};
    use crate::correlation::rules::builtin;
    use crate::event::keys;

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
    fn correlate(events: &mut [Event], limits: Limits) -> Vec<Incident> {
        let mut engine = Semantic::new("node-a", builtin(), limits);
        for event in events.iter_mut() {
            engine.process(event);
        }
        engine.close_all();
        engine.take_closed()
    }

    /// Where an event happened, as a reviewer names it: pod, else unit, else node.
    fn place(e: &crate::event::Entities) -> String {
        if !e.pod_name.is_empty() {
            format!("{}/{}", e.pod_namespace, e.pod_name)
        } else if !e.unit.is_empty() {
            e.unit.to_string()
        } else {
            format!("node {}", e.node)
        }
    }

    /// Groups as a reviewer reads them: no ids, times relative to the group's start.
    fn render(groups: &[Incident], events: &[Event]) -> String {
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
                place(
                    &group.members[group
                        .events
                        .iter()
                        .position(|id| *id == group.root)
                        .expect("root is a member")]
                    .entities
                ),
                group.summary
            );
            for (id, member) in group.events.iter().zip(&group.members) {
                let event = by_id[id];
                let _ = write!(
                    out,
                    "  +{:>6.1}s {:<22} {}",
                    Duration::from_nanos(event.timestamp - group.first_seen).as_secs_f64(),
                    event.kind,
                    place(&member.entities)
                );
                for (_, link) in group.chain.iter().filter(|(effect, _)| effect == id) {
                    let _ = write!(
                        out,
                        "  <- {} ({}, {:.2})",
                        by_id[&link.cause_event_id].kind, link.rule, link.confidence
                    );
                }
                if let Some(relation) = member.joined_on {
                    let _ = write!(out, "  ~ related: same {relation}");
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

    /// `count` events of `scenario`, each with its truth: the incident it belongs to, and
    /// whether it is that incident's root cause.
    fn marked(scenario: Scenario, seed: u64, count: usize) -> (Vec<Event>, Vec<Option<Scripted>>) {
        // One pod per workload, and no more incidents than pods, so no two incidents share
        // a workload (the engine rightly joins an OOM kill spreading in one).
        let config = SyntheticConfig {
            scenario,
            seed,
            pods: 6,
            ..SyntheticConfig::default()
        };
        let mut world = World::new(&config, "node-a".into(), 1_790_000_000_000_000_000);
        // Whole incidents only: a cut one would lack its last events.
        let count = count.min(world.cycle_len() * config.pods);
        let count = count - count % world.cycle_len().max(1);
        (0..count)
            .map(|_| (world.next_event(), world.last_scripted()))
            .unzip()
    }

    #[test]
    fn each_incident_among_noise_is_grouped_under_its_true_root_cause() {
        for (scenario, file) in [
            (Scenario::OomCascade, "oom_cascade.txt"),
            (Scenario::DnsOutage, "dns_outage.txt"),
            (Scenario::RestartStorm, "restart_storm.txt"),
            (Scenario::NodePressure, "node_pressure.txt"),
            (Scenario::UnitFailure, "unit_failure.txt"),
        ] {
            let (mut events, marks) = marked(scenario, 9, 400);
            let groups = correlate(&mut events, Limits::default());
            golden(file, &render(&groups, &events));
            let group_of: HashMap<EventId, &Incident> = groups
                .iter()
                .flat_map(|g| g.events.iter().map(move |id| (*id, g)))
                .collect();
            let incidents: HashSet<u64> = marks.iter().flatten().map(|m| m.incident).collect();
            assert!(
                marks.iter().flatten().count() >= 20,
                "{scenario:?}: the scenario scripts incidents"
            );
            for incident in incidents {
                let members: Vec<(&Event, Scripted)> = events
                    .iter()
                    .zip(&marks)
                    .filter_map(|(e, m)| m.filter(|m| m.incident == incident).map(|m| (e, m)))
                    .collect();
                let root = members.iter().find(|(_, m)| m.root).expect("a root").0;
                for (event, _) in &members {
                    let group = group_of.get(&event.id).unwrap_or_else(|| {
                        panic!("{scenario:?}: scripted {} is in no group", event.kind)
                    });
                    assert_eq!(
                        group.root, root.id,
                        "{scenario:?}: {} is grouped under the true root, {}",
                        event.kind, root.kind
                    );
                }
            }
            // No background event joins an incident.
            for (event, mark) in events.iter().zip(&marks) {
                if mark.is_none()
                    && let Some(group) = group_of.get(&event.id)
                {
                    assert!(
                        !marks
                            .iter()
                            .zip(&events)
                            .any(|(m, e)| m.is_some() && group.events.contains(&e.id)),
                        "{scenario:?}: background {} joined an incident",
                        event.kind
                    );
                }
            }
            for group in &groups {
                assert!(
                    group.chain.iter().all(|(effect, _)| *effect != group.root),
                    "the root has no cause"
                );
                // Every member carries the group's trace; every effect that arrived after
                // its cause has that cause's span as its parent.
                for (id, member) in group.events.iter().zip(&group.members) {
                    let event = events.iter().find(|e| e.id == *id).expect("member");
                    // A query left before its failed answer pulled it in.
                    if member.joined_on != Some("lookup") {
                        assert_eq!(event.trace_id, Some(group.trace_id));
                    }
                    for (_, link) in group.chain.iter().filter(|(effect, _)| effect == id) {
                        let cause = events
                            .iter()
                            .find(|e| e.id == link.cause_event_id)
                            .expect("cause");
                        assert!(cause.timestamp <= event.timestamp, "causes come first");
                    }
                    if let Some(link) = event
                        .correlation
                        .as_ref()
                        .and_then(|c| c.causal_links.first())
                    {
                        let cause = events
                            .iter()
                            .find(|e| e.id == link.cause_event_id)
                            .expect("cause");
                        assert_eq!(event.parent_span_id, cause.span_id);
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
            // As the collectors report them (docs/event-types.md).
            e.severity = match kind {
                "memory.oom_kill" => Severity::Critical,
                "container.exit" => Severity::Error,
                _ => Severity::Warning,
            };
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
    fn a_warning_on_a_groups_pod_joins_it_as_related_within_the_window() {
        let run = |join_window: Duration| {
            let limits = Limits {
                join_window,
                ..Limits::default()
            };
            let mut engine = Semantic::new("node-a", builtin(), limits);
            let at = |secs: u64| 1_000_000_000_000 + secs * 1_000_000_000;
            let mut n = 0u128;
            let mut next = |kind: &str, secs: u64, severity: Severity| {
                n += 1;
                let mut e = Event::new(EventId::from_u128(n), at(secs), kind.to_owned(), "t");
                e.entities.pod_uid = "pod-1".into();
                e.severity = severity;
                e
            };
            let mut events = [
                next("memory.oom_kill", 0, Severity::Error),
                // Nothing explains these; the warning shares the pod, the info is noise.
                next("app.log_error", 20, Severity::Warning),
                next("app.request", 21, Severity::Info),
                // Too late: more than the window after the group last touched the pod.
                next("app.log_error", 200, Severity::Warning),
            ];
            for e in &mut events {
                engine.process(e);
            }
            engine.close_all();
            (events, engine.take_closed())
        };
        let (events, groups) = run(Duration::from_mins(1));
        assert_eq!(groups.len(), 1);
        let group = &groups[0];
        assert_eq!(group.events, vec![events[0].id, events[1].id]);
        assert_eq!(group.root, events[0].id);
        assert!(
            group.chain.is_empty(),
            "a related event is not a causal link"
        );
        let related = &group.members[1];
        assert_eq!(related.joined_on, Some(Relation::Pod.name()));
        assert_eq!(related.parent, events[0].span_id);
        assert_eq!(events[1].trace_id, Some(group.trace_id));
        assert!(
            group.summary.contains("1 related event"),
            "{}",
            group.summary
        );
        assert!(events[2].correlation.is_none() && events[3].correlation.is_none());

        let (_, off) = run(Duration::ZERO);
        assert!(off.is_empty(), "with joins off the OOM kill stays alone");
    }

    #[test]
    fn a_crash_loops_next_missing_file_stays_in_its_incident_in_time_order() {
        // Each round: the process fails to open its config (reported in time order here,
        // before the exit), exits 1, its container exits, the pod restarts.
        let mut engine = Semantic::new("node-a", builtin(), Limits::default());
        let at = |ms: u64| 1_000_000_000_000 + ms * 1_000_000;
        let mut n = 0u128;
        let mut next = |kind: &str, ms: u64, severity: Severity, pid: u32| {
            n += 1;
            let mut e = Event::new(EventId::from_u128(n), at(ms), kind.to_owned(), "t");
            e.entities.pod_uid = "pod-1".into();
            e.entities.container_id = format!("c-{pid}").into();
            e.entities.pid = pid;
            e.severity = severity;
            e
        };
        let mut events = Vec::new();
        for (round, pid) in [100u32, 107, 114].into_iter().enumerate() {
            let t = round as u64 * 11_000;
            let mut missing = next("syscall.error", t, Severity::Info, pid);
            missing
                .attributes
                .push("errno", crate::event::AttrValue::Str("ENOENT".into()));
            let mut exit = next("process.exit", t + 3, Severity::Info, pid);
            exit.attributes
                .push("exit_code", crate::event::AttrValue::Int(1));
            exit.attributes
                .push("signal", crate::event::AttrValue::Int(0));
            let mut container = next("container.exit", t + 4, Severity::Error, pid);
            container
                .attributes
                .push("exit_code", crate::event::AttrValue::Int(1));
            let restart = next("k8s.pod.restart", t + 700, Severity::Warning, 0);
            events.extend([missing, exit, container, restart]);
        }
        for e in &mut events {
            engine.process(e);
        }
        engine.close_all();
        let groups = engine.take_closed();
        assert_eq!(groups.len(), 1, "one incident, not one per round");
        assert_eq!(groups[0].root, events[0].id);
        assert_eq!(groups[0].events.len(), events.len());
        // The second round's missing file went out with a trace of its own: its span
        // keeps it as a link.
        let second = groups[0]
            .members
            .iter()
            .find(|m| m.id == events[4].id)
            .expect("the second round's missing file");
        assert_eq!(
            second.own_context.map(|(t, _)| Some(t)),
            Some(events[4].trace_id)
        );
    }

    #[test]
    fn blast_radius_counts_pods_workloads_services_and_units() {
        let mut engine = Semantic::new("node-a", builtin(), Limits::default());
        let mut n = 0u128;
        let mut next = |kind: &str, f: &dyn Fn(&mut Event)| {
            n += 1;
            let mut e = Event::new(
                EventId::from_u128(n),
                1_000_000_000_000,
                kind.to_owned(),
                "t",
            );
            e.entities.node = "node-a".into();
            e.severity = Severity::Error;
            f(&mut e);
            e
        };
        let in_pod = |pod: &'static str, workload: &'static str| {
            move |e: &mut Event| {
                e.entities.pod_uid = pod.into();
                e.entities.pod_namespace = "shop".into();
                e.entities.workload_kind = "Deployment".into();
                e.entities.workload_name = workload.into();
            }
        };
        let mut events = [
            next("k8s.node.pressure", &|_| {}),
            next("k8s.pod.evicted", &in_pod("p1", "cart")),
            next("k8s.pod.evicted", &in_pod("p2", "cart")),
            next("k8s.pod.evicted", &|e| {
                in_pod("p3", "ledger")(e);
                e.attributes.set(keys::SERVICE_NAME, "ledger");
            }),
        ];
        let mut impacts = Vec::new();
        for e in &mut events {
            engine.process(e);
            impacts.push(e.correlation.as_ref().map_or(0.0, |c| c.impact));
        }
        assert!(
            impacts[1..].windows(2).all(|w| w[0] < w[1]),
            "each pod, workload and service widens the blast: {impacts:?}"
        );
        engine.close_all();
        let closed = engine.take_closed();
        let group = &closed[0];
        assert!(
            group
                .summary
                .ends_with("(4 events; 3 pods, 2 workloads, 1 service)"),
            "{}",
            group.summary
        );
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
                assert!(engine.open_events <= limits.max_open_events);
                assert!(engine.touched.len() <= limits.entities);
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
            let limits = Limits { quiet: Duration::from_mins(2), max_groups: 3, max_group_events: 4, max_open_events: 7, causes_per_key: 2, entities: 8, join_window: Duration::from_mins(1), late_window: Duration::from_mins(1), app_join: true };
            let mut engine = Semantic::new("node-a", builtin(), limits.clone());
            for mut event in events {
                engine.process(&mut event);
                prop_assert!(engine.open_group_slots() <= limits.max_groups);
                prop_assert!(engine.groups.values().all(|g| g.incident.events.len() <= limits.max_group_events));
                prop_assert!(engine.causes.values().all(|c| c.len() <= limits.causes_per_key));
                prop_assert!(engine.touched.len() <= limits.entities);
                prop_assert!(engine.open_events <= limits.max_open_events);
                let counted: usize = engine.groups.values().map(|g| g.incident.events.len()).sum();
                prop_assert_eq!(counted, engine.open_events);
                prop_assert!(engine.groups.values().all(|g| g.related <= limits.max_group_events / 4));
            }
            engine.close_all();
            prop_assert!(engine.take_closed().iter().all(|g| g.events.len() <= limits.max_group_events && g.events.len() > 1));
        }
    }
    /// A kernel event of process `pid` in cgroup 4242, `ms` after a fixed start.
    fn on(id: u128, kind: &'static str, source: &'static str, ms: u64, pid: u32) -> Event {
        let base = 1_790_000_000_000_000_000u64;
        let mut e = Event::new(EventId::from_u128(id), base + ms * 1_000_000, kind, source);
        e.entities.pid = pid;
        e.entities.cgroup_id = 4242;
        e.entities.comm = "python3".into();
        e
    }

    /// The memory collector's OOM kill of `pid`, as it reports one.
    fn oom_kill(id: u128, ms: u64, pid: u32) -> Event {
        let mut e = on(id, "memory.oom_kill", "memory", ms, pid);
        e.severity = Severity::Critical;
        for (key, value) in [
            ("victim_pid", i64::from(pid)),
            ("uid", 0),
            ("total_vm_bytes", 1 << 30),
            ("anon_rss_bytes", 60 << 20),
            ("file_rss_bytes", 0),
            ("shmem_rss_bytes", 0),
            ("oom_score_adj", 0),
            ("killer_pid", i64::from(pid)),
        ] {
            e.attributes.push(key, value);
        }
        e.attributes.push("killer_comm", "python3");
        e
    }

    /// The kernel collector's exit of `pid`, killed by SIGKILL.
    fn killed_exit(id: u128, ms: u64, pid: u32) -> Event {
        let mut exit = on(id, "process.exit", "kernel", ms, pid);
        exit.severity = Severity::Warning;
        exit.attributes.push("ppid", 10i64);
        exit.attributes.push("exit_code", 0i64);
        exit.attributes.push("signal", 9i64);
        exit
    }

    #[test]
    fn the_oom_killers_own_sigkill_is_its_effect_in_either_order() {
        // runtime-signals reports the OOM killer's SIGKILL (from the kernel) as the kernel
        // sends it, just before it marks the victim: either may arrive first.
        let signal = |id: u128, ms: u64| {
            let mut e = on(id, "process.signal", "runtime-signals", ms, 11);
            e.severity = Severity::Warning;
            for (key, value) in [
                ("signal", 9i64),
                ("code", 1),
                ("sender_pid", 11),
                ("sender_cgroup_id", 4242),
            ] {
                e.attributes.push(key, value);
            }
            e.attributes.push("signal_name", "SIGKILL");
            e.attributes.push("from_kernel", true);
            e.attributes.push("sender_comm", "python3");
            e
        };
        for signal_first in [true, false] {
            let mut events = if signal_first {
                vec![
                    signal(1, 100),
                    oom_kill(2, 100, 11),
                    killed_exit(3, 101, 11),
                ]
            } else {
                vec![
                    oom_kill(2, 100, 11),
                    signal(1, 100),
                    killed_exit(3, 101, 11),
                ]
            };
            for e in &events {
                crate::event::schema::check(e).expect("documented shapes");
            }
            let groups = correlate(&mut events, Limits::default());
            assert_eq!(
                groups.len(),
                1,
                "one incident (signal first: {signal_first}): {groups:#?}"
            );
            assert_eq!(
                groups[0].root,
                EventId::from_u128(2),
                "rooted at the OOM kill (signal first: {signal_first})"
            );
            assert_eq!(groups[0].members.len(), 3);
        }
    }

    #[test]
    fn a_kill_inside_an_application_request_is_marked_with_that_request() {
        let trace = TraceId::new([7; 16]).expect("id");
        let span = SpanId::new([8; 8]).expect("id");
        // The request: its app first says something (so the engine keeps members), the
        // worker is OOM-killed 300 ms into it and exits, then the span arrives, failed.
        let mut log = on(1, "app.log", "otel", 0, 10);
        log.severity = Severity::Warning;
        log.attributes.push("service.name", "resizer");
        log.attributes.push("severity_number", 13i64);
        let oom = oom_kill(2, 300, 11);
        let exit = killed_exit(3, 301, 11);
        let mut request = on(4, "app.span", "otel", 320, 10);
        request.severity = Severity::Error;
        request.trace_id = Some(trace);
        request.span_id = Some(span);
        for (key, value) in [
            ("span.name", "POST /resize"),
            ("span.kind", "server"),
            ("otel.status_code", "error"),
            ("service.name", "resizer"),
            ("kept", "error"),
        ] {
            request.attributes.push(key, value);
        }
        request.attributes.push("duration_ms", 320.0);
        // Another process's exit, in another cgroup, during the same request: not inside it.
        let mut elsewhere = oom_kill(5, 100, 99);
        elsewhere.entities.cgroup_id = 5151;
        let mut events = vec![log, elsewhere, oom, exit, request];
        for e in &events {
            crate::event::schema::check(e).expect("documented shapes");
        }
        let groups = correlate(&mut events, Limits::default());
        let kill = groups
            .iter()
            .flat_map(|g| &g.members)
            .find(|m| m.id == EventId::from_u128(2))
            .expect("the kill is an incident's member");
        assert_eq!(
            kill.app,
            Some((trace, span)),
            "it happened inside the request"
        );
        let unrelated = groups
            .iter()
            .flat_map(|g| &g.members)
            .filter(|m| m.id == EventId::from_u128(5))
            .all(|m| m.app.is_none());
        assert!(unrelated, "another cgroup's kill is not inside it");
    }
}
