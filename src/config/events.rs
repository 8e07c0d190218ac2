//! Where lifecycle events go (`DTR_EVENTS_*`): an https receiver, the secret the events are
//! signed with, the realms whose processes are reported, and the receiver's own CA.

use std::fmt;
use std::sync::Arc;

use url::Url;

use super::{extra_roots, RawConfig};
use crate::tls::ServerCas;

/// Where lifecycle events are sent, signed per Standard Webhooks with their own secret.
#[derive(Clone)]
pub struct EventSinkSettings {
    pub url: Url,
    pub secret: Vec<u8>,
    /// Only these realms' processes; empty: every realm.
    pub realms: Vec<String>,
    /// CAs trusted for the sink besides the system's roots (`DTR_EVENTS_CA_FILE`: a
    /// verification service behind the cluster's own CA), read again when the file changes.
    pub roots: Option<Arc<ServerCas>>,
}

impl fmt::Debug for EventSinkSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSinkSettings")
            .field("url", &self.url.as_str())
            .field("realms", &self.realms)
            .field("ca_file", &self.roots.as_ref().map(|roots| roots.file()))
            .finish_non_exhaustive()
    }
}

/// The event sink `DTR_EVENTS_URL` and `DTR_EVENTS_SECRET` name, when both are set.
pub(super) fn sink(raw: &RawConfig, errors: &mut Vec<String>) -> Option<EventSinkSettings> {
    match (
        raw.events_url.as_deref().filter(|s| !s.is_empty()),
        raw.events_secret.as_deref().filter(|s| !s.is_empty()),
    ) {
        (Some(url), Some(secret)) => {
            let url = match Url::parse(url) {
                Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && raw.allow_insecure_http) => Some(url),
                Ok(_) => {
                    errors.push(
                        "DTR_EVENTS_URL: must be an https URL (http only with DTR_ALLOW_INSECURE_HTTP=true)".into(),
                    );
                    None
                }
                Err(e) => {
                    errors.push(format!("DTR_EVENTS_URL: not a URL: {e}"));
                    None
                }
            };
            let secret = match crate::webhook::decode_secret(secret) {
                Ok(secret) => Some(secret),
                Err(e) => {
                    errors.push(format!("DTR_EVENTS_SECRET: {e}"));
                    None
                }
            };
            let roots = match raw.events_ca_file.as_deref().filter(|s| !s.is_empty()) {
                Some(_) if url.as_ref().is_some_and(|url| url.scheme() != "https") => {
                    errors.push("DTR_EVENTS_CA_FILE: only for an https DTR_EVENTS_URL".into());
                    None
                }
                Some(path) => extra_roots("DTR_EVENTS_CA_FILE", path, errors),
                None => None,
            };
            match (url, secret) {
                (Some(url), Some(secret)) => Some(EventSinkSettings {
                    url,
                    secret,
                    realms: raw.events_realms.items().into_iter().map(str::to_owned).collect(),
                    roots,
                }),
                _ => None,
            }
        }
        (None, None) => {
            if raw.events_ca_file.as_deref().is_some_and(|s| !s.is_empty()) {
                errors.push("DTR_EVENTS_CA_FILE: needs DTR_EVENTS_URL".into());
            }
            None
        }
        _ => {
            errors.push("DTR_EVENTS_URL and DTR_EVENTS_SECRET go together".into());
            None
        }
    }
}
