//! Completing the consent page programmatically, as a person in a browser would: open the
//! authorize URL, fill in the login form, press Allow, and read where the platform
//! redirects. Used by the demo and by tests.

use std::collections::HashMap;

/// Errors of the programmatic consent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    #[error("the consent page could not be reached: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the platform refused the login ({status}): {page}")]
    Refused { status: u16, page: String },
    #[error("the platform answered without a redirect")]
    NoRedirect,
}

/// Open `authorize_url`, log in as `username`/`password`, allow, and return the redirect
/// target (the client's redirect URI with `code` and `state`).
pub async fn approve(
    authorize_url: &str,
    username: &str,
    password: &str,
) -> Result<url::Url, ConsentError> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page_url = url::Url::parse(authorize_url).map_err(|_| ConsentError::NoRedirect)?;
    let page = http.get(page_url.clone()).send().await?;
    if !page.status().is_success() {
        return Err(ConsentError::Refused {
            status: page.status().as_u16(),
            page: page.text().await.unwrap_or_default(),
        });
    }
    let mut form: HashMap<String, String> = page_url.query_pairs().into_owned().collect();
    form.insert("username".into(), username.into());
    form.insert("password".into(), password.into());
    form.insert("decision".into(), "allow".into());
    let mut post_url = page_url;
    post_url.set_query(None);
    let answer = http.post(post_url).form(&form).send().await?;
    if !answer.status().is_redirection() {
        return Err(ConsentError::Refused {
            status: answer.status().as_u16(),
            page: answer.text().await.unwrap_or_default(),
        });
    }
    let location = answer
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ConsentError::NoRedirect)?;
    url::Url::parse(location).map_err(|_| ConsentError::NoRedirect)
}
