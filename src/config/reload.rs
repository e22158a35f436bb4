//! What a reload changes: from the running configuration and a new valid one, which
//! collectors stop and start, which settings take effect live, and which need a restart.

use super::Config;

/// What applying a new configuration takes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Collectors to stop: their section changed, or they were removed or disabled.
    pub stop: Vec<&'static str>,
    /// Collectors to start: the new versions of changed ones, and added ones.
    pub start: Vec<&'static str>,
    /// Settings that changed and take effect now.
    pub live: Vec<&'static str>,
    /// Settings that changed and take effect only after a restart of the agent.
    pub need_restart: Vec<&'static str>,
}

impl Plan {
    /// Nothing differs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.start.is_empty()
            && self.live.is_empty()
            && self.need_restart.is_empty()
    }
}

/// Lists, under `live` or `need_restart`, the named fields of two structs that differ.
macro_rules! compare {
    ($plan:ident, $old:expr, $new:expr, $section:literal, live: [$($live:ident),*], restart: [$($restart:ident),*]) => {{
        let (old, new) = (&$old, &$new);
        $(
            if old.$live != new.$live {
                $plan.live.push(concat!($section, ".", stringify!($live)));
            }
        )*
        $(
            if old.$restart != new.$restart {
                $plan.need_restart.push(concat!($section, ".", stringify!($restart)));
            }
        )*
    }};
}

/// The plan to go from `old` (running) to `new` (valid).
///
/// Live: the log level, the status interval, a collector queue's size (for the collectors
/// started from now on), the batching and window of delivery, and the correlation
/// engine's windows, bounds and critical lists. The rest (where and how delivery
/// connects, the spool, the export, the correlation mode and rules) needs a restart.
#[must_use]
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for (name, before, after) in old.collectors.differences(&new.collectors) {
        if before {
            plan.stop.push(name);
        }
        if after {
            plan.start.push(name);
        }
    }
    compare!(plan, old.orchestrator, new.orchestrator, "orchestrator",
        live: [log_level, status_interval, buffer_size],
        restart: [workers, node_name, metrics_listen, memory_limit, memory_policy]);
    compare!(plan, old.server, new.server, "server",
        live: [buffer_size, flush_interval, window, drain_timeout],
        restart: [address, insecure, data_dir, max_pending_batches, token_file, spool_dir,
            spool_max_bytes, spool_when_full, tls_ca, tls_cert, tls_key, transport]);
    compare!(plan, old.correlation, new.correlation, "correlation",
        live: [group_quiet, max_groups, max_group_events, max_open_events, join_window,
            late_window, critical_namespaces, critical_labels, critical_units],
        restart: [mode, rules, max_entities]);
    compare!(plan, old.otel, new.otel, "otel",
        live: [],
        restart: [endpoint, self_tracing, export_events, shutdown_timeout]);
    compare!(plan, old.output, new.output, "output", live: [], restart: [stdout]);
    if old.nats != new.nats {
        plan.need_restart.push("nats");
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, "t").expect("parses")
    }

    #[test]
    fn a_changed_collector_restarts_and_each_setting_is_live_or_needs_a_restart() {
        let old = config(
            "collectors:\n  synthetic: { config: { rate: 10 } }\n  replay: { config: { path: a } }\n\
             server: { flush_interval: 1s }\n",
        );
        let new = config(
            "collectors:\n  synthetic: { config: { rate: 20 } }\n  otel: {}\n  replay: { config: { path: a } }\n\
             server: { flush_interval: 2s }\notel: { endpoint: 'b:1' }\n\
             correlation: { group_quiet: 1m }\n",
        );
        assert_eq!(
            plan(&old, &new),
            Plan {
                stop: vec!["synthetic"],
                start: vec!["synthetic", "otel"],
                live: vec!["server.flush_interval", "correlation.group_quiet"],
                need_restart: vec!["otel.endpoint"],
            }
        );
        assert!(plan(&old, &old).is_empty());
        let disabled = config(
            "collectors:\n  synthetic: { enabled: false, config: { rate: 10 } }\n  replay: { config: { path: a } }\n\
             server: { flush_interval: 1s }\n",
        );
        assert_eq!(plan(&old, &disabled).stop, vec!["synthetic"]);
        assert!(plan(&old, &disabled).start.is_empty());
    }
}
