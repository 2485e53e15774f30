//! What a token allows: `produce`, `consume` and `admin` on topic-name patterns.
//!
//! The permissions claim takes either form:
//! - a list of strings `"<action>:<pattern>"`, e.g. `["produce:web.*", "consume:*"]`
//!   (a bare `"admin"` means `admin:*`);
//! - an object of lists, e.g. `{"produce": ["web.*"], "consume": ["*"]}`.
//!
//! Patterns match whole topic names; `*` matches any run of characters (none
//! included). `admin` on a pattern implies `produce` and `consume` on it.

use serde_json::Value;

/// Something a caller may do to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Post events.
    Produce,
    /// Read records, subscribe, and operate consumer groups on the topic.
    Consume,
    /// Create, alter and delete topics; reset and delete groups; read `/metrics`.
    Admin,
}

impl Action {
    /// Lower-case name, as in the permissions claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "admin",
        }
    }

    /// The action named `text` (`produce`, `consume`, `admin`), as the claim spells it.
    fn parse(text: &str) -> Option<Action> {
        match text {
            "produce" => Some(Action::Produce),
            "consume" => Some(Action::Consume),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }
}

/// The permissions of one token. Unknown actions in the claim are ignored (a token
/// may carry grants for other services); a claim of the wrong shape grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    rules: Vec<(Action, String)>,
}

