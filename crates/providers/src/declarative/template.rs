//! The substitution language of provider definitions: text with `{name}` or
//! `{name:FORMAT}` placeholders, `{{` and `}}` for literal braces. Nothing else: no
//! expressions, no code. Names are checked when the definition is loaded; values are
//! escaped for where they go (a URL component, a JSON string, a header).
//!
//! | name | value | FORMAT |
//! |---|---|---|
//! | `window.start`, `window.end` | the window's bounds (`end` exclusive), in the pipeline's time zone | strftime, default RFC 3339 |
//! | `window.first_day`, `window.last_day` | the local days the window covers (inclusive) | strftime, default `%Y-%m-%d` |
//! | `resource` | the pipeline's resource (e.g. an ad account id) | none |
//! | `cursor` | the pagination cursor of the next page | none |
//! | `page`, `offset`, `limit` | page number, item offset, page size | none |
//! | `job` | the id of the stream's asynchronous report job (its poll and result requests) | none |
//! | `settings.NAME` | an installation setting the definition declares | none |

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, format::StrftimeItems};
use gapless_core::Tz;

/// A template that does not parse or cannot be rendered, with the byte offset in its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {offset})")]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// Where a rendered value goes, which decides its escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// A URL path segment or query value: everything but unreserved characters is
    /// percent-encoded.
    Url,
    /// Inside a JSON string literal: quotes, backslashes and control characters escaped.
    Json,
    /// A header value: taken as is, but a value with a line break is refused.
    Header,
}

/// The variables a template may name.
pub const VARIABLES: &[&str] = &[
    "window.start",
    "window.end",
    "window.first_day",
    "window.last_day",
    "resource",
    "cursor",
    "page",
    "offset",
    "limit",
    "job",
    "result",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var {
        name: String,
        format: Option<String>,
        offset: usize,
    },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The values of one rendering.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub window: Option<(DateTime<Tz>, DateTime<Tz>)>,
    pub resource: &'a str,
    pub cursor: Option<&'a str>,
    pub page: Option<u64>,
    pub offset: Option<u64>,
    pub limit: Option<u64>,
    /// The asynchronous report job's id, in its poll and result requests.
    pub job: Option<&'a str>,
    /// The finished job's result id (a report document's), in its result request.
    pub result: Option<&'a str>,
    /// The installation's settings by name (an optional one left unset is absent).
    pub settings: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> Vars<'a> {
    /// Only the installation's settings: what a consent's parameters may name.
    pub fn settings_only(settings: &'a std::collections::BTreeMap<String, String>) -> Self {
        Vars {
            window: None,
            resource: "",
            cursor: None,
            page: None,
            offset: None,
            limit: None,
            job: None,
            result: None,
            settings,
        }
    }
}

/// The settings of a rendering without any.
pub static NO_SETTINGS: std::collections::BTreeMap<String, String> =
    std::collections::BTreeMap::new();

/// The setting a variable name refers to: `settings.NAME` gives `NAME`.
pub fn setting_name(variable: &str) -> Option<&str> {
    variable
        .strip_prefix("settings.")
        .filter(|name| is_name(name))
}

/// Lowercase letters, digits and `_`, starting with a letter: the names of settings,
/// providers and regions.
pub fn is_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_date_variable(name: &str) -> bool {
    name.starts_with("window.")
}

