//! Shallow JSON objects: the top-level members are parsed, their values kept as raw
//! JSON text, so the gateway can read and edit a few fields of an event and write it
//! back without building (and re-serialising) the whole tree.
//!
//! Guarantees: parsing validates the whole text (nested values included); member
//! order is kept; a duplicated key keeps its first position and its last value (as
//! `serde_json::Map` with `preserve_order` does); written text is valid JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object's members: key (unescaped) and value (raw JSON text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawObject<'a> {
    members: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// An object key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawObject<'de>, A::Error> {
                RawObject::from_map(map)
            }
        }
        d.deserialize_map(V)
    }
}

/// The text of a JSON string value, if `raw` is one.
pub fn as_str(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(raw) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
    }
}

/// An id's text in raw JSON: a string's content or a number's text (as written);
/// `None` for any other value.
pub fn scalar_text(raw: &str) -> Option<Cow<'_, str>> {
    match raw.as_bytes().first()? {
        b'"' => as_str(raw),
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

impl<'a> RawObject<'a> {
    /// Collects the members of a map being deserialised (for visitors that meet
    /// objects inside a larger document).
    pub fn from_map<A: MapAccess<'a>>(map: A) -> Result<RawObject<'a>, A::Error> {
        Self::from_map_taking::<A, IgnoredAny>(map, None).map(|(object, _)| object)
    }

    /// [`RawObject::from_map`], except that member `taken` (when named) is
    /// deserialised as a `T` instead of kept raw; it is returned apart (the last one
    /// when repeated) and left out of the object.
    pub fn from_map_taking<A: MapAccess<'a>, T: Deserialize<'a>>(
        mut map: A,
        taken: Option<&str>,
    ) -> Result<(RawObject<'a>, Option<T>), A::Error> {
        let mut out = RawObject { members: Vec::with_capacity(map.size_hint().unwrap_or(16)) };
        let mut apart = None;
        while let Some(Key(k)) = map.next_key::<Key<'a>>()? {
            if taken == Some(k.as_ref()) {
                apart = Some(map.next_value::<T>()?);
            } else {
                out.set(k, Cow::Borrowed(map.next_value::<&'a RawValue>()?.get()));
            }
        }
        Ok((out, apart))
    }

    /// Parses `text`, which must be one JSON object (and nothing else).
    pub fn parse(text: &'a str) -> Result<RawObject<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Raw JSON text of member `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// Raw JSON text of member `key` as it was in the parsed input (`None` when absent
    /// or set since).
    pub fn get_input(&self, key: &str) -> Option<&'a str> {
        match self.members.iter().find(|(k, _)| k == key)?.1 {
            Cow::Borrowed(v) => Some(v),
            Cow::Owned(_) => None,
        }
    }

    /// Member `key` when it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).and_then(as_str)
    }

    /// Whether member `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets member `key` to raw JSON text `value` (which the caller guarantees is valid
    /// JSON), in place when present, else at the end.
    pub fn set(&mut self, key: impl Into<Cow<'a, str>>, value: Cow<'a, str>) {
        let key = key.into();
        match self.members.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.members.push((key, value)),
        }
    }

    /// Removes member `key` (keeping the others' order) and returns its raw text.
    pub fn remove(&mut self, key: &str) -> Option<Cow<'a, str>> {
        let i = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(i).1)
    }

    /// Members in order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Writes the object as compact JSON text.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k.as_ref()).expect("writing to a Vec cannot fail");
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'}');
    }

    /// Length of [`RawObject::write`]'s output, keys counted unescaped (exact for keys
    /// without characters JSON escapes).
    pub fn compact_len(&self) -> usize {
        2 + self.members.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>()
            - usize::from(!self.members.is_empty())
    }

    /// The object as compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.members.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 2);
        self.write(&mut out);
        String::from_utf8(out).expect("keys and raw values are UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn round_trips_and_edits_keep_order_and_validity() {
        let text = r#"{"b": {"x": [1, 2]}, "a\n": "s\"q", "n": 1.5e3, "b": true}"#;
        let mut o = RawObject::parse(text).unwrap();
        assert_eq!(o.members().map(|(k, _)| k).collect::<Vec<_>>(), vec!["b", "a\n", "n"]);
        assert_eq!(o.get("b"), Some("true"), "a duplicate keeps the first position and the last value");
        assert_eq!(o.get_str("a\n").as_deref(), Some("s\"q"));
        assert_eq!(o.get_str("n"), None);
        o.set("c", quote("new").into());
        assert_eq!(o.remove("b").as_deref(), Some("true"));
        let v: Value = serde_json::from_str(&o.to_json()).unwrap();
        assert_eq!(v, json!({"a\n": "s\"q", "n": 1500.0, "c": "new"}));
        assert_eq!(o.to_json(), r#"{"a\n":"s\"q","n":1.5e3,"c":"new"}"#);
    }

    #[test]
    fn refuses_what_is_not_one_valid_object() {
        for bad in ["[1]", "{\"a\": }", "{\"a\": [1,}", "{} {}", "\"s\"", "{\"a\":1"] {
            assert!(RawObject::parse(bad).is_err(), "{bad}");
        }
    }
}
