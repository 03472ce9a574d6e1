//! Asynchronous report jobs: create → poll → result, the job's id kept in a
//! [`ReportJobs`] book from its creation until its result is read, so a later call for the
//! same range (after a restart, on another instance) polls the same job and never asks
//! for a second one.

use std::time::Duration as StdDuration;

use gapless_core::{Failure, FailureCause, ReportRange};
use gapless_vault::Credential;

use super::{DeclarativeSource, Decoder, Reading, rendering, scalar_text, unusable};
use crate::{
    Extracted, ReportJob, ReportJobs,
    declarative::{
        definition::{Job, Stream},
        request::RequestTemplates,
        template::Vars,
    },
};

/// Defaults and bounds of a job's waits (`provider check` refuses values outside them).
pub const POLL_EVERY_DEFAULT: StdDuration = StdDuration::from_secs(5);
pub const POLL_FOR_DEFAULT: StdDuration = StdDuration::from_secs(120);
pub const MAX_WAIT_DEFAULT: StdDuration = StdDuration::from_secs(3600);
pub const WAIT_MIN: StdDuration = StdDuration::from_millis(10);
pub const WAIT_MAX: StdDuration = StdDuration::from_secs(24 * 3600);
/// The longest one run polls: well inside a pipeline claim (five minutes), which is kept
/// only between requests.
pub const POLL_FOR_MAX: StdDuration = StdDuration::from_secs(120);
/// The most polls of one job in one run, whatever the clocks say.
const MAX_POLLS_PER_RUN: u32 = 200;
/// The longest pause between two polls.
const POLL_EVERY_CAP: StdDuration = StdDuration::from_secs(60);

fn wait(value: Option<&toml::Spanned<String>>, default: StdDuration) -> StdDuration {
    value
        .and_then(|v| humantime::parse_duration(v.get_ref()).ok())
        .map_or(default, |d| d.clamp(WAIT_MIN, WAIT_MAX))
}

/// The book could not be read or written: nothing was lost, the windows wait.
fn book_failure(error: String) -> Failure {
    Failure::new(FailureCause::Transient)
        .with_code("report_job_book")
        .with_message(format!(
            "the report jobs in flight cannot be read or kept: {error}"
        ))
}

fn pending(code: &str, message: String) -> Failure {
    Failure::new(FailureCause::ReportPending)
        .with_code(code)
        .with_message(message)
}

/// A job that took longer than `max_wait`: forgotten, its windows wait for a new one.
fn abandoned(id: &str, max_wait: chrono::Duration) -> Failure {
    pending(
        "report_job_abandoned",
        format!(
            "report job {id} was not ready after {}; it is abandoned and a new one is asked for at the next run",
            humantime::format_duration(max_wait.to_std().unwrap_or_default())
        ),
    )
}

/// A non-empty id at `pointer` in an answer (a string or a number).
fn id_at(answer: &serde_json::Value, pointer: &str) -> Option<String> {
    text_at(answer, pointer).filter(|id| !id.is_empty())
}

/// How long a job may take, how long one run polls it and how often, and when this run
/// began (on the book's clock and on the real one).
struct Waits {
    max_wait: chrono::Duration,
    poll_for: chrono::Duration,
    every: StdDuration,
    run_started: chrono::DateTime<chrono::Utc>,
    real_started: std::time::Instant,
}

impl Waits {
    fn of(job: &Job, jobs: &dyn ReportJobs) -> Self {
        let max_wait = chrono::Duration::from_std(wait(job.max_wait.as_ref(), MAX_WAIT_DEFAULT))
            .unwrap_or(chrono::Duration::hours(1));
        let poll_for = chrono::Duration::from_std(
            wait(job.poll_for.as_ref(), POLL_FOR_DEFAULT)
                .min(POLL_FOR_MAX)
                .min(jobs.patience()),
        )
        .unwrap_or(chrono::Duration::minutes(2));
        Self {
            max_wait,
            poll_for,
            every: wait(job.poll_every.as_ref(), POLL_EVERY_DEFAULT),
            run_started: jobs.now(),
            real_started: std::time::Instant::now(),
        }
    }
}

/// Where one report job is kept in the book.
#[derive(Clone, Copy)]
struct JobKey<'a> {
    resource: &'a str,
    stream: &'a str,
    span: gapless_core::Window,
}

