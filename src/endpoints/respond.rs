//! Answers to the user agent: redirects to the RP in its `response_mode`, and error pages for
//! the cases where no redirect is safe.

use html_escape::{encode_double_quoted_attribute, encode_text};
use http::header::{HeaderValue, CACHE_CONTROL, LOCATION, PRAGMA, REFERRER_POLICY};
use http::{Response, StatusCode};
use url::Url;

use crate::http::{empty, html_no_store, Body, NO_CACHE, NO_STORE};
use crate::records::ResponseMode;

/// Sends `params` to the RP's `redirect_uri` in the requested response mode (OAuth 2.0
/// Multiple Response Types §2.1 for query/fragment, OAuth 2.0 Form Post Response Mode).
pub fn to_client(redirect_uri: &str, mode: ResponseMode, params: &[(&str, &str)]) -> Response<Body> {
    let Ok(mut url) = Url::parse(redirect_uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The application's redirect address is not valid.",
        );
    };
    match mode {
        ResponseMode::Query => {
            {
                let mut query = url.query_pairs_mut();
                for (name, value) in params {
                    query.append_pair(name, value);
                }
            }
            redirect(&url)
        }
        ResponseMode::Fragment => {
            let mut fragment = form_urlencoded::Serializer::new(String::new());
            for (name, value) in params {
                fragment.append_pair(name, value);
            }
            url.set_fragment(Some(&fragment.finish()));
            redirect(&url)
        }
        ResponseMode::FormPost => form_post(&url, params),
    }
}

fn redirect(url: &Url) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => {
            headers.insert(LOCATION, location);
        }
        Err(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The application's redirect address is not valid.",
            )
        }
    }
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(PRAGMA, NO_CACHE);
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn form_post(url: &Url, params: &[(&str, &str)]) -> Response<Body> {
    let mut inputs = String::new();
    for (name, value) in params {
        inputs.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\"/>\n",
            encode_double_quoted_attribute(name),
            encode_double_quoted_attribute(value)
        ));
    }
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Continue</title></head>\n\
         <body onload=\"document.forms[0].submit()\">\n\
         <form method=\"post\" action=\"{}\">\n{inputs}\
         <noscript><button type=\"submit\">Continue</button></noscript>\n</form>\n</body></html>\n",
        encode_double_quoted_attribute(url.as_str())
    );
    let mut response = html_no_store(StatusCode::OK, html);
    response
        .headers_mut()
        .insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The page for a store outage during sign-in: nothing is lost, the person tries again.
pub fn unavailable_page() -> Response<Body> {
    let mut page = error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is temporarily unavailable. Please try again in a moment.",
    );
    page.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(5));
    page
}

/// A page for the person at the browser when no redirect to the RP is safe.
pub fn error_page(status: StatusCode, message: &str) -> Response<Body> {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign-in problem</title></head>\n\
         <body><h1>Sign-in problem</h1>\n<p>{}</p>\n\
         <p>Return to the application and start the sign-in again.</p></body></html>\n",
        encode_text(message)
    );
    html_no_store(status, html)
}

/// Why an authorization request is refused, and where the RP may hear it.
pub struct Refusal {
    pub error: &'static str,
    pub description: &'static str,
    /// The RP's registered redirect, when the request named one the proxy knows.
    pub redirect: Option<(String, crate::records::ResponseMode, Option<String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn query_mode_keeps_existing_query() {
        let response = to_client(
            "https://rp.example/cb?x=1",
            ResponseMode::Query,
            &[("deferred_code", "abc"), ("state", "s t")],
        );
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            response.headers()[LOCATION],
            "https://rp.example/cb?x=1&deferred_code=abc&state=s+t"
        );
    }

    #[test]
    fn fragment_mode_uses_the_fragment() {
        let response = to_client(
            "https://rp.example/cb",
            ResponseMode::Fragment,
            &[("deferred_code", "abc")],
        );
        assert_eq!(response.headers()[LOCATION], "https://rp.example/cb#deferred_code=abc");
    }

