//! JSON objects whose member names are unique, read in one pass.
//!
//! RFC 7515 §4 and RFC 7519 §4 forbid duplicate member names in a JOSE header and a
//! claim set, and RFC 8259 §4 leaves their meaning to each parser: one takes the
//! first, another the last. serde's derived structs refuse a repeated *known* field but
//! skip unknown ones, so `{"aud":…,"aud":…}` fails while `{"role":…,"role":…}` passes.
//! [`from_slice_unique`] refuses both: every top-level member name is remembered while
//! the one typed parse runs (borrowed from the input, no allocation for up to
//! [`INLINE_NAMES`] unescaped names), so no reader of a token, Baton's or another,
//! can see a member the verifier did not.
//!
//! Only the top-level object is checked: that is where the header parameters and
//! claims live. Nested objects are the derived types' own business (a repeated known
//! field still fails there).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// Member names remembered without allocating; longer objects spill into a hash set.
pub const INLINE_NAMES: usize = 16;

/// Most top-level members an object may have. A Baton header has four, a claim set
/// thirteen; an 8 KiB token could carry a thousand, and remembering them all would
/// cost each hostile token more than a signature check. Past this bound the input is
/// [`UniqueJsonError::Invalid`] before more names are read.
pub const MAX_MEMBERS: usize = 64;

/// Why [`from_slice_unique`] refused its input.
#[derive(Debug, thiserror::Error)]
pub enum UniqueJsonError {
    /// A member name appears twice in the top-level object (after unescaping, so
    /// `"alg"` and `"a\u006cg"` are the same name).
    #[error("a member name appears twice in the JSON object")]
    DuplicateMember,
    /// Not JSON, not an object, or not the shape the target type wants.
    #[error("not the expected JSON object: {0}")]
    Invalid(#[source] serde_json::Error),
}

/// Deserializes `T` from a JSON document whose top level must be an object with
/// unique member names, in a single pass over `json`.
///
/// ```
/// use baton_proto::json::{UniqueJsonError, from_slice_unique};
/// #[derive(serde::Deserialize)]
/// struct Header { alg: String }
///
/// let ok: Header = from_slice_unique(br#"{"alg":"ES256","kid":"k"}"#).unwrap();
/// assert_eq!(ok.alg, "ES256");
/// // Unknown members are ignored, but never twice.
/// assert!(matches!(
///     from_slice_unique::<Header>(br#"{"alg":"ES256","x":1,"x":2}"#),
///     Err(UniqueJsonError::DuplicateMember)
/// ));
/// // An array is not an object, even where serde would fill a struct from one.
/// assert!(matches!(
///     from_slice_unique::<Header>(br#"["ES256"]"#),
///     Err(UniqueJsonError::Invalid(_))
/// ));
/// ```
pub fn from_slice_unique<'de, T: Deserialize<'de>>(json: &'de [u8]) -> Result<T, UniqueJsonError> {
    // RFC 8259 §8.1: JSON text is UTF-8. serde_json checks the strings it decodes but
    // only skims the ones it skips (unknown members), so without this check a claim
    // set with invalid bytes inside an ignored member would verify here and fail, or
    // read differently, in a stricter reader.
    let json = std::str::from_utf8(json)
        .map_err(|_| UniqueJsonError::Invalid(de::Error::custom("the JSON text is not UTF-8")))?;
    let mut names = Names::default();
    let mut de = serde_json::Deserializer::from_str(json);
    let parsed = T::deserialize(Object {
        de: &mut de,
        names: &mut names,
    })
    .and_then(|value| de.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        // The name visitor's error is what stopped the parse: say so precisely.
        Err(_) if names.duplicate => Err(UniqueJsonError::DuplicateMember),
        Err(e) => Err(UniqueJsonError::Invalid(e)),
    }
}

/// The member names seen so far.
struct Names<'de> {
    inline: [&'de str; INLINE_NAMES],
    len: usize,
    /// Escaped names (unescaped copies) and names past the inline ones. std's hasher
    /// is keyed per process, so names cannot be chosen to collide.
    spill: HashSet<Cow<'de, str>>,
    /// One bit per name seen, from its length and end bytes: the names of a header or
    /// claim set rarely share one, so most names are new after one AND, not a scan.
    bloom: u64,
    /// Names recorded, escaped or not.
    count: usize,
    duplicate: bool,
}

impl Default for Names<'_> {
    fn default() -> Self {
        Self {
            inline: [""; INLINE_NAMES],
            len: 0,
            spill: HashSet::new(),
            bloom: 0,
            count: 0,
            duplicate: false,
        }
    }
}

