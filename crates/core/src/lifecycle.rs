//! Authorization lifecycle decisions: when to refresh, which expiry to warn about, and when
//! many failing identities of one provider are a provider outage.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{Identity, IdentityId};

/// When access tokens are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshPolicy {
    /// Refresh this long before the access token expires…
    pub margin: Duration,
    /// …plus a per-identity jitter in `[0, jitter)`, so identities do not refresh in step.
    pub jitter: Duration,
    /// A token whose expiry is unknown is refreshed this long after it was obtained.
    pub unknown_expiry_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            margin: Duration::minutes(5),
            jitter: Duration::minutes(2),
            unknown_expiry_interval: Duration::minutes(50),
        }
    }
}

/// A stable value in `[0, 1)` derived from the identity id (pure, reproducible jitter).
fn unit_jitter(id: IdentityId) -> f64 {
    let bytes = id.as_uuid().as_u128();
    let folded = (bytes as u64) ^ ((bytes >> 64) as u64);
    (folded >> 11) as f64 / (1u64 << 53) as f64
}

impl RefreshPolicy {
    /// The instant the access token should be refreshed.
    pub fn refresh_at(
        &self,
        id: IdentityId,
        access_expires_at: Option<DateTime<Utc>>,
        obtained_at: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let jitter_ms = (self.jitter.num_milliseconds() as f64 * unit_jitter(id)) as i64;
        let jitter = Duration::milliseconds(jitter_ms);
        match access_expires_at {
            Some(expires) => {
                // Never aim before the token's half-life, even for very short tokens.
                let half_life = obtained_at + (expires - obtained_at) / 2;
                (expires - self.margin - jitter).max(half_life.min(expires))
            }
            None => obtained_at + self.unknown_expiry_interval - jitter,
        }
    }

    pub fn refresh_due(
        &self,
        id: IdentityId,
        access_expires_at: Option<DateTime<Utc>>,
        obtained_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        now >= self.refresh_at(id, access_expires_at, obtained_at)
    }
}

/// Which expiry a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryKind {
    /// A token that cannot be refreshed (e.g. a 60-day long-lived token).
    AccessToken,
    RefreshToken,
    /// The whole authorization (e.g. Amazon SP-API's 365 days).
    Authorization,
}

impl ExpiryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::Authorization => "authorization",
        }
    }
}

/// When to warn before a known expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryPolicy {
    /// Warning horizons, e.g. 30, 7 and 1 days.
    pub horizons: Vec<Duration>,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            horizons: vec![Duration::days(30), Duration::days(7), Duration::days(1)],
        }
    }
}

/// A known expiry within a warning horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryForecast {
    pub kind: ExpiryKind,
    pub at: DateTime<Utc>,
    /// The smallest horizon that contains `at` (each horizon warns once).
    pub horizon: Duration,
}

impl ExpiryPolicy {
    /// The earliest expiry that matters for `identity` and is within a horizon at `now`:
    /// only what a human must renew. An access token's expiry matters only when nothing
    /// renews it without a human (no refresh token, not the client-credentials grant).
    pub fn forecast(
        &self,
        identity: &Identity,
        renews_without_a_human: bool,
        now: DateTime<Utc>,
    ) -> Option<ExpiryForecast> {
        let mut candidates = vec![
            (ExpiryKind::Authorization, identity.authorization_expires_at),
            (ExpiryKind::RefreshToken, identity.refresh_expires_at),
        ];
        if !renews_without_a_human {
            candidates.push((ExpiryKind::AccessToken, identity.access_expires_at));
        }
        let (kind, at) = candidates
            .into_iter()
            .filter_map(|(k, at)| at.map(|at| (k, at)))
            .filter(|(_, at)| *at > now)
            .min_by_key(|(_, at)| *at)?;
        let horizon = self
            .horizons
            .iter()
            .copied()
            .filter(|h| at - now <= *h)
            .min()?;
        Some(ExpiryForecast { kind, at, horizon })
    }
}

/// When failing identities of one provider are one provider outage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OutagePolicy {
    /// At least this many identities failing transiently…
    pub min_identities: usize,
    /// …and at least this share of the provider's usable identities.
    pub min_share: f64,
}