impl JobKey<'_> {
    async fn forget(&self, jobs: &dyn ReportJobs) -> Result<(), Failure> {
        jobs.forget(self.resource, self.stream, self.span)
            .await
            .map_err(book_failure)
    }
}

/// What a poll's status says, by the definition's lists.
enum JobStatus {
    Done,
    Empty,
    Failed,
    Pending,
    Unknown,
}

impl JobStatus {
    fn of(job: &Job, status: &String) -> Self {
        if job.done.contains(status) {
            Self::Done
        } else if job.empty.contains(status) {
            Self::Empty
        } else if job.failed.contains(status) {
            Self::Failed
        } else if job.pending.contains(status) {
            Self::Pending
        } else {
            Self::Unknown
        }
    }
}

/// A non-null scalar at `pointer` in an answer, as text.
fn text_at(answer: &serde_json::Value, pointer: &str) -> Option<String> {
    answer
        .pointer(pointer)
        .filter(|v| !v.is_null())
        .map(scalar_text)
}

/// How a run's polling of a job ended.
enum Polled {
    /// Finished: its last answer.
    Done(serde_json::Value),
    /// Finished with nothing to read.
    Empty,
}

impl DeclarativeSource {
    /// The rows of one asynchronous report: the job kept in `jobs` is polled (or one is
    /// created), and once done its result is read and the job forgotten.
    pub(super) async fn run_job(
        &self,
        credential: &Credential,
        def: &Stream,
        job: &Job,
        resource: &str,
        range: ReportRange,
        jobs: &dyn ReportJobs,
    ) -> Result<Extracted, Failure> {
        let key = JobKey {
            resource,
            stream: def.name.get_ref().as_str(),
            span: range.span,
        };
        let waits = Waits::of(job, jobs);
        let tz = range.time_zone;
        let window = (
            key.span.start.with_timezone(&tz),
            key.span.end.with_timezone(&tz),
        );
        // The creation's values; the poll's add the job's id.
        let base = Vars {
            window: Some(window),
            resource,
            ..Vars::settings_only(self.settings.values())
        };
        let mut requests: u32 = 0;
        let current = self
            .current_job(credential, job, key, &waits, &base, jobs, &mut requests)
            .await?;
        let vars = Vars {
            job: Some(&current.id),
            result: None,
            ..base
        };
        let finished = match self
            .poll(
                credential,
                job,
                key,
                &current,
                &waits,
                &vars,
                jobs,
                &mut requests,
            )
            .await?
        {
            Polled::Done(answer) => answer,
            Polled::Empty => {
                return Ok(Extracted::new(Vec::new(), requests));
            }
        };
        let read = self
            .job_result(credential, def, job, &finished, &current, resource, range)
            .await;
        // A result that cannot be used would be the same when read again: a new job is
        // asked for next time. One that could not be fetched is read again from this job.
        if read.is_ok() || matches!(&read, Err(f) if f.cause == FailureCause::BadAnswer) {
            key.forget(jobs).await?;
        }
        let mut extracted = read?;
        extracted.requests = extracted.requests.saturating_add(requests);
        Ok(extracted)
    }

    /// The job kept for `key` (forgotten, and an error, when older than the longest wait),
    /// else a new one, created and kept.
    #[allow(clippy::too_many_arguments)]
    async fn current_job(
        &self,
        credential: &Credential,
        job: &Job,
        key: JobKey<'_>,
        waits: &Waits,
        base: &Vars<'_>,
        jobs: &dyn ReportJobs,
        requests: &mut u32,
    ) -> Result<ReportJob, Failure> {
        let now = waits.run_started;
        let kept = jobs
            .find(key.resource, key.stream, key.span)
            .await
            .map_err(book_failure)?;
        match kept {
            Some(kept) if now.signed_duration_since(kept.created_at) > waits.max_wait => {
                key.forget(jobs).await?;
                Err(abandoned(&kept.id, waits.max_wait))
            }
            Some(kept) => Ok(kept),
            None => {
                let answer = self.job_call(credential, &job.create, base).await?;
                *requests += 1;
                let id = id_at(&answer, job.id.get_ref()).ok_or_else(|| {
                    unusable(format!(
                        "the report job's creation answered no id at {}",
                        job.id.get_ref()
                    ))
                })?;
                let created = ReportJob {
                    id,
                    created_at: now,
                };
                jobs.save(key.resource, key.stream, key.span, &created)
                    .await
                    .map_err(book_failure)?;
                Ok(created)
            }
        }
    }

