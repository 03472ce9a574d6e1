//! Amazon: Login with Amazon (LWA, the shared OAuth token endpoint), the Amazon Ads API and
//! the Selling Partner API (SP-API).
//!
//! Only the error classifiers live here for now; the full connectors (profiles probe, ads
//! reporting, SP-API reports and the 365-day re-authorization reminder) come later.

pub mod classify;

/// Login with Amazon / Amazon Ads: access tokens last 60 minutes, refresh tokens until
/// revoked. The Selling Partner API additionally ends every public-app authorization after
/// 365 days (the seller must re-authorize in Seller Central).
pub fn lifetimes_ads() -> crate::Lifetimes {
    crate::Lifetimes {
        access: Some(chrono::Duration::minutes(60)),
        ..Default::default()
    }
}

/// The Selling Partner API: as Amazon Ads, plus the 365-day authorization.
pub fn lifetimes_sp_api() -> crate::Lifetimes {
    crate::Lifetimes {
        authorization: Some(chrono::Duration::days(365)),
        ..lifetimes_ads()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sp_api_authorizations_end_365_days_after_the_grant() {
        use chrono::TimeZone;
        let granted = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(
            super::lifetimes_sp_api().authorization_expires_at(granted),
            Some(granted + chrono::Duration::days(365))
        );
        assert_eq!(
            super::lifetimes_ads().authorization_expires_at(granted),
            None
        );
    }
}