impl Grants {
    /// Grants from the permissions claim (absent: no permissions).
    pub fn from_claim(claim: Option<&Value>) -> Grants {
        let mut rules = Vec::new();
        match claim {
            Some(Value::Array(items)) => {
                for item in items.iter().filter_map(Value::as_str) {
                    if let (Ok(a), pattern) = parse_permission(item) {
                        rules.push((a, pattern.to_string()));
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (action, patterns) in map {
                    let Some(a) = Action::parse(action) else { continue };
                    match patterns {
                        Value::String(p) => rules.push((a, p.clone())),
                        Value::Array(ps) => {
                            rules.extend(ps.iter().filter_map(Value::as_str).map(|p| (a, p.to_string())))
                        }
                        Value::Bool(true) => rules.push((a, "*".to_string())),
                        _ => {}
                    }
                }
            }
            Some(Value::String(s)) => return Grants::from_claim(Some(&Value::Array(vec![Value::String(s.clone())]))),
            _ => {}
        }
        Grants { rules }
    }

    /// Whether `action` is allowed on `topic`.
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        self.rules.iter().any(|(a, p)| (*a == action || *a == Action::Admin) && pattern_matches(p, topic))
    }

    /// Whether `action` is allowed on every topic (pattern `*`).
    pub fn allows_everywhere(&self, action: Action) -> bool {
        self.rules.iter().any(|(a, p)| (*a == action || *a == Action::Admin) && p == "*")
    }

    /// Whether any action at all is allowed on `topic`.
    pub fn allows_any(&self, topic: &str) -> bool {
        self.rules.iter().any(|(_, p)| pattern_matches(p, topic))
    }
}

/// Whole-string match of `pattern` (where `*` matches any run of characters) against `name`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One `"<action>:<pattern>"` item of the list form, both parts trimmed; a bare action
/// means every topic (`*`). The action is `Err` with its text when it is not one of the
/// three (the claim skips such items; `tidegate token` refuses them).
pub(crate) fn parse_permission(item: &str) -> (Result<Action, &str>, &str) {
    let (action, pattern) = item.split_once(':').unwrap_or((item, "*"));
    let action = action.trim();
    (Action::parse(action).ok_or(action), pattern.trim())
}

/// Why no topic name can ever match `pattern`, if that is so: the shortest name it
/// matches (`*` as nothing, or as one letter where the fixed part alone is no name)
/// fails [`tidegate_storage::validate_topic_name`]. Settings and `tidegate token`
/// refuse such patterns, which would otherwise grant nothing without a word.
pub fn unmatchable(pattern: &str) -> Option<String> {
    let mut name: String = pattern.chars().filter(|&c| c != '*').collect();
    if pattern.contains('*') && matches!(name.as_str(), "" | "." | "..") {
        name.push('a');
    }
    let refusal = tidegate_storage::validate_topic_name(&name).err()?;
    Some(format!("topic pattern {pattern:?} matches no topic: {refusal}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_no_topic_can_match_are_named() {
        for ok in ["*", "web.*", "*.clicks", "a*b", "orders", "..*", "*..", &"x".repeat(249)] {
            assert_eq!(unmatchable(ok), None, "{ok:?}");
        }
        for bad in ["web events", "web/*", "ö*", "", ".", "..", &"x".repeat(250), &format!("{}*", "x".repeat(250))] {
            assert!(unmatchable(bad).is_some(), "{bad:?} was taken as matchable");
        }
    }

    #[test]
    fn patterns_match_whole_names() {
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("web.*", "web.clicks"));
        assert!(pattern_matches("web.*", "web."));
        assert!(!pattern_matches("web.*", "webx"));
        assert!(!pattern_matches("web.*", "app.web.clicks"));
        assert!(pattern_matches("*.clicks", "web.clicks"));
        assert!(pattern_matches("a*b*c", "aXbYc"));
        assert!(pattern_matches("a*b*c", "abc"));
        assert!(!pattern_matches("a*b*c", "acb"));
        assert!(!pattern_matches("ab*ba", "aba"), "prefix and suffix may not overlap");
        assert!(pattern_matches("orders", "orders"));
        assert!(!pattern_matches("orders", "orders2"));
    }

    #[test]
    fn both_claim_forms_grant_the_same() {
        let a = Grants::from_claim(Some(&json!(["produce:web.*", "consume:*", "fly:*"])));
        let b = Grants::from_claim(Some(&json!({"produce": ["web.*"], "consume": "*", "fly": ["*"]})));
        for g in [&a, &b] {
            assert!(g.allows(Action::Produce, "web.clicks"));
            assert!(!g.allows(Action::Produce, "orders"));
            assert!(g.allows(Action::Consume, "orders"));
            assert!(!g.allows(Action::Admin, "orders"));
            assert!(g.allows_everywhere(Action::Consume));
            assert!(!g.allows_everywhere(Action::Produce));
        }
    }

    #[test]
    fn admin_implies_produce_and_consume_and_bad_claims_grant_nothing() {
        let g = Grants::from_claim(Some(&json!(["admin"])));
        assert!(g.allows(Action::Produce, "x") && g.allows(Action::Consume, "x") && g.allows(Action::Admin, "x"));
        let scoped = Grants::from_claim(Some(&json!(["admin:team.*"])));
        assert!(scoped.allows(Action::Produce, "team.a") && !scoped.allows(Action::Produce, "other"));
        for bad in [json!(42), json!(null), json!([1, 2]), json!({"produce": 3})] {
            let g = Grants::from_claim(Some(&bad));
            assert!(!g.allows(Action::Produce, "x") && !g.allows_any("x"), "{bad}");
        }
        assert!(!Grants::from_claim(None).allows_any("x"));
    }

    #[test]
    fn the_lenient_forms_read_as_documented() {
        let single = Grants::from_claim(Some(&json!("consume:orders")));
        assert!(single.allows(Action::Consume, "orders") && !single.allows(Action::Consume, "other"));
        let everywhere = Grants::from_claim(Some(&json!({"admin": true, "produce": false})));
        assert!(everywhere.allows_everywhere(Action::Admin));
        let bare = Grants::from_claim(Some(&json!([" consume ", "produce : web.* "])));
        assert!(bare.allows_everywhere(Action::Consume) && !bare.allows_everywhere(Action::Produce));
        assert!(bare.allows(Action::Produce, "web.x") && !bare.allows(Action::Admin, "web.x"));
        let others = Grants::from_claim(Some(&json!(["read:all", {"produce": "*"}, "openid"])));
        assert!(!others.allows_any("x"), "unknown actions and non-strings grant nothing");
    }
}
