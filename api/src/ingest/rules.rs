//! Per-topic ingest rules derived from the topic's settings: the event-id pointer, the
//! compiled JSON Schema and the dead-letter topic.
//!
//! Schemas are compiled once per settings change, not per event: [`RulesCache`] keeps
//! the rules with the settings they came from and recompiles only when the topic hands
//! out different settings (compared by pointer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tidegate_storage::{Topic, TopicConfig};

/// Longest schema error reason kept in a dead letter's header or a 400's detail.
const MAX_REASON: usize = 512;

/// What ingest applies to a topic's events.
pub struct TopicRules {
    /// JSON pointer to each event's id.
    pub event_id: Option<String>,
    /// Compiled JSON Schema.
    pub schema: Option<jsonschema::Validator>,
    /// Where events failing the schema go instead of failing the request.
    pub dead_letter_topic: Option<String>,
}

impl std::fmt::Debug for TopicRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicRules")
            .field("event_id", &self.event_id)
            .field("schema", &self.schema.is_some())
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish()
    }
}

/// Why an event failed its topic's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFailure {
    /// JSON pointer to the failing value in the event (`""` for the event itself).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Compiles a JSON Schema (draft detected from `$schema`, 2020-12 by default).
/// Remote `$ref`s are not fetched: a schema needing one is refused.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| format!("invalid JSON Schema: {e}"))
}

impl TopicRules {
    /// Rules of `config`.
    pub fn from_config(config: &TopicConfig) -> Result<TopicRules, String> {
        let schema = config.schema.as_ref().map(compile_schema).transpose()?;
        Ok(TopicRules {
            event_id: config.event_id.clone(),
            schema,
            dead_letter_topic: config.dead_letter_topic.clone(),
        })
    }

    /// Checks one event against the schema (an event that is not JSON fails any schema).
    pub fn check(&self, value: &[u8], json: bool) -> Result<(), SchemaFailure> {
        let Some(schema) = &self.schema else { return Ok(()) };
        let instance: Value = match json.then(|| serde_json::from_slice(value)) {
            Some(Ok(v)) => v,
            _ => return Err(SchemaFailure { path: String::new(), reason: "the event is not JSON".into() }),
        };
        match schema.validate(&instance) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut reason = e.masked().to_string();
                if reason.len() > MAX_REASON {
                    let mut cut = MAX_REASON;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                }
                Err(SchemaFailure { path: e.instance_path().as_str().to_string(), reason })
            }
        }
    }
}

/// Rules compiled from a topic's settings, with the settings they came from.
type Compiled = (Arc<TopicConfig>, Arc<TopicRules>);

/// Compiled rules per topic name, recompiled when the topic's settings change.
#[derive(Debug, Default)]
pub struct RulesCache {
    by_topic: Mutex<HashMap<String, Compiled>>,
}

impl RulesCache {
    /// The rules of `topic`'s current settings.
    pub fn rules(&self, topic: &Topic) -> Result<Arc<TopicRules>, String> {
        let config = topic.config_shared();
        let mut map = self.by_topic.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, rules)) = map.get(&topic.name)
            && Arc::ptr_eq(seen, &config)
        {
            return Ok(rules.clone());
        }
        let rules = Arc::new(TopicRules::from_config(&config)?);
        map.insert(topic.name.clone(), (config, rules.clone()));
        Ok(rules)
    }

    /// Forgets a deleted topic's rules.
    pub fn forget(&self, topic: &str) {
        self.by_topic.lock().unwrap_or_else(PoisonError::into_inner).remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_failures_name_the_path() {
        let config = TopicConfig {
            schema: Some(json!({
                "type": "object",
                "required": ["event"],
                "properties": {"event": {"type": "string"}, "properties": {"type": "object",
                    "properties": {"revenue": {"type": "number"}}}}
            })),
            ..TopicConfig::with_partitions(1)
        };
        let rules = TopicRules::from_config(&config).unwrap();
        rules.check(br#"{"event":"Item Purchased","properties":{"revenue":14.99}}"#, true).unwrap();
        let f = rules.check(br#"{"event":"x","properties":{"revenue":"14.99"}}"#, true).unwrap_err();
        assert_eq!(f.path, "/properties/revenue");
        assert!(f.reason.contains("number"), "{}", f.reason);
        let f = rules.check(br#"{"properties":{}}"#, true).unwrap_err();
        assert_eq!(f.path, "");
        assert!(f.reason.contains("event"), "{}", f.reason);
        assert_eq!(rules.check(b"\x00", false).unwrap_err().reason, "the event is not JSON");
        assert!(compile_schema(&json!({"type": "no-such-type"})).is_err());
    }
}
