//! JSON forms that differ from the derived ones: ids as text, byte ids as lowercase hex
//! (as OTLP/JSON writes them), attributes as an object of typed values.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AttrValue, Attribute, Attributes, EventId, GroupId, SpanId, TraceId};

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de>>::deserialize(deserializer)?;
        text.0.parse().map_err(de::Error::custom)
    }
}

/// A borrowed-when-possible string, so ids parse without allocating.
struct Cow<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Cow<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CowVisitor;
        impl<'de> Visitor<'de> for CowVisitor {
            type Value = Cow<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(CowVisitor)
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

fn from_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != N * 2 {
        return Err(format!(
            "expected {} hex characters, got {}",
            N * 2,
            text.len()
        ));
    }
    // Byte by byte: a multi-byte character has the right length in bytes but no char
    // boundary where a pair would end.
    let digit = |b: u8| char::from(b).to_digit(16);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
            return Err(format!("invalid hex in {text:?}"));
        };
        *byte = (high * 16 + low) as u8;
    }
    Ok(out)
}

macro_rules! hex_serde {
    ($ty:ident, $len:literal, $make:expr, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&to_hex(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Cow::deserialize(deserializer)?;
                let bytes = from_hex::<$len>(&text.0)
                    .map_err(|e| de::Error::custom(format!("{}: {e}", $what)))?;
                let make: fn([u8; $len]) -> Option<$ty> = $make;
                make(bytes).ok_or_else(|| de::Error::custom(concat!($what, " is all zeros")))
            }
        }
    };
}

hex_serde!(TraceId, 16, TraceId::new, "trace_id");
hex_serde!(SpanId, 8, SpanId::new, "span_id");
hex_serde!(GroupId, 16, |b| Some(GroupId::new(b)), "group_id");

impl Serialize for AttrValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Str(v) => serializer.serialize_str(v),
            Self::Int(v) => serializer.serialize_i64(*v),
            Self::Float(v) => serializer.serialize_f64(*v),
            Self::Bool(v) => serializer.serialize_bool(*v),
        }
    }
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = AttrValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AttrValue::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(AttrValue::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(AttrValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(AttrValue::Int)
                    .map_err(|_| E::custom(format!("integer {v} is larger than i64")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(AttrValue::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(AttrValue::Bool(v))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for attribute in &self.0 {
            map.serialize_entry(attribute.key.as_ref(), &attribute.value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AttributesVisitor;
        impl<'de> Visitor<'de> for AttributesVisitor {
            type Value = Attributes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of attribute values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut attributes = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((key, value)) = map.next_entry::<String, AttrValue>()? {
                    if attributes.iter().any(|a: &Attribute| a.key == key) {
                        return Err(de::Error::custom(format!("duplicate attribute {key:?}")));
                    }
                    attributes.push(Attribute {
                        key: key.into(),
                        value,
                    });
                }
                Ok(Attributes(attributes))
            }
        }
        deserializer.deserialize_map(AttributesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case::trace_id_multibyte("é".repeat(16))]
    #[case::mixed(format!("{}é{}", "a".repeat(14), "b".repeat(16)))]
    #[case::not_hex("zz".repeat(16))]
    fn ids_with_the_right_length_but_not_hex_are_refused_not_panicked_on(#[case] text: String) {
        let json = serde_json::to_string(&text).expect("a JSON string");
        let error = serde_json::from_str::<TraceId>(&json).expect_err("not a trace id");
        assert!(error.to_string().contains("trace_id"), "{error}");
        let error = serde_json::from_str::<GroupId>(&json).expect_err("not a group id");
        assert!(error.to_string().contains("group_id"), "{error}");
        let span = serde_json::to_string(&"é".repeat(8)).expect("a JSON string");
        let error = serde_json::from_str::<SpanId>(&span).expect_err("not a span id");
        assert!(error.to_string().contains("span_id"), "{error}");
    }

    #[test]
    fn hex_ids_round_trip() {
        let json = "\"0123456789abcdefABCDEF0123456789\"";
        let id: TraceId = serde_json::from_str(json).expect("a trace id");
        assert_eq!(
            serde_json::to_string(&id).expect("serializes"),
            json.to_lowercase()
        );
    }
}
