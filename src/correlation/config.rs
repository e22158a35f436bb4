//! Correlation's own settings: the `correlation:` section of the YAML file deserialises
//! straight into [`CorrelationConfig`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

use super::rules::{Condition, ENTITY_FIELDS, Ordering, Scalar, Test};
use crate::units::{deserialize_duration, deserialize_optional_duration};

/// How events are correlated.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationConfig {
    /// `semantic` (groups, causal chains, impact) or `basic` (entities and trace ids).
    pub mode: CorrelationMode,
    /// A group closes after this long without a new member (event time).
    #[serde(deserialize_with = "deserialize_duration")]
    pub group_quiet: Duration,
    /// Open groups at most; beyond it the quietest closes.
    pub max_groups: usize,
    /// Events in one group at most.
    pub max_group_events: usize,
    /// Events in all open groups together at most: the engine's memory bound (a few
    /// hundred bytes each); beyond it the quietest groups close early.
    pub max_open_events: usize,
    /// Containers, processes and pods the entity index remembers, and entities remembered
    /// for shared-entity joins; a quarter of it bounds the groups not built yet. The
    /// engine's other memory bound (docs/correlation.md).
    pub max_entities: usize,
    /// A warning that no rule explains joins a group that touched the same container, pod
    /// or unit at most this long before; `0s` turns such joins off.
    #[serde(deserialize_with = "deserialize_duration")]
    pub join_window: Duration,
    /// How late a cause may arrive (behind the newest event seen, in event time) and still
    /// join its effect's group, as its root when the effect was the root. Default: twice
    /// the longest reporting interval of the enabled collectors, at least 1m.
    #[serde(deserialize_with = "deserialize_optional_duration")]
    pub late_window: Option<Duration>,
    /// Namespaces whose incidents matter most. When any `critical_*` list is set, a group
    /// touching nothing in them has its impact scaled by 0.75.
    pub critical_namespaces: Vec<String>,
    /// Pod labels that make a pod critical: `key=value`, or `key` for any value.
    pub critical_labels: Vec<String>,
    /// systemd units that matter most, e.g. `kubelet.service`.
    pub critical_units: Vec<String>,
    /// Causal rules added to the built-in ones (docs/correlation.md).
    pub rules: Vec<RuleConfig>,
    /// Whether applications' spans will come (the `otel` collector is on): incident
    /// members are then kept for the join with them from the start. Set by the agent, not
    /// the YAML file; without it the join starts at the first application event.
    #[serde(skip)]
    pub app_spans: bool,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        Self {
            mode: CorrelationMode::default(),
            group_quiet: Duration::from_mins(5),
            max_groups: 10_000,
            max_group_events: 1_000,
            max_open_events: 100_000,
            max_entities: 16_384,
            join_window: Duration::from_mins(1),
            late_window: None,
            critical_namespaces: Vec::new(),
            critical_labels: Vec::new(),
            critical_units: Vec::new(),
            rules: Vec::new(),
            app_spans: false,
        }
    }
}

/// One causal rule from the YAML file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Short name, carried on every link the rule makes.
    pub name: String,
    /// Event type of the cause, e.g. `k8s.pod.evicted`.
    pub cause: String,
    /// Event type of the effect.
    pub effect: String,
    /// Entity both share: `process`, `container`, `pod`, `workload`, `node`, `unit`,
    /// `callee` (the cause is on the server the effect called) or `node_pods` (the cause
    /// on the node, the effect on one of its pods).
    pub relation: super::rules::Relation,
    /// Longest time from cause to effect, e.g. `30s`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_delay: Duration,
    /// How sure a match is, 0..1.
    pub confidence: f64,
    /// Causes below this severity do not match; default `info`. The same as
    /// `cause_when.severity`.
    #[serde(default)]
    pub cause_min_severity: crate::event::Severity,
    /// What the cause must satisfy besides its type.
    #[serde(default)]
    pub cause_when: ConditionConfig,
    /// What the effect must satisfy besides its type.
    #[serde(default)]
    pub effect_when: ConditionConfig,
}

/// A rule's condition on one side, as the YAML writes it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConditionConfig {
    /// The lowest severity that matches.
    pub severity: crate::event::Severity,
    /// Tests by attribute key, or by `entities.<field>` (`node`, `comm`, `container_id`,
    /// `pod_namespace`, `pod_name`, `workload_kind`, `workload_name`, `unit`); all must hold.
    pub attributes: BTreeMap<String, TestConfig>,
    /// Alternatives: when given, at least one of them must hold as well.
    pub any: Vec<ConditionConfig>,
}

/// Tests on one value; every one given must hold.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestConfig {
    /// Equal to this.
    pub equals: Option<Scalar>,
    /// Equal to one of these.
    pub one_of: Option<Vec<Scalar>>,
    /// Not equal to this (an absent value passes).
    pub not: Option<Scalar>,
    /// Equal to none of these (an absent value passes).
    pub none_of: Option<Vec<Scalar>>,
    /// A number greater than this.
    pub above: Option<f64>,
    /// A number at least this.
    pub at_least: Option<f64>,
    /// A number less than this.
    pub below: Option<f64>,
    /// A number at most this.
    pub at_most: Option<f64>,
}

