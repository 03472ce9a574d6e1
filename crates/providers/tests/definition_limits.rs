//! A bounded, seeded fuzzer: definitions with durations anywhere from nothing to absurd go
//! through `provider check`; whatever it accepts, the scheduler's arithmetic on it (window
//! deadlines, probe times, request spans) answers without a panic.

use chrono::{Duration, TimeZone, Utc};
use gapless_core::{Window, WindowSize};
use gapless_providers::declarative::{check::check, connector::descriptor};
use proptest::prelude::*;

const SANDBOX: &str = include_str!("../../../examples/providers/sandbox.toml");

fn duration_text() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just("s"),
        Just("m"),
        Just("h"),
        Just("d"),
        Just("w"),
        Just("y")
    ];
    prop_oneof![
        (0_u64..=u64::MAX, unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (0_u64..=100_000, unit).prop_map(|(n, u)| format!("{n}{u}")),
        Just("99999999d".to_string()),
        Just("36500d".to_string()),
        Just("36501d".to_string()),
        Just("0s".to_string()),
        "[a-z0-9 ]{0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6a70_1e55),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn what_the_check_accepts_the_scheduler_can_compute_with(
        lookback in duration_text(),
        margin in duration_text(),
        probe_every in duration_text(),
        max_range in duration_text(),
        from_end in any::<bool>(),
    ) {
        let text = SANDBOX
            .replace("lookback = \"1110d\"", &format!("lookback = \"{lookback}\"\nlookback_margin = \"{margin}\""))
            .replace("lookback_from = \"from_end\"", if from_end { "lookback_from = \"from_end\"" } else { "lookback_from = \"from_start\"" })
            .replace("probe_every = \"1h\"", &format!("probe_every = \"{probe_every}\""))
            .replace("max_range = \"31d\"", &format!("max_range = \"{max_range}\""));
        let Ok(definition) = check(&text) else {
            return Ok(());
        };
        let provider = descriptor(&definition);
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let window = WindowSize::DAY.containing(now - Duration::days(2));
        for stream in &provider.streams {
            if let Some(retention) = stream.retention {
                prop_assert!(retention.deadline(window).is_some(), "{retention}");
                let _ = retention.is_past(Window::new(window.start, window.end), now);
            }
            let _ = stream.request_span(86_400);
        }
        if let Some(interval) = provider.probe_interval {
            prop_assert!(now.checked_add_signed(interval).is_some());
        }
    }
}