    /// Poll `current` until it is finished, or this run has polled long enough (then the
    /// windows are pending and the next run polls again). A failed job, one with a status
    /// the definition does not know and one older than the longest wait are forgotten.
    #[allow(clippy::too_many_arguments)]
    async fn poll(
        &self,
        credential: &Credential,
        job: &Job,
        key: JobKey<'_>,
        current: &ReportJob,
        waits: &Waits,
        vars: &Vars<'_>,
        jobs: &dyn ReportJobs,
        requests: &mut u32,
    ) -> Result<Polled, Failure> {
        let mut every = waits.every;
        loop {
            let answer = self.job_call(credential, &job.poll, vars).await?;
            *requests += 1;
            let status = text_at(&answer, job.status.get_ref()).unwrap_or_default();
            match JobStatus::of(job, &status) {
                JobStatus::Done => return Ok(Polled::Done(answer)),
                JobStatus::Empty => {
                    key.forget(jobs).await?;
                    return Ok(Polled::Empty);
                }
                JobStatus::Failed => {
                    key.forget(jobs).await?;
                    let said = job
                        .message
                        .as_ref()
                        .and_then(|p| text_at(&answer, p.get_ref()))
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    return Err(Failure::new(FailureCause::BadAnswer)
                        .with_code("report_job_failed")
                        .with_message(format!(
                            "report job {} failed at the provider ({status}){said}; a new one is asked for at the next run",
                            current.id
                        )));
                }
                JobStatus::Unknown => {
                    key.forget(jobs).await?;
                    return Err(unusable(format!(
                        "report job {} has a status the definition does not know: {status:?}",
                        current.id
                    )));
                }
                JobStatus::Pending => {}
            }
            let now = jobs.now();
            if now.signed_duration_since(current.created_at) > waits.max_wait {
                key.forget(jobs).await?;
                return Err(abandoned(&current.id, waits.max_wait));
            }
            // Either clock may say the run has polled long enough: the book's (virtual in
            // tests) and the real one (a book on a virtual clock still sleeps for real).
            let polled = now.signed_duration_since(waits.run_started) >= waits.poll_for
                || chrono::Duration::from_std(waits.real_started.elapsed())
                    .is_ok_and(|d| d >= waits.poll_for)
                || *requests >= MAX_POLLS_PER_RUN;
            if polled {
                return Err(pending(
                    "report_job_pending",
                    format!(
                        "report job {} is still being prepared ({status}); the next run polls it again",
                        current.id
                    ),
                ));
            }
            jobs.pause(every).await;
            every = (every * 2).min(POLL_EVERY_CAP.max(every));
        }
    }