impl TestConfig {
    fn tests(&self) -> Vec<Test> {
        let mut tests = Vec::new();
        if let Some(value) = &self.equals {
            tests.push(Test::OneOf(vec![value.clone()]));
        }
        if let Some(values) = &self.one_of {
            tests.push(Test::OneOf(values.clone()));
        }
        if let Some(value) = &self.not {
            tests.push(Test::NoneOf(vec![value.clone()]));
        }
        if let Some(values) = &self.none_of {
            tests.push(Test::NoneOf(values.clone()));
        }
        for (bound, ordering) in [
            (self.above, Ordering::Above),
            (self.at_least, Ordering::AtLeast),
            (self.below, Ordering::Below),
            (self.at_most, Ordering::AtMost),
        ] {
            if let Some(bound) = bound {
                tests.push(Test::Compare(ordering, bound));
            }
        }
        tests
    }
}

impl ConditionConfig {
    /// The condition the engine evaluates.
    #[must_use]
    pub fn to_condition(&self) -> Condition {
        Condition {
            min_severity: self.severity,
            tests: self
                .attributes
                .iter()
                .flat_map(|(key, test)| test.tests().into_iter().map(|t| (key.clone(), t)))
                .collect(),
            any: self.any.iter().map(Self::to_condition).collect(),
        }
    }

    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        for (key, test) in &self.attributes {
            if let Some(field) = key.strip_prefix("entities.")
                && !ENTITY_FIELDS.contains(&field)
            {
                problems.push(format!(
                    "{at}.attributes.{key}: no such entity field; one of {}",
                    ENTITY_FIELDS.join(", ")
                ));
            }
            if test.tests().is_empty() {
                problems.push(format!(
                    "{at}.attributes.{key}: give at least one of equals, one_of, not, none_of, above, at_least, below, at_most"
                ));
            }
            if test.one_of.as_ref().is_some_and(Vec::is_empty) {
                problems.push(format!("{at}.attributes.{key}.one_of: must not be empty"));
            }
        }
        for (i, alternative) in self.any.iter().enumerate() {
            alternative.validate(&format!("{at}.any[{i}]"), problems);
        }
    }
}

/// A `key=value` or `key` label selector as (key, value).
///
/// # Errors
/// The reason, naming the selector, when the key is empty or either part has whitespace.
pub fn parse_label_selector(selector: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match selector.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (selector, None),
    };
    if key.is_empty() || selector.contains(char::is_whitespace) {
        return Err(format!(
            "a label selector like `tier=critical` or `tier`, got `{selector}`"
        ));
    }
    Ok((key.to_owned(), value.map(str::to_owned)))
}

impl CorrelationConfig {
    /// Appends every problem of the settings to `problems`, each naming its field.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.group_quiet < Duration::from_secs(1) {
            problems.push(format!(
                "correlation.group_quiet: must be at least 1s, got {:?}",
                self.group_quiet
            ));
        }
        if self.max_groups == 0 {
            problems.push("correlation.max_groups: must be at least 1".into());
        }
        if self.max_group_events < 2 {
            problems.push(format!(
                "correlation.max_group_events: must be at least 2, got {}",
                self.max_group_events
            ));
        }
        if self.max_open_events < self.max_group_events {
            problems.push(format!(
                "correlation.max_open_events: must be at least max_group_events ({}), got {}",
                self.max_group_events, self.max_open_events
            ));
        }
        if self.max_entities < 64 {
            problems.push(format!(
                "correlation.max_entities: must be at least 64, got {}",
                self.max_entities
            ));
        }
        if self.join_window > self.group_quiet {
            problems.push(format!(
                "correlation.join_window: must be at most group_quiet ({:?}), got {:?}",
                self.group_quiet, self.join_window
            ));
        }
        if let Some(late) = self.late_window
            && late > self.group_quiet
        {
            problems.push(format!(
                "correlation.late_window: must be at most group_quiet ({:?}), got {late:?}",
                self.group_quiet
            ));
        }
        for (i, selector) in self.critical_labels.iter().enumerate() {
            if let Err(why) = parse_label_selector(selector) {
                problems.push(format!("correlation.critical_labels[{i}]: {why}"));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("correlation.rules[{i}]");
            if rule.name.is_empty() {
                problems.push(format!("{at}.name: must not be empty"));
            }
            for (field, kind) in [("cause", &rule.cause), ("effect", &rule.effect)] {
                if !kind.contains('.') || kind.contains(char::is_whitespace) {
                    problems.push(format!(
                        "{at}.{field}: an event type like `k8s.pod.evicted`, got `{kind}`"
                    ));
                }
            }
            if !(0.0..=1.0).contains(&rule.confidence) {
                problems.push(format!(
                    "{at}.confidence: must be from 0 to 1, got {}",
                    rule.confidence
                ));
            }
            rule.cause_when
                .validate(&format!("{at}.cause_when"), problems);
            rule.effect_when
                .validate(&format!("{at}.effect_when"), problems);
            if rule.max_delay.is_zero() || rule.max_delay > Duration::from_hours(24) {
                problems.push(format!(
                    "{at}.max_delay: must be more than 0 and at most 24h, got {:?}",
                    rule.max_delay
                ));
            }
        }
    }
}

/// Correlation mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CorrelationMode {
    /// Entities, semantic groups, causal chains, impact and predictions.
    #[default]
    Semantic,
    /// Entities and trace ids only; no groups.
    Basic,
}

impl fmt::Display for CorrelationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Semantic => "semantic",
            Self::Basic => "basic",
        })
    }
}
