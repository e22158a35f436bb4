//! The incident corpus (tests/incidents/, written by make.py): realistic incidents among
//! routine background, each event shaped as its collector emits it. Every file is checked
//! against docs/event-types.md, replayed through the semantic engine with the defaults, and
//! its closed groups scored against the truth: per incident, whether the root cause is
//! right and whether the incident was split or merged; overall, precision (of the events in
//! incident groups, how many belong to the incident) and recall (of the incident events,
//! how many are in their incident's group).
//!
//!     cargo test --test incidents -- --nocapture      # prints the table
//!
//! The table is also written to target/incidents-score.txt, which scripts/test prints.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use tapio::correlation::{self, CorrelationConfig};
use tapio::event::{Event, EventId, Incident, schema};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/incidents");

#[derive(serde::Deserialize)]
struct Truth {
    incident: String,
    class: String,
    root: String,
    events: Vec<String>,
}

fn id(text: &str) -> EventId {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

/// The corpus's files, by name.
fn files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .expect("tests/incidents")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".jsonl")?.to_owned())
        })
        .collect();
    names.sort();
    names
}

fn events_of(name: &str) -> Vec<Event> {
    let text = std::fs::read_to_string(format!("{DIR}/{name}.jsonl")).expect("replay file");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let event: Event = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}.jsonl:{}: {e}", n + 1));
            if let Err(mismatch) = schema::check(&event) {
                panic!("{name}.jsonl:{}: {mismatch}", n + 1);
            }
            event
        })
        .collect()
}

fn truth_of(name: &str) -> Vec<Truth> {
    let text = std::fs::read_to_string(format!("{DIR}/{name}.truth.json")).expect("truth file");
    serde_json::from_str(&text).expect("truth")
}

/// The groups the engine closes over `events`, as a replay with `keep_ids` gives them.
fn correlate(mut events: Vec<Event>) -> Vec<Incident> {
    let mut engine = correlation::build(&CorrelationConfig::default(), "node-a");
    for event in &mut events {
        engine.process(event);
    }
    engine.close_all();
    engine.take_closed()
}

#[derive(Default)]
struct Score {
    incidents: usize,
    roots_right: usize,
    split: usize,
    merged: usize,
    incident_events: usize,
    recalled: usize,
    in_groups: usize,
    belonging: usize,
}

/// Prints a group as the engine closed it, each member marked with its incident.
fn show(
    group: &Incident,
    incident_of: &HashMap<EventId, usize>,
    name_of: &HashMap<EventId, String>,
) {
    println!("group {:?}, root {}", group.id, group.root);
    for member in &group.members {
        let links: Vec<String> = group
            .chain
            .iter()
            .filter(|(effect, _)| *effect == member.id)
            .map(|(_, l)| format!("{} {}", l.rule, l.cause_event_id))
            .collect();
        println!(
            "  {} {:<26} {:<12} {:?} {} {:?} <- {links:?}",
            member.id,
            member.kind,
            name_of.get(&member.id).map_or("", String::as_str),
            incident_of.get(&member.id),
            member.entities.pod_name,
            member.joined_on,
        );
    }
}