impl Template {
    /// Parse `text`; an unknown name, a format on a name that takes none, a bad strftime
    /// format or an unclosed brace is an error naming where.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, n)| *n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, n)| *n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(TemplateError {
                        offset: i,
                        message: "a lone '}' (write '}}' for a literal brace)".into(),
                    });
                }
                '{' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(TemplateError {
                            offset: i,
                            message: "an unclosed '{' (write '{{' for a literal brace)".into(),
                        });
                    }
                    let var = Self::variable(&inner, i)?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(var);
                }
                '\0' => {
                    return Err(TemplateError {
                        offset: i,
                        message: "a NUL character".into(),
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The variable written `{inner}` at `offset`: a known name, and a strftime format only
    /// after a date.
    fn variable(inner: &str, offset: usize) -> Result<Part, TemplateError> {
        let error = |message: String| TemplateError { offset, message };
        let (name, format) = match inner.split_once(':') {
            Some((n, f)) => (n.trim().to_string(), Some(f.to_string())),
            None => (inner.trim().to_string(), None),
        };
        if !VARIABLES.contains(&name.as_str()) && setting_name(&name).is_none() {
            return Err(error(format!(
                "unknown variable {name:?}; known: {}, settings.NAME",
                VARIABLES.join(", ")
            )));
        }
        if let Some(f) = &format {
            if !is_date_variable(&name) {
                return Err(error(format!("{name} takes no format")));
            }
            if StrftimeItems::new(f).any(|item| matches!(item, chrono::format::Item::Error)) {
                return Err(error(format!("{f:?} is not a strftime format")));
            }
        }
        Ok(Part::Var {
            name,
            format,
            offset,
        })
    }

    /// The variables the template names.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { name, .. } => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Render with `vars`, escaping each value for `escape` (literal text is kept as is).
    pub fn render(&self, vars: &Vars<'_>, escape: Escape) -> Result<String, TemplateError> {
        self.render_with(vars, escape, false)
    }

    /// Like [`Template::render`], but a pagination variable without a value on this page
    /// (`{cursor}` on the first page) is written as [`absent_marker`] of its name, for the
    /// request to leave out or write as `null` (see `super::request`).
    pub fn render_marked(&self, vars: &Vars<'_>, escape: Escape) -> Result<String, TemplateError> {
        self.render_with(vars, escape, true)
    }

    fn render_with(
        &self,
        vars: &Vars<'_>,
        escape: Escape,
        mark_absent: bool,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var {
                    name,
                    format,
                    offset,
                } => {
                    let missing = || TemplateError {
                        offset: *offset,
                        message: format!("{name} has no value here"),
                    };
                    let absent = match name.as_str() {
                        n if setting_name(n).is_some() => setting_name(n)
                            .is_none_or(|setting| !vars.settings.contains_key(setting)),
                        "cursor" => vars.cursor.is_none(),
                        "page" => vars.page.is_none(),
                        "offset" => vars.offset.is_none(),
                        "limit" => vars.limit.is_none(),
                        "job" => vars.job.is_none(),
                        "result" => vars.result.is_none(),
                        _ => false,
                    };
                    if absent && mark_absent {
                        out.push_str(&absent_marker(name));
                        continue;
                    }
                    let value = match name.as_str() {
                        "window.start" | "window.end" => {
                            let (start, end) = vars.window.ok_or_else(missing)?;
                            let at = if name == "window.start" { start } else { end };
                            match format {
                                Some(f) => formatted(at.format(f), name, *offset)?,
                                None => at.to_rfc3339(),
                            }
                        }
                        "window.first_day" | "window.last_day" => {
                            let (start, end) = vars.window.ok_or_else(missing)?;
                            let day: NaiveDate = if name == "window.first_day" {
                                start.date_naive()
                            } else {
                                (end - chrono::Duration::seconds(1)).date_naive()
                            };
                            formatted(
                                day.format(format.as_deref().unwrap_or("%Y-%m-%d")),
                                name,
                                *offset,
                            )?
                        }
                        "resource" => vars.resource.to_string(),
                        "cursor" => vars.cursor.ok_or_else(missing)?.to_string(),
                        "page" => vars.page.ok_or_else(missing)?.to_string(),
                        "offset" => vars.offset.ok_or_else(missing)?.to_string(),
                        "limit" => vars.limit.ok_or_else(missing)?.to_string(),
                        "job" => vars.job.ok_or_else(missing)?.to_string(),
                        "result" => vars.result.ok_or_else(missing)?.to_string(),
                        n => setting_name(n)
                            .and_then(|setting| vars.settings.get(setting))
                            .ok_or_else(missing)?
                            .clone(),
                    };
                    escape_into(&mut out, &value, escape).map_err(|message| TemplateError {
                        offset: *offset,
                        message: format!("{name}: {message}"),
                    })?;
                }
            }
        }
        Ok(out)
    }
}

/// What [`Template::render_marked`] writes for a variable without a value: characters
/// that no rendered value holds (values are escaped, and definitions are refused when they
/// hold a NUL).
pub fn absent_marker(name: &str) -> String {
    format!("\u{0}absent:{name}\u{0}")
}