    #[tokio::test]
    async fn form_post_escapes_values() {
        let response = to_client(
            "https://rp.example/cb",
            ResponseMode::FormPost,
            &[("state", "\"><script>")],
        );
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;\""), "{html}");
        assert!(!html.contains("\"><script>"));
    }
}

#[cfg(test)]
mod proptests {
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    const REDIRECT_URIS: [&str; 4] = [
        "https://rp.example/cb",
        "https://rp.example/cb?x=1",
        "http://127.0.0.1:3000/callback?a=b&c",
        "com.example.app:/oauth2redirect",
    ];

    fn acknowledgment<'a>(state: &'a str, description: &'a str) -> [(&'a str, &'a str); 4] {
        [
            ("error", "access_denied"),
            ("error_description", description),
            ("state", state),
            ("iss", "https://op.example/realms/r"),
        ]
    }

    fn location(response: &Response<Body>) -> Url {
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response.headers()[LOCATION].as_bytes();
        assert!(!location.contains(&b'\r') && !location.contains(&b'\n'));
        Url::parse(std::str::from_utf8(location).unwrap()).unwrap()
    }

    fn decoded(pairs: form_urlencoded::Parse<'_>, name: &str) -> Vec<String> {
        pairs.filter(|(n, _)| n == name).map(|(_, v)| v.into_owned()).collect()
    }

    fn html(response: Response<Body>) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let body = runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The `value` attribute of the hidden input named `name`, still escaped.
    fn hidden_value<'a>(html: &'a str, name: &str) -> &'a str {
        let start = format!("<input type=\"hidden\" name=\"{name}\" value=\"");
        let rest = &html[html.find(&start).unwrap() + start.len()..];
        &rest[..rest.find('"').unwrap()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn query_redirects_carry_the_values_intact(
            redirect_uri in select(REDIRECT_URIS.to_vec()),
            state in any::<String>(),
            description in any::<String>(),
        ) {
            let url = location(&to_client(redirect_uri, ResponseMode::Query, &acknowledgment(&state, &description)));
            prop_assert_eq!(decoded(url.query_pairs(), "state"), vec![state]);
            prop_assert_eq!(decoded(url.query_pairs(), "error_description"), vec![description]);
            let original = Url::parse(redirect_uri).unwrap();
            prop_assert_eq!((url.scheme(), url.host_str(), url.path()), (original.scheme(), original.host_str(), original.path()));
            prop_assert!(url.query().unwrap().starts_with(original.query().unwrap_or("")));
        }

        #[test]
        fn fragment_redirects_carry_the_values_intact(
            redirect_uri in select(REDIRECT_URIS.to_vec()),
            state in any::<String>(),
            description in any::<String>(),
        ) {
            let url = location(&to_client(redirect_uri, ResponseMode::Fragment, &acknowledgment(&state, &description)));
            let fragment = url.fragment().unwrap().as_bytes();
            prop_assert_eq!(decoded(form_urlencoded::parse(fragment), "state"), vec![state]);
            prop_assert_eq!(decoded(form_urlencoded::parse(fragment), "error_description"), vec![description]);
            let original = Url::parse(redirect_uri).unwrap();
            prop_assert_eq!(url.query(), original.query());
        }

        #[test]
        fn form_post_pages_escape_the_values(
            redirect_uri in select(REDIRECT_URIS.to_vec()),
            state in any::<String>(),
            description in prop_oneof![any::<String>(), "[<>\"'&; a-z]{0,24}"],
        ) {
            let page = html(to_client(redirect_uri, ResponseMode::FormPost, &acknowledgment(&state, &description)));
            for (name, value) in [("state", &state), ("error_description", &description)] {
                let attribute = hidden_value(&page, name);
                prop_assert!(!attribute.contains(['<', '>', '"']), "{name}: {attribute}");
                prop_assert_eq!(html_escape::decode_html_entities(attribute), value.as_str());
            }
        }
    }
}
