//! Correlation: resolves each event to its entities and gives it trace context; in
//! semantic mode it also joins related events into groups.

mod basic;
mod config;
pub mod deps;
pub mod entities;
pub mod rules;
pub mod semantic;

pub use basic::Basic;
pub use semantic::Semantic;

use crate::event::Event;
pub use config::{CorrelationConfig, CorrelationMode, RuleConfig, parse_label_selector};

/// A correlation engine. It sees every event once, in pipeline order, and may enrich it.
pub trait Correlator: Send {
    /// Enriches `event` in place.
    fn process(&mut self, event: &mut Event);

    /// Semantic groups currently open.
    fn open_groups(&self) -> usize;

    /// Takes a reload's windows, bounds and critical lists (`config::reload` says which
    /// settings are live); the open groups stay open.
    fn reconfigure(&mut self, _config: &CorrelationConfig) {}

    /// Entries of the entity index (containers, processes, pods); 0 without one.
    fn index_entries(&self) -> usize {
        0
    }

    /// Groups that closed since the last call, for export.
    fn take_closed(&mut self) -> Vec<crate::event::Incident> {
        Vec::new()
    }

    /// Closes every open group (the input has ended).
    fn close_all(&mut self) {}
}

/// The shortest default of `correlation.late_window`.
#[must_use]
pub fn late_window_default() -> std::time::Duration {
    semantic::Limits::default().late_window
}

/// Builds the engine `config` asks for: `semantic` with the built-in rules plus the YAML's.
#[must_use]
pub fn build(config: &CorrelationConfig, node_name: &str) -> Box<dyn Correlator> {
    build_with(config, node_name, None)
}

/// [`build`], with the node's pod metadata for events that name only their container.
#[must_use]
pub fn build_with(
    config: &CorrelationConfig,
    node_name: &str,
    directory: Option<std::sync::Arc<crate::metadata::PodDirectory>>,
) -> Box<dyn Correlator> {
    match config.mode {
        CorrelationMode::Semantic => {
            let mut table = rules::builtin();
            table.extend(config.rules.iter().map(rules::from_config));
            let mut engine = Semantic::new(node_name, table, limits_of(config))
                .with_criticality(criticality_of(config));
            if let Some(directory) = directory {
                engine = engine.with_directory(directory);
            }
            Box::new(engine)
        }
        CorrelationMode::Basic => Box::new(Basic::new(node_name)),
    }
}

/// The semantic engine's bounds and windows from `correlation:`.
fn limits_of(config: &CorrelationConfig) -> semantic::Limits {
    semantic::Limits {
        quiet: config.group_quiet,
        max_groups: config.max_groups,
        max_group_events: config.max_group_events,
        max_open_events: config.max_open_events,
        entities: config.max_entities,
        join_window: config.join_window,
        late_window: config
            .late_window
            .unwrap_or(semantic::Limits::default().late_window),
        app_join: config.app_spans,
        ..semantic::Limits::default()
    }
}

