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
        let error_body = || {
            answer.json().is_some_and(|json| {
                json.get("error").is_some_and(|e| !e.is_null())
                    || json
                        .get("errors")
                        .and_then(|e| e.as_array())
                        .is_some_and(|e| !e.is_empty())
            })
        };
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