    /// A finished job's rows: from its result URL, else the stream's request with `{job}`.
    #[allow(clippy::too_many_arguments)]
    async fn job_result(
        &self,
        credential: &Credential,
        def: &Stream,
        job: &Job,
        finished: &serde_json::Value,
        current: &ReportJob,
        resource: &str,
        range: ReportRange,
    ) -> Result<Extracted, Failure> {
        let tz = range.time_zone;
        // Where the result is: said by the finished poll, or by a request of its own about
        // the result id the poll gives (a report document).
        let mut requests = 0;
        let located;
        let finished = match (&job.result_id, &job.result_request) {
            (Some(pointer), Some(request)) => {
                let result = id_at(finished, pointer.get_ref()).ok_or_else(|| {
                    unusable(format!(
                        "the finished report job {} gives no result id at {}",
                        current.id,
                        pointer.get_ref()
                    ))
                })?;
                let window = (
                    range.span.start.with_timezone(&tz),
                    range.span.end.with_timezone(&tz),
                );
                let vars = Vars {
                    window: Some(window),
                    resource,
                    job: Some(&current.id),
                    result: Some(&result),
                    ..Vars::settings_only(self.settings.values())
                };
                located = self.job_call(credential, request, &vars).await?;
                requests = 1;
                &located
            }
            _ => finished,
        };
        Ok(match &job.result_url {
            Some(pointer) => {
                let url = finished
                    .pointer(pointer.get_ref())
                    .and_then(|v| v.as_str())
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| {
                        unusable(format!(
                            "the finished report job {} gives no result URL at {}",
                            current.id,
                            pointer.get_ref()
                        ))
                    })?
                    .to_string();
                let rows = self.download(credential, def, &url, tz).await?;
                Extracted::new(rows, requests + 1)
            }
            None => {
                self.read_pages(credential, def, resource, range, Some(&current.id))
                    .await?
            }
        })
    }

    /// One create or poll request of a job: its JSON answer, its failure classified.
    async fn job_call(
        &self,
        credential: &Credential,
        request: &crate::declarative::definition::Request,
        vars: &Vars<'_>,
    ) -> Result<serde_json::Value, Failure> {
        let templates = RequestTemplates::parse(request).map_err(rendering)?;
        let rendered = templates.render(vars).map_err(rendering)?;
        let url = self.absolute(&rendered.url);
        // An id from an answer must not choose where the credential goes.
        let on_provider = url::Url::parse(&url)
            .ok()
            .zip(url::Url::parse(&self.base_url).ok())
            .is_some_and(|(url, base)| url.origin() == base.origin());
        if !on_provider {
            // Its query is left out of the words: it may carry a secret setting.
            let shown = url.split(['?', '#']).next().unwrap_or_default();
            return Err(unusable(format!(
                "a report job request would go to {shown}, off the provider's origin; the credential is not sent there"
            )));
        }
        self.small_json(
            credential,
            &templates.method,
            &url,
            rendered,
            "a JSON answer about the report job",
        )
        .await
    }

    /// A finished job's result at `url`: with the credential on the provider's own origin,
    /// without it anywhere else (a pre-signed storage URL must not receive it).
    async fn download(
        &self,
        credential: &Credential,
        def: &Stream,
        url: &str,
        tz: gapless_core::Tz,
    ) -> Result<Vec<gapless_core::Row>, Failure> {
        let target = url::Url::parse(url)
            .or_else(|_| url::Url::parse(&self.absolute(url)))
            .map_err(|_| unusable(format!("the report's result URL {url:?} is not a URL")))?;
        let base = url::Url::parse(&self.base_url).ok();
        let own = base
            .as_ref()
            .is_some_and(|base| base.origin() == target.origin());
        // Another origin must be https on a public host: a provider's answer cannot send
        // gapless to an internal address (a provider on loopback, in tests, may point to
        // loopback).
        let local_base = base
            .as_ref()
            .and_then(|b| b.host_str())
            .is_some_and(is_loopback);
        let host = target.host_str().unwrap_or_default();
        let trusted = own || (local_base && is_loopback(host));
        if !trusted {
            if target.scheme() != "https" {
                return Err(unusable(format!(
                    "the report's result URL is not https ({}); it is not fetched",
                    target.scheme()
                )));
            }
            if is_internal(host) {
                return Err(unusable(format!(
                    "the report's result URL points to an internal address ({host}); it is not fetched"
                )));
            }
        }
        let answer = self
            .send(
                own.then_some(credential),
                "GET",
                target.as_str(),
                crate::declarative::request::RenderedRequest {
                    url: target.to_string(),
                    headers: vec![("Accept".into(), "*/*".into())],
                    body: None,
                    content_type: None,
                },
                Reading {
                    max_bytes: def.max_response_bytes,
                    timeout: Some(self.report_timeout),
                    compression: def.compression,
                },
            )
            .await?;
        // The provider's rules read the provider's answers; storage on another origin
        // (an expired pre-signed URL answering 403) says nothing about the identity: the
        // result is unusable and a new job is asked for.
        if own && let Some(failure) = self.classify(&answer) {
            return Err(failure);
        }
        if !(200..300).contains(&answer.status) {
            return Err(unusable(format!(
                "the report's result answered HTTP {}",
                answer.status
            )));
        }
        Ok(Decoder::new(def, tz).page(&answer)?.rows)
    }
}

/// A host that is an internal address: loopback, private, link-local, unspecified.
fn is_internal(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
