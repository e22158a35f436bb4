//! The join of applications' traces with what the kernel and Kubernetes saw: an incident
//! member that happened on the same process, cgroup, container, pod or unit as an
//! application span, during that span or within [`AFTER_ERROR`] after it ended in error,
//! happened inside that request. Its member remembers the span, and the trace export puts
//! it into the application's trace as a child of that span, linked both ways.
//!
//! Spans reach the agent when they end, usually after the kernel events inside them, so
//! the join runs both ways: a span looks back at the incident members recently seen on its
//! entities, and a member looks at the spans already known on its own. Nothing is kept
//! until the first application event arrives, so a node without the `otel` collector pays
//! nothing (the agent starts it at once when the collector is on); after that, at most [`PER_KEY`] spans and members per entity, for
//! `late_window` of event time.

use smallvec::SmallVec;

use crate::bounded::{FxMap, key_parts};
use crate::event::{Entities, Event, EventId, GroupId, SpanId, TraceId};

/// How long after a span ended in error an event on its entities still joins it: the
/// crash that follows a failed request.
pub const AFTER_ERROR: u64 = 5_000_000_000;

/// Spans, and members, remembered per entity at most (the newest).
const PER_KEY: usize = 8;

/// An application span as the join needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AppSpan {
    /// Its trace and span.
    pub context: (TraceId, SpanId),
    start: u64,
    end: u64,
    error: bool,
}

impl AppSpan {
    /// The span `event` (an `app.span`) reports.
    pub fn of(event: &Event) -> Option<Self> {
        let context = event.trace_id.zip(event.span_id)?;
        #[allow(
            clippy::cast_sign_loss,
            reason = "non-negative, checked; a span's nanoseconds fit in 64 bits"
        )]
        let duration = match event.attributes.get("duration_ms") {
            Some(crate::event::AttrValue::Float(ms)) if *ms >= 0.0 => (ms * 1e6) as u64,
            _ => 0,
        };
        Some(Self {
            context,
            start: event.timestamp.saturating_sub(duration),
            end: event.timestamp,
            error: event.attributes.text("otel.status_code") == Some("error"),
        })
    }

    /// Whether something at `at` happened inside it, or just after its error.
    fn holds(&self, at: u64) -> bool {
        (self.start..=self.end).contains(&at)
            || (self.error && at > self.end && at - self.end <= AFTER_ERROR)
    }
}

/// A member of an open group (or seed) that a span arriving later may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its event.
    pub id: EventId,
    /// Its group or seed.
    pub group: GroupId,
    timestamp: u64,
}

/// The spans and members remembered per entity.
#[derive(Debug, Default)]
pub struct AppJoin {
    on: bool,
    spans: FxMap<u64, SmallVec<[AppSpan; 2]>>,
    members: FxMap<u64, SmallVec<[Seen; 4]>>,
}

/// The entities an event can share with a span, most specific first: its process, its
/// cgroup (not the root one, which everything without its own shares), its container, its
/// pod, its unit.
fn keys(e: &Entities) -> SmallVec<[u64; 5]> {
    use crate::correlation::rules::Relation;
    let mut out = SmallVec::new();
    out.extend(Relation::Process.key(e));
    if e.cgroup_id > 1 {
        out.push(key_parts(&[
            b"cgroup",
            e.node.as_bytes(),
            &e.cgroup_id.to_le_bytes(),
        ]));
    }
    out.extend(Relation::Container.key(e));
    out.extend(Relation::Pod.key(e));
    out.extend(Relation::Unit.key(e));
    out
}

impl AppJoin {
    /// A join that keeps members from the start (`on`), or from [`AppJoin::turn_on`].
    pub fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    /// Starts keeping members: an application speaks.
    pub fn turn_on(&mut self) {
        self.on = true;
    }

