//! Integers as JSON Schema counts them: `3.0` is the integer 3. A client (or a JSON
//! library) that writes every number as a float is not sending a wrong type, so integer
//! fields of the admin API accept an integral float in range and refuse anything else.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Unexpected, Visitor};

struct Integral<T>(PhantomData<T>);

impl<T: TryFrom<i64>> Visitor<'_> for Integral<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::custom(format!("{v} is out of range"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Beyond ±2^53 a float no longer names one integer.
        if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
            self.visit_i64(v as i64)
        } else {
            Err(E::invalid_type(Unexpected::Float(v), &self))
        }
    }
}

/// `#[serde(deserialize_with = "integral")]`.
pub fn integral<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Integral(PhantomData))
}

/// The same for an `Option` field (with `#[serde(default)]`).
pub fn optional_integral<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    struct Optional<T>(PhantomData<T>);
    impl<'de, T: TryFrom<i64>> Visitor<'de> for Optional<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            integral(d).map(Some)
        }
    }
    d.deserialize_option(Optional(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fields {
        #[serde(deserialize_with = "super::integral")]
        priority: i32,
        #[serde(default, deserialize_with = "super::optional_integral")]
        limit: Option<u32>,
    }

    fn parse(json: &str) -> Result<(i32, Option<u32>), String> {
        serde_json::from_str::<Fields>(json)
            .map(|f| (f.priority, f.limit))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_integral_float_is_an_integer_and_nothing_else_is() {
        assert_eq!(
            parse(r#"{"priority": 3.0, "limit": 620.0}"#),
            Ok((3, Some(620)))
        );
        assert_eq!(parse(r#"{"priority": -7}"#), Ok((-7, None)));
        assert_eq!(parse(r#"{"priority": 1, "limit": null}"#), Ok((1, None)));
        assert!(parse(r#"{"priority": 3.5}"#).is_err());
        assert!(parse(r#"{"priority": "3"}"#).is_err());
        assert!(
            parse(r#"{"priority": 2147483648}"#)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse(r#"{"priority": 1, "limit": -1}"#).is_err());
    }
}
