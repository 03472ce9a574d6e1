//! An asynchronous report job through the engine and its state store: a run whose job is
//! still being prepared leaves its windows missing as `report_pending` (no incident, the
//! identity healthy) with the job's id stored; a run by a new engine on the same state —
//! as after a restart — polls that job, never asks for a second one, and loads its windows.
//!
//! The job is the connector's side (a wrapper of the sandbox connector that keeps its job in
//! the book the engine gives it); what is under test is the engine and the store. Also: the
//! answers of one run that come at different times (reports prepared slowly) each count as
//! read when they came; and an unusable answer for a daily run's one request (the new day
//! and the days still settling) is asked for again apart.

#![allow(clippy::unwrap_used)]

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use gapless_core::{Failure, FailureCause, Health, MissingReason, ReportRange, WindowState};
use gapless_demo::demo::DemoWorld;
use gapless_engine::EventLog;
use gapless_providers::{
    AuthorizationRequest, Extracted, ProbeReport, ProviderDescriptor, ProviderSettings, ReportJob,
    ReportJobs, SourceConnector, TokenError, TokenSet,
};
use gapless_sandbox::{DEMO_AD_ACCOUNT, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SandboxConfig};
use gapless_vault::{ClientSecret, Credential, RefreshToken};

/// A test connector over its `inner` one: `$type`'s impl with the methods given, every
/// other method the inner connector's.
macro_rules! connector_over_inner {
    ($type:ty { $($methods:tt)* }) => {
        #[async_trait]
        impl SourceConnector for $type {
            fn descriptor(&self) -> &ProviderDescriptor {
                self.inner.descriptor()
            }
            fn authorization_request(
                &self,
                redirect_uri: &str,
                scopes: &[String],
            ) -> Result<AuthorizationRequest, TokenError> {
                self.inner.authorization_request(redirect_uri, scopes)
            }
            async fn exchange_code(
                &self,
                code: &str,
                verifier: &str,
                redirect_uri: &str,
                now: DateTime<Utc>,
            ) -> Result<TokenSet, TokenError> {
                self.inner
                    .exchange_code(code, verifier, redirect_uri, now)
                    .await
            }
            async fn refresh(
                &self,
                refresh_token: &RefreshToken,
                now: DateTime<Utc>,
            ) -> Result<TokenSet, TokenError> {
                self.inner.refresh(refresh_token, now).await
            }
            async fn probe(&self, credential: &Credential) -> Result<ProbeReport, Failure> {
                self.inner.probe(credential).await
            }
            $($methods)*
        }
    };
}

/// The sandbox connector whose reports come from a job: the first ask creates one that is
/// not ready; once `ready`, the job found in the book is read and forgotten.
#[derive(Debug)]
struct Jobbed {
    inner: Arc<dyn SourceConnector>,
    ready: AtomicBool,
    created: AtomicU32,
    resumed: AtomicU32,
}

impl Jobbed {
    fn new(base_url: &str, ready: bool) -> Self {
        let inner = gapless_providers::sandbox::defined(ProviderSettings {
            base_url: base_url.to_string(),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: ClientSecret::new(DEMO_CLIENT_SECRET.into()),
            timeouts: Default::default(),
            settings: Default::default(),
        })
        .unwrap();
        Self {
            inner: Arc::new(inner),
            ready: AtomicBool::new(ready),
            created: AtomicU32::new(0),
            resumed: AtomicU32::new(0),
        }
    }
}

fn pending(id: &str) -> Failure {
    Failure::new(FailureCause::ReportPending)
        .with_code("report_job_pending")
        .with_message(format!("report job {id} is still being prepared"))
}

connector_over_inner!(Jobbed {
    async fn extract_with_jobs(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
        jobs: &dyn ReportJobs,
    ) -> Result<Extracted, Failure> {
        match jobs.find(resource, stream, range.span).await.unwrap() {
            None => {
                let n = self.created.fetch_add(1, Ordering::SeqCst) + 1;
                let job = ReportJob {
                    id: format!("job-{n}"),
                    created_at: jobs.now(),
                };
                jobs.save(resource, stream, range.span, &job).await.unwrap();
                Err(pending(&job.id))
            }
            Some(job) if !self.ready.load(Ordering::SeqCst) => Err(pending(&job.id)),
            Some(_) => {
                self.resumed.fetch_add(1, Ordering::SeqCst);
                let extracted = self
                    .inner
                    .extract(credential, resource, stream, range)
                    .await?;
                jobs.forget(resource, stream, range.span).await.unwrap();
                Ok(extracted)
            }
        }
    }
    async fn extract(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
    ) -> Result<Extracted, Failure> {
        self.inner
            .extract(credential, resource, stream, range)
            .await
    }
});

