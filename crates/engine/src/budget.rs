//! One request budget per upstream account, shared by syncs, backfills and probes: a keyed
//! GCRA limiter (governor) on the engine's clock, so it runs in virtual time too. A request
//! the budget does not allow is not made; its windows wait for a later run. A report that
//! took several pages is charged for each: the extra pages are owed and paid before the
//! account's next request goes. The provider's own Retry-After is handled apart, through
//! the identity's health.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
};

use chrono::{DateTime, Utc};
use gapless_core::{Clock, Identity, RateLimit};
use governor::{
    Quota, RateLimiter, clock::Clock as LimiterClock, middleware::NoOpMiddleware,
    state::keyed::HashMapStateStore,
};

/// The engine's clock as governor sees it: time since the Unix epoch.
#[derive(Debug, Clone)]
struct EngineClock(Arc<dyn Clock>);

impl LimiterClock for EngineClock {
    type Instant = std::time::Duration;

    fn now(&self) -> Self::Instant {
        (self.0.now() - DateTime::UNIX_EPOCH)
            .to_std()
            .unwrap_or_default()
    }
}

type Limiter = RateLimiter<
    String,
    HashMapStateStore<String>,
    EngineClock,
    NoOpMiddleware<std::time::Duration>,
>;

/// Budgets by provider, each keyed by upstream account.
pub struct Budgets {
    clock: EngineClock,
    overrides: HashMap<String, Option<RateLimit>>,
    limiters: Mutex<HashMap<String, (RateLimit, Arc<Limiter>)>>,
    /// Requests made beyond the one taken, by (provider, account): paid before the next.
    owed: Mutex<HashMap<AccountKey, u32>>,
    /// Accounts the provider said to leave alone until then (its quota nearly used up),
    /// by (provider, account): when the next request may go, and the provider's words.
    held: Mutex<HashMap<AccountKey, Spent>>,
}

/// (provider, upstream account).
type AccountKey = (String, String);

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

/// The budget is spent: the next request may go at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    pub at: DateTime<Utc>,
    /// Which budget: the limit (`200/1h`), or what the provider said.
    pub limit: String,
}

impl Budgets {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock: EngineClock(clock),
            overrides: HashMap::new(),
            limiters: Mutex::new(HashMap::new()),
            owed: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The provider said `identity`'s account has nearly used its quota: nothing more is
    /// taken from its budget until `until` (a later hold replaces an earlier one only when
    /// it ends later).
    pub fn hold(&self, identity: &Identity, until: DateTime<Utc>, said: &str) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let spent = Spent {
            at: until,
            limit: said.to_string(),
        };
        let entry = held
            .entry((identity.provider.clone(), account_key(identity)))
            .or_insert_with(|| spent.clone());
        if entry.at < until {
            *entry = spent;
        }
    }

    /// Replace `provider`'s own limit (None: unlimited).
    pub fn set_limit(&mut self, provider: &str, limit: Option<RateLimit>) {
        self.overrides.insert(provider.to_string(), limit);
        self.limiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(provider);
    }

    /// The limit that applies to `provider`, whose descriptor says `default`.
    pub fn limit(&self, provider: &str, default: Option<RateLimit>) -> Option<RateLimit> {
        self.overrides.get(provider).copied().unwrap_or(default)
    }

    /// Take one request from the budget of `identity`'s upstream account (the identity
    /// itself until its account is known).
    pub fn take(&self, identity: &Identity, default: Option<RateLimit>) -> Result<(), Spent> {
        {
            let now = self.clock.0.now();
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (identity.provider.clone(), account_key(identity));
            match held.get(&key) {
                Some(spent) if spent.at > now => return Err(spent.clone()),
                Some(_) => {
                    held.remove(&key);
                }
                None => {}
            }
        }
        let Some(limit) = self.limit(&identity.provider, default) else {
            return Ok(());
        };
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            match limiters.get(&identity.provider) {
                Some((current, limiter)) if *current == limit => limiter.clone(),
                _ => {
                    let limiter = Arc::new(RateLimiter::hashmap_with_clock(
                        quota(limit),
                        self.clock.clone(),
                    ));
                    limiters.insert(identity.provider.clone(), (limit, limiter.clone()));
                    limiter
                }
            }
        };
        let key = account_key(identity);
        let owed_key = (identity.provider.clone(), key.clone());
        let owed = self
            .owed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&owed_key)
            .copied()
            .unwrap_or(0);
        // More than a burst cannot be taken at once: a larger debt is paid a burst at a time.
        let n = (1 + owed).min(limit.requests.get());
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let outcome = limiter
            .check_key_n(&key, n)
            .unwrap_or_else(|_| limiter.check_key(&key));
        match outcome {
            Ok(()) => {
                let mut all = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
                let left = owed.saturating_sub(n.get() - 1);
                if left == 0 {
                    all.remove(&owed_key);
                    Ok(())
                } else {
                    // Part of the debt paid; the request itself waits for the rest.
                    all.insert(owed_key, left);
                    Err(Spent {
                        at: self
                            .clock
                            .0
                            .now()
                            .checked_add_signed(limit.replenish_interval())
                            .unwrap_or_else(gapless_core::ledger::far_future),
                        limit: limit.to_string(),
                    })
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Spent {
                    at: self.clock.0.now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero()),
                    limit: limit.to_string(),
                })
            }
        }
    }

    /// `identity`'s last request took `requests` HTTP requests in all (pages): the ones
    /// beyond the first are owed to its account's budget.
    pub fn charge(&self, identity: &Identity, default: Option<RateLimit>, requests: u32) {
        if requests <= 1 || self.limit(&identity.provider, default).is_none() {
            return;
        }
        *self
            .owed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((identity.provider.clone(), account_key(identity)))
            .or_insert(0) += requests - 1;
    }
}