/// What `correlation:` names as critical.
fn criticality_of(config: &CorrelationConfig) -> semantic::Criticality {
    semantic::Criticality {
        namespaces: config.critical_namespaces.clone(),
        // Validated with the rest of the configuration.
        labels: config
            .critical_labels
            .iter()
            .filter_map(|s| parse_label_selector(s).ok())
            .collect(),
        units: config.critical_units.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::{Event, EventId};

    fn event(n: u128, at_secs: u64, kind: &str, f: impl FnOnce(&mut Event)) -> Event {
        let mut e = Event::new(
            EventId::from_u128(n),
            at_secs * 1_000_000_000,
            kind.to_owned(),
            "t",
        );
        e.entities.node = "n".into();
        f(&mut e);
        e
    }

    fn in_pod(e: &mut Event) {
        e.entities.container_id = "c1".into();
        e.entities.pod_uid = "u1".into();
        e.entities.pod_namespace = "shop".into();
        e.entities.pod_name = "cart-1".into();
        e.entities.workload_kind = "Deployment".into();
        e.entities.workload_name = "cart".into();
    }

    fn engine(yaml: &str) -> Box<dyn Correlator> {
        let yaml = format!("collectors:\n  synthetic: {{}}\n{yaml}");
        let config = Config::from_yaml(&yaml, "test.yaml").expect("valid");
        config.validate().expect("valid");
        build(&config.correlation, "n")
    }

    #[test]
    fn a_yaml_rule_links_like_a_builtin_one() {
        let mut engine = engine(
            "correlation:\n  rules:\n    - { name: evictions-reschedule, cause: k8s.pod.evicted, effect: k8s.pod.scheduled, relation: workload, max_delay: 1m, confidence: 0.8 }\n",
        );
        let mut evicted = event(1, 10, "k8s.pod.evicted", in_pod);
        let mut scheduled = event(2, 40, "k8s.pod.scheduled", |e| {
            in_pod(e);
            e.entities.pod_name = "cart-2".into();
        });
        engine.process(&mut evicted);
        engine.process(&mut scheduled);
        let links = &scheduled.correlation.as_ref().expect("linked").causal_links;
        assert_eq!(links[0].rule, "evictions-reschedule");
        assert_eq!(links[0].cause_event_id, evicted.id);
    }

    #[test]
    fn a_kernel_event_with_only_a_pid_resolves_to_its_container_and_pod() {
        let mut engine = engine("correlation: {}\n");
        let mut exec = event(1, 1, "process.exec", |e| {
            in_pod(e);
            e.entities.pid = 42;
        });
        // The OOM kill names only the pid; the index knows its container and pod.
        let mut kill = event(2, 5, "memory.oom_kill", |e| e.entities.pid = 42);
        let mut exit = event(3, 5, "container.exit", in_pod);
        for e in [&mut exec, &mut kill, &mut exit] {
            engine.process(e);
        }
        assert_eq!(&*kill.entities.pod_name, "cart-1");
        let links = &exit.correlation.as_ref().expect("linked").causal_links;
        assert_eq!(
            links[0].cause_event_id, kill.id,
            "linked through the container"
        );
    }

    #[test]
    fn groups_outside_critical_namespaces_weigh_less() {
        let impact = |yaml: &str| {
            let mut engine = engine(yaml);
            let mut kill = event(1, 1, "memory.oom_kill", in_pod);
            let mut exit = event(2, 1, "container.exit", in_pod);
            engine.process(&mut kill);
            engine.process(&mut exit);
            exit.correlation.expect("grouped").impact
        };
        let equal = impact("correlation: {}\n");
        let elsewhere = impact("correlation: { critical_namespaces: [payments] }\n");
        let here = impact("correlation: { critical_namespaces: [shop] }\n");
        assert!(
            (elsewhere - equal * 0.75).abs() < 1e-9,
            "{elsewhere} vs {equal}"
        );
        assert!((here - equal).abs() < 1e-9);
    }

    #[test]
    fn critical_labels_and_units_mark_a_group_and_a_labelled_pod_is_remembered() {
        let yaml = "correlation: { critical_labels: [tier=critical], critical_units: [kubelet.service] }\n";
        let impact = |labelled: bool, unit: &str| {
            let mut engine = engine(yaml);
            let mut kill = event(1, 1, "memory.oom_kill", in_pod);
            let mut exit = event(2, 1, "container.exit", in_pod);
            if labelled {
                // A Kubernetes event carries the labels; the kernel events after it do not.
                let mut restart = event(3, 0, "k8s.pod.restart", |e| {
                    in_pod(e);
                    e.attributes.set("k8s.pod.label.tier", "critical");
                });
                engine.process(&mut restart);
            }
            let mut failed = event(4, 1, "systemd.unit.failed", |e| {
                e.entities.unit = unit.into();
            });
            let mut notready = event(5, 2, "k8s.node.not_ready", |_| {});
            engine.process(&mut kill);
            engine.process(&mut exit);
            engine.process(&mut failed);
            engine.process(&mut notready);
            (
                exit.correlation.expect("grouped").impact,
                notready.correlation.expect("grouped").impact,
            )
        };
        let (plain_pod, plain_unit) = impact(false, "cron.service");
        let (labelled_pod, critical_unit) = impact(true, "kubelet.service");
        assert!(
            (plain_pod - labelled_pod * 0.75).abs() < 1e-9,
            "{plain_pod} vs {labelled_pod}"
        );
        assert!(
            (plain_unit - critical_unit * 0.75).abs() < 1e-9,
            "{plain_unit} vs {critical_unit}"
        );
    }

    #[test]
    fn a_container_only_event_gets_its_pod_and_labels_from_the_directory() {
        use crate::metadata::{PodDirectory, PodMeta};
        let directory = PodDirectory::new();
        directory.upsert(
            PodMeta {
                uid: "u9".into(),
                namespace: "shop".into(),
                name: "cart-9".into(),
                labels: vec![("tier".into(), "critical".into())],
                workload_kind: "Deployment".into(),
                workload_name: "cart".into(),
                node: "n".into(),
                ip: "10.244.0.9".into(),
            },
            vec!["c9".into()],
        );
        let yaml =
            "collectors:\n  synthetic: {}\ncorrelation: { critical_labels: [tier=critical] }\n";
        let config = Config::from_yaml(yaml, "test.yaml").expect("valid");
        let impact = |directory: Option<std::sync::Arc<PodDirectory>>| {
            let mut engine = build_with(&config.correlation, "n", directory);
            let in_container = |e: &mut Event| e.entities.container_id = "c9".into();
            let mut kill = event(1, 1, "memory.oom_kill", in_container);
            let mut exit = event(2, 1, "container.exit", in_container);
            engine.process(&mut kill);
            engine.process(&mut exit);
            (kill, exit.correlation.expect("grouped").impact)
        };
        let (kill, with) = impact(Some(directory));
        assert_eq!(&*kill.entities.pod_name, "cart-9");
        assert_eq!(&*kill.entities.workload_name, "cart");
        let (bare, without) = impact(None);
        assert!(bare.entities.pod_name.is_empty());
        assert!(
            (without - with * 0.75).abs() < 1e-9,
            "the directory's labels make it critical"
        );
    }

    #[test]
    fn bad_rules_and_limits_are_named() {
        let config = Config::from_yaml(
            "correlation:\n  max_group_events: 1\n  max_open_events: 0\n  join_window: 10m\n  critical_labels: ['tier critical', '=x']\n  rules:\n    - { name: x, cause: oops, effect: a.b, relation: pod, max_delay: 0s, confidence: 2 }\n",
            "bad.yaml",
        )
        .expect("parses");
        let problems = config.validate().expect_err("invalid").to_string();
        for expected in [
            "correlation.max_group_events",
            "correlation.max_open_events",
            "correlation.join_window",
            "correlation.critical_labels[0]",
            "correlation.critical_labels[1]",
            "correlation.rules[0].cause",
            "correlation.rules[0].confidence",
            "correlation.rules[0].max_delay",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
        let unknown = Config::from_yaml(
            "correlation:\n  rules:\n    - { name: x, cause: a.b, effect: c.d, relation: galaxy, max_delay: 1s, confidence: 1 }\n",
            "bad.yaml",
        )
        .expect_err("unknown relation");
        assert!(
            unknown
                .to_string()
                .contains("correlation.rules[0].relation"),
            "{unknown}"
        );
    }
}
