//! Correlation's own settings: the `correlation:` section of the YAML file deserialises
//! straight into [`CorrelationConfig`].

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

use crate::units::deserialize_duration;

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
    /// A warning that no rule explains joins a group that touched the same container, pod
    /// or unit at most this long before; `0s` turns such joins off.
    #[serde(deserialize_with = "deserialize_duration")]
    pub join_window: Duration,
    /// Namespaces whose incidents matter most. When any `critical_*` list is set, a group
    /// touching nothing in them has its impact scaled by 0.75.
    pub critical_namespaces: Vec<String>,
    /// Pod labels that make a pod critical: `key=value`, or `key` for any value.
    pub critical_labels: Vec<String>,
    /// systemd units that matter most, e.g. `kubelet.service`.
    pub critical_units: Vec<String>,
    /// Causal rules added to the built-in ones (docs/correlation.md).
    pub rules: Vec<RuleConfig>,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        Self {
            mode: CorrelationMode::default(),
            group_quiet: Duration::from_mins(5),
            max_groups: 10_000,
            max_group_events: 1_000,
            max_open_events: 100_000,
            join_window: Duration::from_mins(1),
            critical_namespaces: Vec::new(),
            critical_labels: Vec::new(),
            critical_units: Vec::new(),
            rules: Vec::new(),
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
    /// Entity both share: `process`, `container`, `pod`, `workload`, `node` or `unit`.
    pub relation: super::rules::Relation,
    /// Longest time from cause to effect, e.g. `30s`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_delay: Duration,
    /// How sure a match is, 0..1.
    pub confidence: f64,
    /// Causes below this severity do not match; default `info`.
    #[serde(default)]
    pub cause_min_severity: crate::event::Severity,
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
        if self.join_window > self.group_quiet {
            problems.push(format!(
                "correlation.join_window: must be at most group_quiet ({:?}), got {:?}",
                self.group_quiet, self.join_window
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