    /// Whether members are kept: before that, nothing is.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Remembers the application span `span` on `entities`; returns the members seen
    /// lately on them that it holds.
    pub fn span(&mut self, span: AppSpan, entities: &Entities) -> Vec<Seen> {
        self.on = true;
        let mut held = Vec::new();
        for key in keys(entities) {
            let spans = self.spans.entry(key).or_default();
            if spans.len() >= PER_KEY {
                spans.remove(0);
            }
            spans.push(span);
            if let Some(members) = self.members.get(&key) {
                for seen in members.iter().filter(|m| span.holds(m.timestamp)) {
                    if !held.iter().any(|h: &Seen| h.id == seen.id) {
                        held.push(*seen);
                    }
                }
            }
        }
        held
    }

    /// Remembers `event`, now a member of `group`, for spans that arrive later; returns the
    /// known span that holds it, the innermost on its most specific entity.
    pub fn member(&mut self, event: &Event, group: GroupId) -> Option<(TraceId, SpanId)> {
        if !self.on {
            return None;
        }
        let mut found = None;
        let seen = Seen {
            id: event.id,
            group,
            timestamp: event.timestamp,
        };
        for key in keys(&event.entities) {
            if found.is_none() {
                found = self.spans.get(&key).and_then(|spans| {
                    spans
                        .iter()
                        .filter(|s| s.holds(event.timestamp))
                        .max_by_key(|s| s.start)
                        .map(|s| s.context)
                });
            }
            let members = self.members.entry(key).or_default();
            if members.len() >= PER_KEY {
                members.remove(0);
            }
            members.push(seen);
        }
        found
    }

    /// Forgets spans and members older than `keep` before `now`.
    pub fn sweep(&mut self, now: u64, keep: u64) {
        self.spans.retain(|_, spans| {
            spans.retain(|s| now.saturating_sub(s.end) <= keep);
            !spans.is_empty()
        });
        self.members.retain(|_, members| {
            members.retain(|m| now.saturating_sub(m.timestamp) <= keep);
            !members.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entities(pid: u32, cgroup: u64) -> Entities {
        Entities {
            node: "n".into(),
            pid,
            cgroup_id: cgroup,
            ..Entities::default()
        }
    }

    fn span(start: u64, end: u64, error: bool) -> AppSpan {
        AppSpan {
            context: (
                TraceId::new([1; 16]).expect("id"),
                SpanId::new([2; 8]).expect("id"),
            ),
            start,
            end,
            error,
        }
    }

    fn member(id: u128, at: u64, e: Entities) -> Event {
        let mut event = Event::new(EventId::from_u128(id), at, "memory.oom_kill", "memory");
        event.entities = e;
        event
    }

    #[test]
    fn a_member_inside_a_span_on_its_cgroup_is_held_whichever_arrives_first() {
        let group = GroupId::new([3; 16]);
        let mut join = AppJoin::default();
        // Nothing is kept before an application speaks.
        assert_eq!(join.member(&member(1, 50, entities(10, 77)), group), None);
        assert!(join.span(span(0, 100, true), &entities(9, 77)).is_empty());
        // The worker (another pid, the same cgroup) is killed during the request...
        let before = member(2, 60, entities(10, 77));
        assert_eq!(join.member(&before, group), Some(span(0, 0, true).context));
        // ...or just after it failed; not long after, nor on another cgroup.
        assert!(
            join.member(&member(3, 104 + AFTER_ERROR, entities(10, 77)), group)
                .is_none()
        );
        assert!(
            join.member(&member(4, 60, entities(11, 78)), group)
                .is_none()
        );
        // A span arriving after the member looks back at it.
        let mut join = AppJoin::new(true);
        join.member(&member(5, 60, entities(10, 77)), group);
        join.member(&member(6, 500, entities(10, 77)), group);
        let held = join.span(span(0, 100, false), &entities(9, 77));
        assert_eq!(
            held.iter().map(|s| s.id).collect::<Vec<_>>(),
            [EventId::from_u128(5)]
        );
    }

    #[test]
    fn the_root_cgroup_joins_nothing() {
        let mut join = AppJoin::default();
        join.span(span(0, 100, true), &entities(9, 1));
        assert!(
            join.member(&member(1, 50, entities(10, 1)), GroupId::new([3; 16]))
                .is_none()
        );
    }
}