impl Default for OutagePolicy {
    fn default() -> Self {
        Self {
            min_identities: 3,
            min_share: 0.5,
        }
    }
}

impl OutagePolicy {
    /// Is `failing` out of `total` identities of one provider a provider outage?
    pub fn is_outage(&self, failing: usize, total: usize) -> bool {
        total > 0
            && failing >= self.min_identities
            && failing as f64 >= self.min_share * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn refresh_happens_before_expiry_with_bounded_jitter() {
        let policy = RefreshPolicy::default();
        let expires = t0() + Duration::hours(1);
        let mut times = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let id = IdentityId::new();
            let at = policy.refresh_at(id, Some(expires), t0());
            assert!(at <= expires - policy.margin);
            assert!(at > expires - policy.margin - policy.jitter);
            assert_eq!(
                at,
                policy.refresh_at(id, Some(expires), t0()),
                "stable per identity"
            );
            times.insert(at);
        }
        assert!(times.len() > 40, "identities are spread out");
    }

    #[test]
    fn short_tokens_are_refreshed_at_half_life_not_before_they_are_issued() {
        let policy = RefreshPolicy::default();
        let id = IdentityId::new();
        let at = policy.refresh_at(id, Some(t0() + Duration::minutes(4)), t0());
        assert_eq!(at, t0() + Duration::minutes(2));
    }

    #[test]
    fn tokens_without_expiry_are_still_refreshed() {
        let policy = RefreshPolicy::default();
        let id = IdentityId::new();
        assert!(!policy.refresh_due(id, None, t0(), t0() + Duration::minutes(10)));
        assert!(policy.refresh_due(id, None, t0(), t0() + Duration::minutes(50)));
    }

    fn identity() -> Identity {
        Identity {
            id: IdentityId::new(),
            provider: "amazon_sp".into(),
            label: "seller".into(),
            upstream_account_id: None,
            upstream_account_name: None,
            scopes: vec![],
            owners: vec![],
            granted_at: Some(t0()),
            access_expires_at: Some(t0() + Duration::hours(1)),
            refresh_expires_at: None,
            authorization_expires_at: Some(t0() + Duration::days(365)),
            token_obtained_at: Some(t0()),
            refresh_in_flight_since: None,
            last_probe_at: None,
            health: Health::Healthy,
            allow_any_account: false,
            settings: Default::default(),
            created_at: t0(),
            updated_at: t0(),
        }
    }

    #[test]
    fn authorization_expiry_is_forecast_at_each_horizon() {
        let policy = ExpiryPolicy::default();
        let i = identity();
        assert_eq!(policy.forecast(&i, true, t0() + Duration::days(300)), None);
        let at = |d| policy.forecast(&i, true, t0() + Duration::days(d)).unwrap();
        assert_eq!(at(340).horizon, Duration::days(30));
        assert_eq!(at(340).kind, ExpiryKind::Authorization);
        assert_eq!(at(360).horizon, Duration::days(7));
        assert_eq!(at(364).horizon, Duration::days(1));
        assert_eq!(policy.forecast(&i, true, t0() + Duration::days(366)), None);
    }

    #[test]
    fn a_long_lived_token_without_refresh_is_forecast_by_its_own_expiry() {
        let policy = ExpiryPolicy::default();
        let mut i = identity();
        i.authorization_expires_at = None;
        i.access_expires_at = Some(t0() + Duration::days(60));
        assert_eq!(policy.forecast(&i, true, t0() + Duration::days(40)), None);
        let f = policy
            .forecast(&i, false, t0() + Duration::days(40))
            .unwrap();
        assert_eq!(
            (f.kind, f.horizon),
            (ExpiryKind::AccessToken, Duration::days(30))
        );
    }

    #[test]
    fn outage_needs_both_a_minimum_count_and_share() {
        let p = OutagePolicy::default();
        assert!(!p.is_outage(2, 2), "two identities are not an outage");
        assert!(p.is_outage(3, 4));
        assert!(!p.is_outage(3, 10), "30% is below the share");
        assert!(p.is_outage(500, 1000));
        assert!(!p.is_outage(0, 0));
    }
}
