//! The words of every message, per cause and per kind of identity (a source's token or API
//! key, a destination's password), as snapshots: a change of wording shows up in review.

#![allow(clippy::unwrap_used)]

use gapless_core::{FailureCause, ReauthReason};
use gapless_notify::{
    CredentialKind, FailureNotice, LostNotice, RecoveryNotice, Rendered, SpoolSummary,
};

const CAUSES: [FailureCause; 10] = [
    FailureCause::ReauthRequired {
        reason: ReauthReason::Revoked,
    },
    FailureCause::ReauthRequired {
        reason: ReauthReason::PasswordChanged,
    },
    FailureCause::ReauthRequired {
        reason: ReauthReason::Expired,
    },
    FailureCause::ReauthRequired {
        reason: ReauthReason::SessionExpired,
    },
    FailureCause::ReauthRequired {
        reason: ReauthReason::InvalidGrant,
    },
    FailureCause::ReauthRequired {
        reason: ReauthReason::InvalidCredentials,
    },
    FailureCause::ReauthRequired {
        reason: ReauthReason::RefreshOutcomeUnknown,
    },
    FailureCause::PermissionLost,
    FailureCause::AccountBlocked,
    FailureCause::AppNotApproved,
];

/// A failure notice as the engine fills it for `cause` and an identity holding `kind`.
fn failure(cause: FailureCause, kind: CredentialKind) -> FailureNotice {
    let destination = kind == CredentialKind::Password;
    let label = if destination {
        "warehouse-loader"
    } else {
        "acme-ads"
    };
    FailureNotice {
        incident_id: "0b7e…-incident".into(),
        provider: if destination {
            "warehouse".into()
        } else {
            "Sandbox Ads".into()
        },
        identity_label: label.into(),
        upstream_account: Some(if destination {
            "loader on warehouse".into()
        } else {
            "Ana Example, u_100".into()
        }),
        headline: kind.headline(cause).into(),
        cause_words: cause.plain_words().into(),
        resource: (cause == FailureCause::PermissionLost)
            .then(|| "resource act_1001, stream insights (pipeline acme-daily)".into()),
        provider_code: cause.code(),
        provider_message: Some("the provider's own words".into()),
        what_to_do: kind.what_to_do(cause).into(),
        opened: "2026-12-01 07:05 UTC".into(),
        since: "2026-12-01 07:05 UTC".into(),
        reauthorize_url: "https://gapless.example.com/reauth/<link>".into(),
        link_words: kind.link_words(label),
        pipelines: vec!["acme-daily".into()],
        gaps: vec![
            "acme-daily/insights: 2026-11-30 (1 window(s)), recoverable until 2026-12-03 00:00 UTC"
                .into(),
        ],
        deadline: (!destination).then(|| "2026-12-03 00:00 UTC".into()),
        first_lost_range: "2026-11-30".into(),
        history: "3 days".into(),
        reminder: None,
        again: None,
        spool: destination.then(|| SpoolSummary {
            windows: 3,
            used: "1.2 MiB".into(),
            limit: "1.0 GiB".into(),
            max_age: "7 days".into(),
            oldest: Some("2026-12-01 08:00 UTC".into()),
        }),
    }
}

fn shown(rendered: &Rendered) -> String {
    format!("Subject: {}\n\n{}", rendered.subject, rendered.text)
}

fn every_cause(kind: CredentialKind) -> String {
    CAUSES
        .iter()
        .map(|cause| {
            let rendered = failure(*cause, kind).render().unwrap();
            // The HTML carries the same subject line's substance and the link.
            assert!(rendered.html.contains(&kind.link_words(
                if kind == CredentialKind::Password {
                    "warehouse-loader"
                } else {
                    "acme-ads"
                }
            )));
            format!("===== {} =====\n{}", cause.code(), shown(&rendered))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn failure_messages_of_a_source_token_identity() {
    insta::assert_snapshot!(every_cause(CredentialKind::Token));
}

#[test]
fn failure_messages_of_a_source_api_key_identity() {
    insta::assert_snapshot!(every_cause(CredentialKind::ApiKey));
}

#[test]
fn failure_messages_of_a_destination_password_identity() {
    insta::assert_snapshot!(every_cause(CredentialKind::Password));
}

#[test]
fn a_lock_is_not_announced_as_needing_reauthorization() {
    let lock = failure(FailureCause::AccountBlocked, CredentialKind::Token)
        .render()
        .unwrap();
    assert!(
        !lock.subject.contains("needs reauthorization"),
        "{}",
        lock.subject
    );
    assert!(lock.subject.contains("is locked"), "{}", lock.subject);
}

#[test]
fn reminders_and_failing_again_continue_the_thread() {
    let mut reminder = failure(FailureCause::PermissionLost, CredentialKind::Token);
    reminder.reminder = Some(2);
    let mut again = failure(FailureCause::PermissionLost, CredentialKind::Token);
    again.again = Some(1);
    again.since = "2026-12-02 09:10 UTC".into();
    let mut short = failure(
        FailureCause::ReauthRequired {
            reason: ReauthReason::Revoked,
        },
        CredentialKind::Token,
    );
    short.history = "36 hours".into();
    short.first_lost_range = "2026-12-01T06:00Z..2026-12-01T07:00Z".into();
    insta::assert_snapshot!(
        [reminder, again, short]
            .iter()
            .map(|n| shown(&n.render().unwrap()))
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
}

#[test]
fn recovery_messages_of_a_source_and_a_destination() {
    let source = RecoveryNotice {
        incident_id: "0b7e…-incident".into(),
        provider: "Sandbox Ads".into(),
        identity_label: "acme-ads".into(),
        upstream_account: Some("Ana Example".into()),
        outage_from: "2026-12-01 07:05 UTC".into(),
        recovered_at: "2026-12-04 10:00 UTC".into(),
        outage_duration: "3 days 2 hours".into(),
        recovered_windows: 2,
        lost_windows: 1,
        lost_ranges: vec!["acme-daily/insights 2026-11-30".into()],
        still_missing: 1,
        pipelines: vec!["acme-daily".into()],
        destination: false,
    };
    let destination = RecoveryNotice {
        provider: "warehouse".into(),
        identity_label: "warehouse-loader".into(),
        upstream_account: Some("loader on warehouse".into()),
        outage_duration: "5 hours".into(),
        recovered_windows: 3,
        lost_windows: 0,
        lost_ranges: vec![],
        still_missing: 0,
        destination: true,
        ..source.clone()
    };
    insta::assert_snapshot!(format!(
        "{}\n=====\n{}",
        shown(&source.render().unwrap()),
        shown(&destination.render().unwrap())
    ));
}

#[test]
fn a_data_lost_message_names_each_window_and_the_providers_words() {
    let lost = LostNotice {
        provider: "Sandbox Ads".into(),
        identity_label: "acme-ads".into(),
        pipeline: "acme-daily".into(),
        windows: vec![
            "insights 2026-01-02".into(),
            "insights 2026-01-03".into(),
        ],
        why: "Sandbox Ads said: (#100) The start date of the time range cannot be beyond 3 days from the current date".into(),
    };
    insta::assert_snapshot!(shown(&lost.render().unwrap()));
}
