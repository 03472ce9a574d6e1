//! A vendor's error table written in Rust, named by a definition (`classifier =
//! "meta_graph"`), so that a definition and the built-in tables are one source of truth:
//! the definition's own rules are tried first, then the named table, then the defaults.

use gapless_core::Failure;
use serde::Deserialize;

use crate::http::Answer;

/// The tables a definition may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedClassifier {
    /// Meta Graph and Marketing API (`{"error": {"code", "error_subcode"}}`).
    MetaGraph,
    /// Google Ads API (`google.rpc.Status` with `GoogleAdsFailure` details) and Google's
    /// OAuth token endpoint.
    GoogleAds,
    /// Login with Amazon, the Amazon Ads API and the Selling Partner API.
    Amazon,
    /// Shopify Admin API (REST statuses and GraphQL `errors`) and its token endpoint.
    Shopify,
    /// TikTok Business API, which answers errors with HTTP 200 and a `code`.
    Tiktok,
    /// Microsoft identity platform and Microsoft Advertising.
    Microsoft,
}

impl NamedClassifier {
    /// The failure an API answer stands for, if the table says: every error status, and
    /// the 2xx answers that carry an error for vendors that send errors that way.
    pub fn api(self, answer: &Answer) -> Option<Failure> {
        let error_status = answer.status >= 400;
        let error_body = || names_an_error(&answer.body);
        match self {
            Self::Tiktok => crate::tiktok::classify::classify(answer),
            _ if !error_status && !error_body() => None,
            Self::MetaGraph => Some(crate::facebook_ads::classify::classify(answer)),
            Self::GoogleAds => Some(crate::google_ads::classify::classify(answer)),
            Self::Amazon => Some(crate::amazon::classify::classify(answer)),
            Self::Shopify => Some(crate::shopify::classify::classify(answer)),
            Self::Microsoft => Some(crate::microsoft::classify::classify(answer)),
        }
    }

    /// The failure a token endpoint's error answer stands for, where the vendor's table
    /// knows more than RFC 6749 (None: the defaults decide).
    pub fn token(self, answer: &Answer) -> Option<Failure> {
        match self {
            Self::GoogleAds => Some(crate::google_ads::classify::classify_token(answer)),
            Self::Amazon => Some(crate::amazon::classify::classify_token(answer)),
            Self::Shopify => Some(crate::shopify::classify::classify_token(answer)),
            Self::Microsoft => Some(crate::microsoft::classify::classify_token(answer)),
            // Meta's token endpoint answers in the Graph envelope, so the Graph table reads
            // it (an expired token traded: 190/463).
            Self::MetaGraph => Some(crate::facebook_ads::classify::classify(answer)),
            // TikTok's token endpoint answers in the Business API envelope (HTTP 200 with
            // a numeric code): the same table reads it; an answer without that code (an
            // RFC 6749 error) is left to the defaults.
            Self::Tiktok => answer
                .json()
                .and_then(|j| j.get("code").and_then(serde_json::Value::as_i64))
                .and_then(|_| crate::tiktok::classify::classify(answer)),
        }
    }
}

/// Does a JSON body hold a top-level `error` that is not null, or a non-empty top-level
/// `errors` list? Read without building the document: a report page of thousands of rows
/// is scanned once here, not turned into a tree the decoder builds again.
fn names_an_error(body: &str) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    /// Does the object name an error? Read key by key, the last of a repeated key counting
    /// (as a parsed document keeps it); only `errors` is built, and only where it is.
    struct Top;
    impl<'de> Visitor<'de> for Top {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let (mut error, mut errors) = (false, false);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match key.as_ref() {
                    "error" => error = map.next_value::<Option<IgnoredAny>>()?.is_some(),
                    "errors" => {
                        errors = map
                            .next_value::<serde_json::Value>()?
                            .as_array()
                            .is_some_and(|list| !list.is_empty());
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(error || errors)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(body);
    deserializer.deserialize_map(Top).unwrap_or(false) && deserializer.end().is_ok()
}

/// The keys of a JSON object body, read without building the document; None when the body
/// is not a JSON object (a list, other text), where nothing can be told without parsing.
pub(crate) fn top_level_keys(body: &str) -> Option<std::collections::HashSet<String>> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = std::collections::HashSet<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.insert(key);
            }
            Ok(keys)
        }
    }
    if !body.trim_start().starts_with('{') {
        return None;
    }
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let keys = deserializer.deserialize_map(Keys).ok()?;
    deserializer.end().ok()?;
    Some(keys)
}

/// Could a body with these top-level keys hold something at `pointer` (RFC 6901)? False
/// only when the pointer's first step names a key the object does not have.
pub(crate) fn may_hold(keys: Option<&std::collections::HashSet<String>>, pointer: &str) -> bool {
    let Some(keys) = keys else {
        return true;
    };
    let Some(rest) = pointer.strip_prefix('/') else {
        return true;
    };
    let first = rest.split('/').next().unwrap_or_default();
    keys.contains(&first.replace("~1", "/").replace("~0", "~"))
}

#[cfg(test)]
mod tests {
    use super::{may_hold, names_an_error, top_level_keys};

    #[test]
    fn an_error_is_a_top_level_error_not_null_or_a_non_empty_errors_list() {
        for (body, expected) in [
            (r#"{"error": {"code": 190}}"#, true),
            (r#"{"error": "bad"}"#, true),
            (r#"{"error": null}"#, false),
            (r#"{"errors": [{"message": "x"}]}"#, true),
            (r#"{"errors": []}"#, false),
            (r#"{"errors": {"message": "x"}}"#, false),
            (r#"{"errors": "x", "error": {"code": 1}}"#, true),
            (r#"{"data": [{"error": 1}], "errors": null}"#, false),
            // A repeated key: the last one counts, as in a parsed document.
            (r#"{"error": null, "error": {"code": 190}}"#, true),
            (r#"{"error": {"code": 190}, "error": null}"#, false),
            (r#"{"errors": [], "errors": [1]}"#, true),
            (r#"[{"error": 1}]"#, false),
            ("not json", false),
            ("", false),
        ] {
            assert_eq!(names_an_error(body), expected, "{body}");
        }
    }

    #[test]
    fn a_pointer_into_a_key_the_body_lacks_cannot_match_and_anything_else_may() {
        let keys = top_level_keys(r#"{"data": [{"error": 1}], "paging": {}, "a/b": 1, "c~d": 2}"#);
        assert!(may_hold(keys.as_ref(), "/data/0/error"));
        assert!(!may_hold(keys.as_ref(), "/error"));
        assert!(!may_hold(keys.as_ref(), "/error/code"));
        assert!(may_hold(keys.as_ref(), "/a~1b"));
        assert!(may_hold(keys.as_ref(), "/c~0d"));
        assert!(may_hold(keys.as_ref(), ""));
        // Not an object, or not JSON at all: nothing can be ruled out without parsing.
        assert_eq!(top_level_keys(r#"[{"error": 1}]"#), None);
        assert_eq!(top_level_keys("<html>"), None);
        assert_eq!(top_level_keys(r#"{"error": 1} trailing"#), None);
        assert!(may_hold(None, "/error"));
    }
}
