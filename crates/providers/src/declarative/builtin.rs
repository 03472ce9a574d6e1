//! Definitions shipped inside gapless: real platforms described in the same format as an
//! installation's own files (`crates/providers/definitions/`), so one engine runs both. A
//! file of the same name in the providers directory replaces a built-in definition.

use super::{
    check::{Problem, check},
    definition::Definition,
};

/// The built-in definitions' texts, by provider name. Each is documented in
/// `docs/providers/<name>.md`.
pub const TEXTS: &[(&str, &str)] = &[
    (
        "amazon_ads",
        include_str!("../../definitions/amazon_ads.toml"),
    ),
    (
        "amazon_sp",
        include_str!("../../definitions/amazon_sp.toml"),
    ),
    (
        "facebook_pages",
        include_str!("../../definitions/facebook_pages.toml"),
    ),
    (
        "google_ads",
        include_str!("../../definitions/google_ads.toml"),
    ),
    (
        "linkedin_ads",
        include_str!("../../definitions/linkedin_ads.toml"),
    ),
    ("meta_ads", include_str!("../../definitions/meta_ads.toml")),
    ("shopify", include_str!("../../definitions/shopify.toml")),
    (
        "tiktok_ads",
        include_str!("../../definitions/tiktok_ads.toml"),
    ),
];

/// The text of the built-in definition `name`.
pub fn text(name: &str) -> Option<&'static str> {
    TEXTS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A built-in definition that does not pass its check: a defect of the build, reported by
/// name rather than by a panic.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the built-in definition {name} has {} problem(s): {}", .problems.len(), .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct BrokenBuiltIn {
    pub name: &'static str,
    pub problems: Vec<Problem>,
}

/// Every built-in definition, checked, by provider name.
pub fn definitions() -> Result<Vec<(&'static str, Definition)>, BrokenBuiltIn> {
    TEXTS
        .iter()
        .map(|(name, text)| {
            check(text)
                .map(|d| (*name, d))
                .map_err(|problems| BrokenBuiltIn { name, problems })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_built_in_definition_passes_its_check_under_its_own_name() {
        let all = super::definitions().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), super::TEXTS.len());
        for (name, definition) in all {
            assert_eq!(definition.provider.name.get_ref(), name);
        }
    }
}