/// A formatted date or time; a format that asks for what a date lacks (an hour of a day)
/// is an error, not a panic.
fn formatted(
    value: impl std::fmt::Display,
    name: &str,
    offset: usize,
) -> Result<String, TemplateError> {
    let mut out = String::new();
    write!(out, "{value}").map_err(|_| TemplateError {
        offset,
        message: format!("{name} cannot be shown with that format (a day has no time of day)"),
    })?;
    Ok(out)
}

fn escape_into(out: &mut String, value: &str, escape: Escape) -> Result<(), String> {
    match escape {
        Escape::Url => {
            for b in value.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
        Escape::Json => {
            let quoted = serde_json::to_string(value).map_err(|e| e.to_string())?;
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        Escape::Header => {
            if value.chars().any(|c| matches!(c, '\r' | '\n' | '\0')) {
                return Err("a header value may not contain a line break".into());
            }
            out.push_str(value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn vars(resource: &str) -> Vars<'_> {
        let tz: Tz = "America/New_York".parse().unwrap();
        let start = tz.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let end = tz.with_ymd_and_hms(2026, 3, 8, 0, 0, 0).unwrap();
        Vars {
            window: Some((start, end)),
            resource,
            cursor: Some("a b&c"),
            page: Some(3),
            offset: None,
            limit: Some(100),
            job: None,
            result: None,
            settings: &NO_SETTINGS,
        }
    }

    #[test]
    fn placeholders_render_in_the_zone_with_their_formats() {
        let cases = [
            ("/v1/{resource}/insights", Escape::Url, "/v1/act_1/insights"),
            (
                "since={window.first_day}&until={window.last_day}",
                Escape::Url,
                "since=2026-03-01&until=2026-03-07",
            ),
            (
                "{window.start}",
                Escape::Url,
                "2026-03-01T00%3A00%3A00-05%3A00",
            ),
            ("{window.start:%s}", Escape::Header, "1772341200"),
            ("{window.end:%Y%m%dT%H%M}", Escape::Header, "20260308T0000"),
            (
                "{{literal}} {page}/{limit}",
                Escape::Header,
                "{literal} 3/100",
            ),
            ("after={cursor}", Escape::Url, "after=a%20b%26c"),
        ];
        for (text, escape, expected) in cases {
            let t = Template::parse(text).unwrap();
            assert_eq!(
                t.render(&vars("act_1"), escape).unwrap(),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn values_are_escaped_for_where_they_go() {
        let t = Template::parse("{resource}").unwrap();
        let nasty = "a\"b\\c/d?e&f\n";
        assert_eq!(
            t.render(&vars(nasty), Escape::Url).unwrap(),
            "a%22b%5Cc%2Fd%3Fe%26f%0A"
        );
        assert_eq!(
            t.render(&vars(nasty), Escape::Json).unwrap(),
            "a\\\"b\\\\c/d?e&f\\n"
        );
        let err = t.render(&vars(nasty), Escape::Header).unwrap_err();
        assert!(err.message.contains("line break"), "{err}");
    }

    #[test]
    fn bad_templates_are_named_with_their_place() {
        let cases = [
            ("/v1/{acount}", 4, "unknown variable \"acount\""),
            ("/v1/{resource:%Y}", 4, "takes no format"),
            ("{window.start:%Q}", 0, "not a strftime format"),
            ("/v1/{resource", 4, "unclosed"),
            ("a}b", 1, "lone '}'"),
        ];
        for (text, offset, words) in cases {
            let err = Template::parse(text).unwrap_err();
            assert_eq!(err.offset, offset, "{text}: {err}");
            assert!(err.message.contains(words), "{text}: {err}");
        }
        let t = Template::parse("{window.first_day:%H:%M}").unwrap();
        let err = t.render(&vars("x"), Escape::Url).unwrap_err();
        assert!(err.message.contains("no time of day"), "{err}");
        let t = Template::parse("{offset}").unwrap();
        let err = t.render(&vars("x"), Escape::Url).unwrap_err();
        assert!(err.message.contains("offset has no value"), "{err}");
    }
}