/// The budget's key: the upstream account (the identity itself until its account is known).
fn account_key(identity: &Identity) -> String {
    identity
        .upstream_account_id
        .clone()
        .unwrap_or_else(|| identity.id.to_string())
}

fn quota(limit: RateLimit) -> Quota {
    let period = limit
        .replenish_interval()
        .to_std()
        .unwrap_or(std::time::Duration::from_millis(1))
        .max(std::time::Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(limit.requests))
        .allow_burst(limit.requests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use gapless_core::{Health, IdentityId, VirtualClock};

    fn identity(provider: &str, account: &str) -> Identity {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Identity {
            id: IdentityId::new(),
            provider: provider.into(),
            label: account.into(),
            upstream_account_id: Some(account.into()),
            upstream_account_name: None,
            scopes: vec![],
            owners: vec![],
            granted_at: None,
            access_expires_at: None,
            refresh_expires_at: None,
            authorization_expires_at: None,
            token_obtained_at: None,
            refresh_in_flight_since: None,
            last_probe_at: None,
            health: Health::Healthy,
            allow_any_account: false,
            settings: Default::default(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn each_upstream_account_has_its_own_budget_in_virtual_time() {
        let clock = VirtualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        let budgets = Budgets::new(Arc::new(clock.clone()));
        let limit: RateLimit = "3/1h".parse().unwrap();
        let a = identity("sandbox", "user-a");
        let a_again = identity("sandbox", "user-a");
        let b = identity("sandbox", "user-b");
        for _ in 0..2 {
            budgets.take(&a, Some(limit)).unwrap();
        }
        // Two identities of one account share its budget.
        budgets.take(&a_again, Some(limit)).unwrap();
        let spent = budgets.take(&a, Some(limit)).unwrap_err();
        assert_eq!(spent.at, clock.now() + Duration::minutes(20));
        budgets.take(&b, Some(limit)).unwrap();
        clock.advance(Duration::minutes(20));
        budgets.take(&a, Some(limit)).unwrap();
        assert!(budgets.take(&a, Some(limit)).is_err());
        // A report of 3 pages: two more are owed and paid before the next request.
        clock.advance(Duration::hours(1));
        budgets.take(&b, Some(limit)).unwrap();
        budgets.charge(&b, Some(limit), 3);
        let spent = budgets.take(&b, Some(limit)).unwrap_err();
        assert_eq!(spent.at, clock.now() + Duration::minutes(20));
        clock.advance(Duration::minutes(20));
        budgets.take(&b, Some(limit)).unwrap();
        assert!(
            budgets.take(&b, Some(limit)).is_err(),
            "the debt emptied the budget"
        );
        // Without a limit nothing is counted.
        assert!((0..100).all(|_| budgets.take(&a, None).is_ok()));
    }

    #[test]
    fn an_account_the_provider_said_to_leave_alone_takes_nothing_until_then() {
        let clock = VirtualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        let budgets = Budgets::new(Arc::new(clock.clone()));
        let a = identity("meta_ads", "act_1");
        let b = identity("meta_ads", "act_2");
        let until = clock.now() + Duration::minutes(5);
        budgets.hold(&a, until, "x-ad-account-usage: 93% used");
        // An earlier end does not shorten it.
        budgets.hold(
            &a,
            clock.now() + Duration::minutes(1),
            "x-ad-account-usage: 91% used",
        );
        let spent = budgets.take(&a, None).unwrap_err();
        assert_eq!(spent.at, until);
        assert_eq!(spent.limit, "x-ad-account-usage: 93% used");
        budgets.take(&b, None).unwrap();
        clock.advance(Duration::minutes(5));
        budgets.take(&a, None).unwrap();
    }
}