fn score(name: &str, table: &mut String, total: &mut Score) {
    let truth = truth_of(name);
    let events = events_of(name);
    let name_of: HashMap<EventId, String> = events
        .iter()
        .map(|e| (e.id, format!("{}", e.entities.unit)))
        .collect();
    let groups = correlate(events);
    let group_of: HashMap<EventId, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.events.iter().map(move |id| (*id, g)))
        .collect();
    let incident_of: HashMap<EventId, usize> = truth
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.events.iter().map(move |e| (id(e), i)))
        .collect();
    let mut mains = HashSet::new();
    for (i, incident) in truth.iter().enumerate() {
        let ids: Vec<EventId> = incident.events.iter().map(|e| id(e)).collect();
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for event in &ids {
            if let Some(g) = group_of.get(event) {
                *counts.entry(*g).or_default() += 1;
            }
        }
        let root = id(&incident.root);
        let main = group_of.get(&root).copied().or_else(|| {
            counts
                .iter()
                .max_by_key(|(g, n)| (**n, std::cmp::Reverse(**g)))
                .map(|(g, _)| *g)
        });
        let recalled = main.map_or(0, |g| counts.get(&g).copied().unwrap_or(0));
        let root_right = main.is_some_and(|g| groups[g].root == root);
        let split = counts.len() > 1;
        let merged = main.is_some_and(|g| {
            groups[g]
                .events
                .iter()
                .any(|e| incident_of.get(e).is_some_and(|other| *other != i))
        });
        if let Some(g) = main {
            mains.insert(g);
            if std::env::var("TAPIO_SHOW_INCIDENT").as_deref() == Ok(incident.incident.as_str()) {
                show(&groups[g], &incident_of, &name_of);
            }
        }
        let _ = writeln!(
            table,
            "| {name} | {} | {} | {} | {}/{} | {} | {} |",
            incident.incident,
            incident.class,
            if root_right { "right" } else { "WRONG" },
            recalled,
            ids.len(),
            if split { "split" } else { "" },
            if merged { "merged" } else { "" },
        );
        total.incidents += 1;
        total.roots_right += usize::from(root_right);
        total.split += usize::from(split);
        total.merged += usize::from(merged);
        total.incident_events += ids.len();
        total.recalled += recalled;
    }
    for g in mains {
        let group = &groups[g];
        total.in_groups += group.events.len();
        total.belonging += group
            .events
            .iter()
            .filter(|e| incident_of.contains_key(e))
            .count();
    }
}

#[test]
fn the_corpus_is_large_enough_and_shaped_as_the_collectors_emit() {
    let (mut incidents, mut incident_events, mut all) = (0, 0, 0);
    for name in files() {
        let truth = truth_of(&name);
        incidents += truth.len();
        incident_events += truth.iter().map(|t| t.events.len()).sum::<usize>();
        let events = events_of(&name);
        let ids: HashSet<EventId> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), events.len(), "{name}: ids are unique");
        for incident in &truth {
            assert!(
                ids.contains(&id(&incident.root)),
                "{name}: {}",
                incident.incident
            );
            assert!(incident.events.contains(&incident.root));
            assert!(incident.events.iter().all(|e| ids.contains(&id(e))));
        }
        all += events.len();
    }
    assert!(incidents >= 20, "{incidents} incidents");
    assert!(
        all - incident_events >= 10 * incident_events,
        "background {} for {incident_events} incident events",
        all - incident_events
    );
}

#[test]
fn root_causes_precision_and_recall_on_the_corpus() {
    let mut table = String::from(
        "| file | incident | class | root cause | in its group | split | merged |\n|---|---|---|---|---|---|---|\n",
    );
    let mut total = Score::default();
    for name in files() {
        score(&name, &mut table, &mut total);
    }
    // Counts here are small: u32 holds them, and f64 holds any u32 exactly.
    let ratio = |a: usize, b: usize| {
        f64::from(u32::try_from(a).expect("small"))
            / f64::from(u32::try_from(b.max(1)).expect("small"))
    };
    let roots = ratio(total.roots_right, total.incidents);
    let precision = ratio(total.belonging, total.in_groups);
    let recall = ratio(total.recalled, total.incident_events);
    let _ = writeln!(
        table,
        "\nroot cause right in {}/{} incidents ({roots:.2}); {} split, {} merged; precision {precision:.3} ({}/{} events in incident groups belong); recall {recall:.3} ({}/{} incident events in their group)",
        total.roots_right,
        total.incidents,
        total.split,
        total.merged,
        total.belonging,
        total.in_groups,
        total.recalled,
        total.incident_events,
    );
    println!("{table}");
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/incidents-score.txt"),
        &table,
    );
    assert!(
        roots >= 0.95,
        "root causes right {roots:.2} < 0.95\n{table}"
    );
    assert!(
        precision >= 0.95,
        "precision {precision:.3} < 0.95\n{table}"
    );
    assert!(recall >= 0.9, "recall {recall:.3} < 0.9\n{table}");
}