impl<'de> Names<'de> {
    /// Baton's own header and claim names (`alg typ kid …`, `iss sub … cnf`) each get
    /// a bit of their own with this mix, so a valid token never scans.
    fn bit(name: &str) -> u64 {
        let bytes = name.as_bytes();
        let first = usize::from(bytes.first().copied().unwrap_or(0));
        let last = usize::from(bytes.last().copied().unwrap_or(0));
        1 << (bytes
            .len()
            .wrapping_add(first)
            .wrapping_add(last.wrapping_mul(6))
            % 64)
    }

    fn contains(&self, name: &str) -> bool {
        self.inline[..self.len].contains(&name) || self.spill.contains(name)
    }

    /// Records `name`; false (and the duplicate flag set) when it was seen before.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        self.count += 1;
        let bit = Self::bit(&name);
        let maybe_seen = self.bloom & bit != 0;
        self.bloom |= bit;
        if maybe_seen && self.contains(&name) {
            self.duplicate = true;
            return false;
        }
        match name {
            Cow::Borrowed(name) if self.len < INLINE_NAMES => {
                self.inline[self.len] = name;
                self.len += 1;
            }
            name => {
                self.spill.insert(name);
            }
        }
        true
    }
}

/// The top-level value: must be an object.
struct Object<'a, 'de, D> {
    de: D,
    names: &'a mut Names<'de>,
}

impl<'a, 'de, D: Deserializer<'de>> Deserializer<'de> for Object<'a, 'de, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_any(ObjectVisitor {
            visitor,
            names: self.names,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_map(ObjectVisitor {
            visitor,
            names: self.names,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_struct(
            name,
            fields,
            ObjectVisitor {
                visitor,
                names: self.names,
            },
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct enum
        identifier ignored_any
    }
}

/// Accepts only an object (every other `visit_*` keeps serde's "invalid type" error)
/// and hands its members on with their names checked.
struct ObjectVisitor<'a, 'de, V> {
    visitor: V,
    names: &'a mut Names<'de>,
}

impl<'a, 'de, V: Visitor<'de>> Visitor<'de> for ObjectVisitor<'a, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(Members {
            map,
            names: self.names,
        })
    }
}

/// The object's members: names go through [`NameSeed`], values straight through.
struct Members<'a, 'de, A> {
    map: A,
    names: &'a mut Names<'de>,
}

impl<'a, 'de, A: MapAccess<'de>> MapAccess<'de> for Members<'a, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.map.next_key_seed(NameSeed {
            seed,
            names: self.names,
        })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

struct NameSeed<'a, 'de, K> {
    seed: K,
    names: &'a mut Names<'de>,
}

impl<'a, 'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for NameSeed<'a, 'de, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.seed.deserialize(Name {
            de,
            names: self.names,
        })
    }
}

/// One member name, recorded as the target type's visitor reads it.
struct Name<'a, 'de, D> {
    de: D,
    names: &'a mut Names<'de>,
}

