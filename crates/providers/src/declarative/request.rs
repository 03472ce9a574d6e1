//! A request of a definition, parsed once and rendered for each page: its URL, headers and
//! body — with the one defined rendering of a pagination variable that has no value on a
//! page (`{cursor}` on the first page):
//!
//! - a query parameter (or form field) whose value is exactly that variable is left out;
//! - a header whose value is exactly that variable is left out;
//! - in a JSON body, the variable standing as a whole value (`"after": "{cursor}"` or
//!   `"page": {page}`) is `null`;
//! - anywhere else (inside a path or a longer text) it is an error, which `provider check`
//!   reports because it renders the first page as a run does.
//!
//! `provider check` and the connector share this code, so what passes the check is what
//! is sent.

use super::{
    definition::{BodyFormat, Request},
    template::{Escape, Template, TemplateError, Vars, absent_marker},
};

/// The request's templates.
#[derive(Debug, Clone)]
pub struct RequestTemplates {
    pub method: String,
    pub url: Template,
    pub headers: Vec<(String, Template)>,
    pub body: Option<Template>,
    pub body_format: BodyFormat,
}

/// A request ready to send (its URL still relative when the template was a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// The body's media type when the definition's headers do not name one.
    pub content_type: Option<&'static str>,
}

/// Which part of a request could not be rendered, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}: {message}")]
pub struct RenderError {
    /// `url`, `headers.NAME` or `body`.
    pub part: String,
    pub message: String,
}

const PLACEMENT: &str = "a variable without a value on a page may stand only as a whole query parameter value, form field or header value (left out) or as a whole JSON value (null)";

impl RequestTemplates {
    /// Parse a request's templates; the error names the part.
    pub fn parse(request: &Request) -> Result<Self, RenderError> {
        let parse = |part: &str, text: &str| {
            Template::parse(text).map_err(|e| RenderError {
                part: part.to_string(),
                message: e.to_string(),
            })
        };
        Ok(Self {
            method: request.method.get_ref().to_ascii_uppercase(),
            url: parse("url", request.url.get_ref())?,
            headers: request
                .headers
                .iter()
                .map(|(name, value)| {
                    Ok((
                        name.clone(),
                        parse(&format!("headers.{name}"), value.get_ref())?,
                    ))
                })
                .collect::<Result<_, RenderError>>()?,
            body: request
                .body
                .as_ref()
                .map(|b| parse("body", b.get_ref()))
                .transpose()?,
            body_format: request.body_format,
        })
    }

    /// Does any part name `variable`?
    pub fn names(&self, variable: &str) -> bool {
        std::iter::once(&self.url)
            .chain(self.headers.iter().map(|(_, t)| t))
            .chain(self.body.iter())
            .any(|t| t.variables().any(|v| v == variable))
    }

    /// The request for one page.
    pub fn render(&self, vars: &Vars<'_>) -> Result<RenderedRequest, RenderError> {
        let fail = |part: &str| {
            let part = part.to_string();
            move |e: TemplateError| RenderError {
                part: part.clone(),
                message: e.to_string(),
            }
        };
        let url = self
            .url
            .render_marked(vars, Escape::Url)
            .map_err(fail("url"))?;
        let url = without_absent_pairs(&url, '?').map_err(|message| RenderError {
            part: "url".into(),
            message,
        })?;
        let mut headers = Vec::new();
        for (name, template) in &self.headers {
            let part = format!("headers.{name}");
            let value = template
                .render_marked(vars, Escape::Header)
                .map_err(fail(&part))?;
            if is_absent(&value) {
                continue;
            }
            if let Some(variable) = absent_in(&value) {
                return Err(RenderError {
                    part,
                    message: format!("{{{variable}}} has no value on this page; {PLACEMENT}"),
                });
            }
            headers.push((name.clone(), value));
        }
        let (body, content_type) = match &self.body {
            None => (None, None),
            Some(template) => match self.body_format {
                BodyFormat::Json => {
                    let text = template
                        .render_marked(vars, Escape::Json)
                        .map_err(fail("body"))?;
                    let text = absent_as_null(&text).map_err(|message| RenderError {
                        part: "body".into(),
                        message,
                    })?;
                    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                        return Err(RenderError {
                            part: "body".into(),
                            message: format!("the rendered body is not JSON: {e}"),
                        });
                    }
                    (Some(text), Some("application/json"))
                }
                BodyFormat::Form => {
                    let text = template
                        .render_marked(vars, Escape::Url)
                        .map_err(fail("body"))?;
                    let text =
                        without_absent_pairs(&text, '\0').map_err(|message| RenderError {
                            part: "body".into(),
                            message,
                        })?;
                    (Some(text), Some("application/x-www-form-urlencoded"))
                }
            },
        };
        Ok(RenderedRequest {
            url,
            headers,
            body,
            content_type,
        })
    }
}

fn is_absent(text: &str) -> bool {
    absent_in(text).is_some_and(|name| text == absent_marker(name))
}

/// The name of the first absent variable in `text`.
fn absent_in(text: &str) -> Option<&str> {
    let start = text.find("\0absent:")? + "\0absent:".len();
    let len = text[start..].find('\0')?;
    Some(&text[start..start + len])
}

