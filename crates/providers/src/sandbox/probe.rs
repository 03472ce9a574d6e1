//! Who am I: `/v1/me` gives the upstream user, granted scopes, token expiry and the ad
//! accounts the user can read.

use chrono::DateTime;
use gapless_core::{Failure, FailureCause};
use gapless_vault::Credential;

use super::SandboxSource;
use crate::ProbeReport;

pub(super) async fn probe(
    source: &SandboxSource,
    credential: &Credential,
) -> Result<ProbeReport, Failure> {
    let url = format!("{}/v1/me", source.base_url());
    let me = source.get_json(credential, &url).await?;
    let text = |field: &str| me.get(field).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(id), Some(name)) = (text("id"), text("name")) else {
        return Err(Failure::new(FailureCause::Transient)
            .with_code("malformed_response")
            .with_message("the probe answer lacks the user's id or name"));
    };
    let scopes = me
        .get("scopes")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let access_expires_at = me
        .get("expires_at")
        .and_then(|v| v.as_i64())
        .and_then(|ts| DateTime::from_timestamp(ts, 0));
    let resources = me
        .pointer("/ad_accounts/data")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|acc| {
                    Some((
                        acc.get("id")?.as_str()?.to_string(),
                        acc.get("name")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ProbeReport {
        upstream_account_id: id,
        upstream_account_name: name,
        scopes,
        access_expires_at,
        resources,
    })
}