impl<'a, 'de, D: Deserializer<'de>> Deserializer<'de> for Name<'a, 'de, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_any(NameVisitor {
            visitor,
            names: self.names,
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_identifier(NameVisitor {
            visitor,
            names: self.names,
        })
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_str(NameVisitor {
            visitor,
            names: self.names,
        })
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_string(NameVisitor {
            visitor,
            names: self.names,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum ignored_any
    }
}

struct NameVisitor<'a, 'de, V> {
    visitor: V,
    names: &'a mut Names<'de>,
}

impl<'a, 'de, V: Visitor<'de>> NameVisitor<'a, 'de, V> {
    fn record<E: de::Error>(&mut self, name: Cow<'de, str>) -> Result<(), E> {
        if self.names.count >= MAX_MEMBERS {
            return Err(E::custom("too many members"));
        }
        if self.names.insert(name) {
            Ok(())
        } else {
            Err(E::custom("duplicate member name"))
        }
    }
}

impl<'a, 'de, V: Visitor<'de>> Visitor<'de> for NameVisitor<'a, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<Self::Value, E> {
        self.record(Cow::Borrowed(v))?;
        self.visitor.visit_borrowed_str(v)
    }

    // A name with escapes is unescaped into a scratch buffer: keep a copy.
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Self::Value, E> {
        self.record(Cow::Owned(v.to_owned()))?;
        self.visitor.visit_str(v)
    }

    fn visit_string<E: de::Error>(mut self, v: String) -> Result<Self::Value, E> {
        self.record(Cow::Owned(v.clone()))?;
        self.visitor.visit_string(v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Two<'a> {
        #[serde(borrow)]
        a: Cow<'a, str>,
        #[serde(default)]
        b: Option<i64>,
    }

    fn two(json: &str) -> Result<Two<'_>, UniqueJsonError> {
        from_slice_unique(json.as_bytes())
    }

    #[test]
    fn unique_members_parse_as_serde_would_and_stay_borrowed() {
        let parsed = two(r#" {"a":"x","b":2,"c":{"d":[1,{"e":null}]},"f":"g"} "#).unwrap();
        assert_eq!(parsed.a, "x");
        assert!(matches!(parsed.a, Cow::Borrowed(_)));
        assert_eq!(parsed.b, Some(2));
        assert_eq!(two(r#"{"a":"x"}"#).unwrap().b, None);
    }

    #[test]
    fn any_repeated_top_level_name_is_refused() {
        for json in [
            r#"{"a":"x","a":"y"}"#,
            r#"{"a":"x","b":1,"b":1}"#,
            r#"{"a":"x","unknown":1,"unknown":2}"#,
            r#"{"unknown":1,"a":"x","unknown":1}"#,
            // The same name, spelled with an escape.
            r#"{"a":"x","\u0061":"y"}"#,
            r#"{"a":"x","\u0062":1,"b":2}"#,
            r#"{"a":"x","z\u0000":1,"z\u0000":2}"#,
        ] {
            assert!(
                matches!(two(json), Err(UniqueJsonError::DuplicateMember)),
                "{json}"
            );
        }
    }

    #[test]
    fn names_past_the_inline_ones_are_still_checked() {
        let mut members: Vec<String> = (0..40).map(|i| format!(r#""m{i}":{i}"#)).collect();
        members.push(r#""a":"x""#.to_owned());
        let json = format!("{{{}}}", members.join(","));
        assert_eq!(two(&json).unwrap().a, "x");
        members.push(r#""m33":0"#.to_owned());
        let json = format!("{{{}}}", members.join(","));
        assert!(matches!(two(&json), Err(UniqueJsonError::DuplicateMember)));
    }

    #[test]
    fn objects_with_more_members_than_the_bound_are_invalid() {
        let object = |n: usize| {
            let mut members: Vec<String> = (1..n).map(|i| format!(r#""m{i}":{i}"#)).collect();
            members.push(r#""a":"x""#.to_owned());
            format!("{{{}}}", members.join(","))
        };
        assert_eq!(two(&object(MAX_MEMBERS)).unwrap().a, "x");
        assert!(matches!(
            two(&object(MAX_MEMBERS + 1)),
            Err(UniqueJsonError::Invalid(_))
        ));
        // A thousand names fit in an 8 KiB token: refused, not remembered.
        assert!(matches!(
            two(&object(1000)),
            Err(UniqueJsonError::Invalid(_))
        ));
    }

    #[test]
    fn only_the_top_level_object_is_checked_for_unknown_names() {
        // Nested objects belong to the target type (here: a generic map keeps the last).
        let nested: BTreeMap<String, serde_json::Value> =
            from_slice_unique(br#"{"n":{"k":1,"k":2}}"#).unwrap();
        assert_eq!(nested["n"]["k"], 2);
    }

    #[test]
    fn invalid_utf8_is_refused_even_inside_skipped_members() {
        // serde_json alone accepts all three: it does not decode what it skips.
        for json in [
            &b"{\"a\":\"x\",\"c\":\"\xff\"}"[..],
            b"{\"a\":\"x\",\"c\":{\"d\":[\"\xc3\x28\"]}}",
            b"{\"a\":\"x\",\"c\":\"\xed\xa0\x80\"}",
        ] {
            assert!(serde_json::from_slice::<Two<'_>>(json).is_ok());
            assert!(
                matches!(
                    from_slice_unique::<Two<'_>>(json),
                    Err(UniqueJsonError::Invalid(_))
                ),
                "{json:?}"
            );
        }
        // Valid multi-byte text is of course fine.
        assert_eq!(two(r#"{"a":"é","c":"✓"}"#).unwrap().a, "é");
    }

    #[test]
    fn non_objects_and_trailing_bytes_are_invalid() {
        for json in [
            r#"["x",1]"#,
            r#""x""#,
            "1",
            "null",
            "",
            r#"{"a":"x"} {}"#,
            "{",
        ] {
            assert!(
                matches!(two(json), Err(UniqueJsonError::Invalid(_))),
                "{json}"
            );
        }
    }
}
