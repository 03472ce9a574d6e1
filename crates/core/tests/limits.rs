//! Durations and dates at the limits of the calendar: every computation on values that come
//! from outside (a definition's lookback, a configured interval, a CLI date) answers or
//! says "never"; none panics.

use chrono::{DateTime, Duration, TimeZone, Utc};
use gapless_core::{
    CountedFrom, IdentityId, LedgerEntry, Pipeline, PipelineId, PipelineState, Retention, Tz,
    Window, WindowGrid, WindowSize, WindowState, duration_text,
    ledger::{gaps, next_due, plan_sync, simulate_outage},
};
use proptest::prelude::*;

fn instant(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
        (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
            .prop_map(instant),
        (0_i64..4_102_444_800).prop_map(instant),
    ]
}

fn any_lookback() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::seconds(1)),
        Just(Duration::days(Retention::MAX_DAYS)),
        Just(Duration::MAX),
        (1_i64..=i64::MAX / 1_000).prop_map(Duration::seconds),
    ]
}

fn pipeline(start: DateTime<Utc>, size: WindowSize, tz: Tz) -> Pipeline {
    Pipeline {
        id: PipelineId::new(),
        name: "p".into(),
        source_identity: IdentityId::new(),
        source_resource: "r".into(),
        streams: vec!["s".into()],
        destination_kind: "sqlite".into(),
        destination_target: "w".into(),
        destination_identity: None,
        window: size,
        settle_windows: 2,
        schedule: None,
        time_zone: tz,
        start,
        state: PipelineState::Active,
    }
}

proptest! {
    #[test]
    fn retention_deadlines_never_panic(
        lookback in any_lookback(),
        margin_secs in 0_i64..=86_400,
        start in any_instant(),
        length_secs in 1_i64..=86_400 * 7,
        from_end in any::<bool>(),
    ) {
        let from = if from_end { CountedFrom::End } else { CountedFrom::Start };
        if let Ok(retention) = Retention::new(lookback, from, Duration::seconds(margin_secs)) {
            let end = start.checked_add_signed(Duration::seconds(length_secs)).unwrap_or(start);
            let window = Window::new(start, end);
            let _ = retention.deadline(window);
            let _ = retention.is_past(window, DateTime::<Utc>::MAX_UTC);
            let _ = retention.to_string();
        }
    }

    /// Instants reach the grid only within the years gapless accepts from outside (a
    /// pipeline's start, a back-fill's range: 2000 to a year ahead); these test far beyond.
    #[test]
    fn windows_across_the_supported_calendar_never_panic(
        at in (-2_208_988_800_i64..=253_402_300_799).prop_map(instant),
        hourly in any::<bool>(),
    ) {
        let size = if hourly { WindowSize::HOUR } else { WindowSize::DAY };
        for tz in [Tz::UTC, Tz::Asia__Tokyo, Tz::America__New_York] {
            let grid = WindowGrid::new(size, tz);
            let window = grid.containing(at);
            let _ = grid.label(window);
            let _ = grid.range_label(window.start, window.end);
        }
    }

    /// A settle period of any number of windows, a schedule of any interval and a rate
    /// limit of any interval: refused where they are parsed, or planned with without a
    /// panic at any instant of the calendar.
    #[test]
    fn settle_periods_schedules_and_rate_limits_of_any_size_never_panic(
        settle in any::<u32>(),
        years in 0_u64..=10_000_000,
        at in (-2_208_988_800_i64..=253_402_300_799).prop_map(instant),
    ) {
        let mut p = pipeline(at, WindowSize::DAY, Tz::UTC);
        p.settle_windows = settle;
        let loaded = LedgerEntry {
            pipeline: p.id,
            stream: "s".into(),
            window: p.grid().containing(at),
            state: WindowState::Loaded { at, rows: 1, attempt: 1 },
            attempts: 1,
            updated_at: at,
        };
        // A few windows on, so a plan walks a few windows, not the calendar.
        let late = at.checked_add_signed(Duration::days(3)).unwrap_or(at);
        let _ = plan_sync(&p, None, std::slice::from_ref(&loaded), late);
        let _ = next_due(&p, |_| None, std::slice::from_ref(&loaded), late, Some(late));
        let every = format!("every {years}y");
        match gapless_core::pipeline::parse_schedule(&every) {
            Ok(_) => {
                prop_assert!(years <= 100);
                p.schedule = Some(every);
                let _ = p.run_due(Some(DateTime::<Utc>::MAX_UTC), late);
                let _ = p.run_due(Some(at), late);
            }
            Err(e) => prop_assert!(years == 0 || years > 99, "{e}"),
        }
        if format!("1/{years}y").parse::<gapless_core::RateLimit>().is_ok() {
            prop_assert!((1..=99).contains(&years));
        }
    }

    #[test]
    fn outage_forecasts_of_any_length_never_panic(
        days in 0_i64..=i64::MAX / 86_400_000,
        lookback in any_lookback(),
    ) {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let p = pipeline(now - Duration::days(3), WindowSize::DAY, Tz::UTC);
        let retention = Retention::new(lookback, CountedFrom::Start, Duration::zero()).ok();
        // An outage longer than the calendar ends at its end; its windows stop there.
        let length = Duration::try_days(days.min(400)).unwrap_or(Duration::MAX);
        let forecast = simulate_outage(&p, "s", retention, &[], now, length);
        prop_assert!(forecast.recovered.len() + forecast.lost.len() <= 404);
        let _ = gaps(&[], retention);
    }

    #[test]
    fn durations_are_written_for_people_whatever_their_size(secs in i64::MIN / 1_000 + 1..=i64::MAX / 1_000) {
        let text = duration_text(Duration::seconds(secs));
        prop_assert!(!text.is_empty());
    }
}