/// `pairs` (a URL's query after `split`, or a whole form body when `split` is `'\0'`)
/// without the `name=value` pairs whose value is exactly an absent variable; an absent
/// variable anywhere else is an error.
fn without_absent_pairs(text: &str, split: char) -> Result<String, String> {
    if absent_in(text).is_none() {
        return Ok(text.to_string());
    }
    let (head, query) = match split {
        '\0' => ("", Some(text)),
        c => match text.split_once(c) {
            Some((head, query)) => (head, Some(query)),
            None => (text, None),
        },
    };
    if let Some(variable) = absent_in(head) {
        return Err(format!(
            "{{{variable}}} has no value on this page; {PLACEMENT}"
        ));
    }
    let mut kept = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let value = pair.split_once('=').map_or("", |(_, v)| v);
        if is_absent(value) {
            continue;
        }
        if let Some(variable) = absent_in(pair) {
            return Err(format!(
                "{{{variable}}} has no value on this page; {PLACEMENT}"
            ));
        }
        kept.push(pair);
    }
    let query = kept.join("&");
    Ok(match split {
        '\0' => query,
        _ if query.is_empty() => head.to_string(),
        c => format!("{head}{c}{query}"),
    })
}

/// A JSON text with every absent variable that stands as a whole value (quoted or not)
/// written as `null`; one inside a longer string is an error.
fn absent_as_null(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\0absent:") {
        let Some(name) = absent_in(&rest[at..]) else {
            break;
        };
        let marker = absent_marker(name);
        let (before, after) = (&rest[..at], &rest[at + marker.len()..]);
        let in_string = inside_string(&out, before);
        if !in_string {
            out.push_str(before);
            out.push_str("null");
            rest = after;
        } else if before.ends_with('"')
            && after.starts_with('"')
            && !inside_string(&out, &before[..before.len() - 1])
        {
            out.push_str(&before[..before.len() - 1]);
            out.push_str("null");
            rest = &after[1..];
        } else {
            return Err(format!("{{{name}}} has no value on this page; {PLACEMENT}"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether the end of `done` + `more` lies inside a JSON string literal.
fn inside_string(done: &str, more: &str) -> bool {
    let mut inside = false;
    let mut escaped = false;
    for c in done.chars().chain(more.chars()) {
        match c {
            _ if escaped => escaped = false,
            '\\' if inside => escaped = true,
            '"' => inside = !inside,
            _ => {}
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(toml_text: &str) -> RequestTemplates {
        let request: Request = toml::from_str(toml_text).unwrap();
        RequestTemplates::parse(&request).unwrap()
    }

    fn vars(cursor: Option<&str>) -> Vars<'_> {
        Vars {
            window: None,
            resource: "act_1",
            cursor,
            page: None,
            offset: None,
            limit: Some(50),
            job: None,
            result: None,
            settings: &super::super::template::NO_SETTINGS,
        }
    }

    #[test]
    fn a_cursor_without_a_value_leaves_out_its_query_parameter_and_header() {
        let r = request(
            r#"
url = "/v1/{resource}/rows?limit={limit}&after={cursor}"
headers = { "X-Page" = "{cursor}", "X-Fixed" = "yes" }
"#,
        );
        let first = r.render(&vars(None)).unwrap();
        assert_eq!(first.url, "/v1/act_1/rows?limit=50");
        assert_eq!(
            first.headers,
            vec![("X-Fixed".to_string(), "yes".to_string())]
        );
        let next = r.render(&vars(Some("c 2"))).unwrap();
        assert_eq!(next.url, "/v1/act_1/rows?limit=50&after=c%202");
        assert_eq!(next.headers.len(), 2);
        let only = request(r#"url = "/rows?after={cursor}""#);
        assert_eq!(only.render(&vars(None)).unwrap().url, "/rows");
    }

    #[test]
    fn a_cursor_without_a_value_is_null_in_a_json_body() {
        let r = request(
            r#"
method = "POST"
url = "/graphql"
body = '{{"query": "q {{ orders }}", "variables": {{"after": "{cursor}", "first": {limit}, "note": "a \"quoted\" text"}}}}'
"#,
        );
        let first = r.render(&vars(None)).unwrap();
        let json: serde_json::Value = serde_json::from_str(first.body.as_deref().unwrap()).unwrap();
        assert_eq!(json["variables"]["after"], serde_json::Value::Null);
        assert_eq!(json["variables"]["first"], 50);
        assert_eq!(first.content_type, Some("application/json"));
        let next = r.render(&vars(Some("abc"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(next.body.as_deref().unwrap()).unwrap();
        assert_eq!(json["variables"]["after"], "abc");
    }

    #[test]
    fn a_cursor_without_a_value_inside_a_path_or_a_longer_text_is_an_error_naming_it() {
        for (text, part) in [
            (r#"url = "/rows/{cursor}/next""#, "url"),
            (r#"url = "/rows?q=after:{cursor}""#, "url"),
            (
                r#"
method = "POST"
url = "/q"
body = '{{"query": "after: {cursor}"}}'
"#,
                "body",
            ),
            (
                r#"url = "/q"
headers = { "X-Page" = "p-{cursor}" }"#,
                "headers.X-Page",
            ),
        ] {
            let err = request(text).render(&vars(None)).unwrap_err();
            assert_eq!(err.part, part, "{text}");
            assert!(err.message.contains("{cursor} has no value"), "{err}");
        }
    }

    #[test]
    fn a_form_body_leaves_out_fields_without_a_value() {
        let r = request(
            r#"
method = "POST"
url = "/report"
body = "account={resource}&after={cursor}&size={limit}"
body_format = "form"
"#,
        );
        let first = r.render(&vars(None)).unwrap();
        assert_eq!(first.body.as_deref(), Some("account=act_1&size=50"));
        assert_eq!(
            first.content_type,
            Some("application/x-www-form-urlencoded")
        );
    }

    #[test]
    fn a_json_body_that_does_not_render_to_json_is_an_error() {
        let r = request(
            r#"
method = "POST"
url = "/q"
body = '{{"size": {limit}'
"#,
        );
        let err = r.render(&vars(None)).unwrap_err();
        assert!(err.message.contains("not JSON"), "{err}");
    }
}