#[tokio::test]
async fn a_report_still_being_prepared_waits_without_an_incident_and_a_restart_polls_the_same_job()
{
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) =
        DemoWorld::start_sqlite(&dir.path().join("state"), SandboxConfig::default(), None)
            .await
            .unwrap();
    let first = Arc::new(Jobbed::new(&w.sandbox.base_url(), false));
    w.engine.add_source(first.clone());
    w.daily_run(1).await.unwrap();
    assert_eq!(first.created.load(Ordering::SeqCst), 1);
    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let day1 = ledger.iter().find(|e| e.window.start == w.day(1)).unwrap();
    let WindowState::Missing {
        reason: MissingReason::Transient { detail },
        ..
    } = &day1.state
    else {
        panic!("{:?}", day1.state);
    };
    assert!(
        detail.contains("job-1") && detail.contains("still being prepared"),
        "{detail}"
    );
    let job = w
        .engine
        .store()
        .report_job(w.identity.id, DEMO_AD_ACCOUNT, "insights", day1.window)
        .await
        .unwrap()
        .expect("the job's id is stored");
    assert_eq!(job.job_id, "job-1");
    assert!(w.engine.store().incidents(None).await.unwrap().is_empty());
    assert_eq!(
        w.engine
            .store()
            .identity(w.identity.id)
            .await
            .unwrap()
            .health,
        Health::Healthy
    );

    // A restart: a new engine on the same state, its connector knowing nothing.
    let mut restarted = w.new_engine().await.unwrap();
    let second = Arc::new(Jobbed::new(&w.sandbox.base_url(), true));
    restarted.add_source(second.clone());
    w.clock.advance(Duration::hours(1));
    restarted
        .run_pipeline(&w.pipeline, &mut EventLog::default())
        .await
        .unwrap();
    assert_eq!(second.created.load(Ordering::SeqCst), 0, "no second job");
    assert_eq!(second.resumed.load(Ordering::SeqCst), 1);
    assert_eq!(
        w.engine
            .store()
            .report_job(w.identity.id, DEMO_AD_ACCOUNT, "insights", day1.window)
            .await
            .unwrap(),
        None,
        "forgotten once read"
    );
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}

/// The sandbox connector on a virtual clock that moves on by `step` while each report is
/// prepared: the answers of one run come at different times.
#[derive(Debug)]
struct Slow {
    inner: Arc<dyn SourceConnector>,
    clock: gapless_core::VirtualClock,
    step: Duration,
}

connector_over_inner!(Slow {
    async fn extract(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
    ) -> Result<Extracted, Failure> {
        self.clock.advance(self.step);
        self.inner
            .extract(credential, resource, stream, range)
            .await
    }
});

/// A run loads one answer while it asks for the next: each window still counts as read
/// when its own answer came, not when the answer after it did (which decides when it is
/// settled).
#[tokio::test]
async fn a_window_loaded_while_the_next_report_is_prepared_counts_as_read_when_its_answer_came() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = SandboxConfig {
        lookback_days: 120,
        ..SandboxConfig::default()
    };
    let (mut w, _) = DemoWorld::start_sqlite(&dir.path().join("state"), sandbox, None)
        .await
        .unwrap();
    // Less than a claim lasts: the run renews it before each request.
    let step = Duration::minutes(2);
    let inner = Jobbed::new(&w.sandbox.base_url(), true).inner;
    w.engine.add_source(Arc::new(Slow {
        inner,
        clock: w.clock.clone(),
        step,
    }));
    // Forty days closed: two requests (the sandbox serves 31 days at most in one).
    let began = w.day(41) + Duration::hours(1);
    w.clock.set(began);
    w.engine
        .run_pipeline(&w.pipeline, &mut EventLog::default())
        .await
        .unwrap();
    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let read_at = |day: u32| {
        let entry = ledger
            .iter()
            .find(|e| e.window.start == w.day(day))
            .unwrap();
        match entry.state {
            WindowState::Loaded { at, .. } => at,
            ref other => panic!("day {day}: {other:?}"),
        }
    };
    assert_eq!(read_at(1), began + step, "the first answer");
    assert_eq!(read_at(40), began + step * 2, "the second answer");
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
    }
}

/// The sandbox connector whose answer is unusable whenever the range asked for holds
/// `bad`: one of its rows is dated a year before the range (a day restated badly).
#[derive(Debug)]
struct Stray {
    inner: Arc<dyn SourceConnector>,
    bad: DateTime<Utc>,
}

connector_over_inner!(Stray {
    async fn extract(
        &self,
        credential: &Credential,
        resource: &str,
        stream: &str,
        range: ReportRange,
    ) -> Result<Extracted, Failure> {
        let mut extracted = self
            .inner
            .extract(credential, resource, stream, range)
            .await?;
        if range.span.start <= self.bad && self.bad < range.span.end {
            let stray = extracted.rows.first_mut().and_then(|row| {
                row.iter_mut()
                    .find(|cell| matches!(cell, gapless_core::Value::Date(_)))
            });
            if let Some(gapless_core::Value::Date(day)) = stray {
                *day -= Duration::days(365);
            }
        }
        Ok(extracted)
    }
});

/// A daily run asks for its new day and the days still settling in one request. When the
/// answer is unusable because of a settling day, the new day is asked for again alone and
/// loaded in the same run (it is not recorded missing behind the settling day), and the
/// settling day stays as it was loaded.
#[tokio::test]
async fn an_unusable_answer_for_a_settling_day_does_not_hold_up_the_new_day() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) =
        DemoWorld::start_sqlite(&dir.path().join("state"), SandboxConfig::default(), None)
            .await
            .unwrap();
    for day in 1..=3 {
        w.daily_run(day).await.unwrap();
    }
    let inner = Jobbed::new(&w.sandbox.base_url(), true).inner;
    w.engine.add_source(Arc::new(Stray {
        inner,
        bad: w.day(3),
    }));
    w.daily_run(4).await.unwrap();
    let ledger = w.engine.store().ledger(w.pipeline.id).await.unwrap();
    let state = |day: u32| {
        ledger
            .iter()
            .find(|e| e.window.start == w.day(day))
            .map(|e| e.state.clone())
            .unwrap()
    };
    assert!(
        matches!(state(4), WindowState::Loaded { .. }),
        "the new day: {:?}",
        state(4)
    );
    assert!(
        matches!(state(3), WindowState::Loaded { .. }),
        "the settling day: {:?}",
        state(3)
    );
    for check in w.check_against_truth().await.unwrap() {
        assert_eq!(check.state, "loaded", "{check:?}");
        assert!(check.matches_truth, "{check:?}");
    }
}
