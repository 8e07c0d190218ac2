//! Which request is which endpoint: the OP's paths come from templates (Keycloak's layout by
//! default), with `{realm}` matching one path segment.

use crate::config::PathTemplates;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Authorization,
    /// The OP's PAR endpoint (RFC 9126): pushed `deferred_code` requests are rewritten there.
    PushedAuthorization,
    Token,
    Discovery,
    Cancellation,
    /// The OP's revocation endpoint (RFC 7009), where an IETF-profile client revokes a
    /// deferral code (IETF §8); every other revocation passes through.
    Revocation,
}

#[derive(Debug, Clone)]
struct Template {
    prefix: String,
    /// `None` for a template without `{realm}`: an exact match.
    suffix: Option<String>,
}

impl Template {
    fn compile(template: &str) -> Self {
        match template.split_once("{realm}") {
            Some((prefix, suffix)) => Self {
                prefix: prefix.to_owned(),
                suffix: Some(suffix.to_owned()),
            },
            None => Self {
                prefix: template.to_owned(),
                suffix: None,
            },
        }
    }

    fn matches<'a>(&self, path: &'a str) -> Option<&'a str> {
        match &self.suffix {
            None => (path == self.prefix).then_some(""),
            Some(suffix) => {
                // The suffix first, from its last byte: the templates of one OP mostly share
                // their prefix, and a pass-through path seldom ends like any of them.
                if !suffix.is_empty() && suffix.as_bytes().last() != path.as_bytes().last() {
                    return None;
                }
                let realm = path.strip_suffix(suffix.as_str())?.strip_prefix(self.prefix.as_str())?;
                (!realm.is_empty() && !realm.contains('/')).then_some(realm)
            }
        }
    }

    fn render(&self, realm: &str) -> String {
        match &self.suffix {
            None => self.prefix.clone(),
            Some(suffix) => format!("{}{realm}{suffix}", self.prefix),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Routes {
    issuer: Template,
    authorization: Template,
    token: Template,
    discovery: Template,
    revocation: Template,
    /// `None` when PAR requests pass through untouched.
    par: Option<Template>,
    /// Where else the OP's metadata is served (RFC 8414 documents); `None` when switched off.
    metadata: Vec<Template>,
    cancellation: Template,
    /// Every template that names an endpoint, in the order they are tried.
    table: Vec<(Endpoint, Template)>,
}

impl Routes {
    pub fn new(paths: &PathTemplates) -> Self {
        let mut routes = Self {
            issuer: Template::compile(&paths.issuer),
            authorization: Template::compile(&paths.authorization),
            token: Template::compile(&paths.token),
            discovery: Template::compile(&paths.discovery),
            revocation: Template::compile(&paths.revocation),
            par: (!paths.par.is_empty()).then(|| Template::compile(&paths.par)),
            metadata: [&paths.oauth_metadata, &paths.oauth_metadata_root]
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(|t| Template::compile(t))
                .collect(),
            cancellation: Template::compile(&paths.cancellation),
            table: Vec::new(),
        };
        routes.table = [
            (Endpoint::Token, &routes.token),
            (Endpoint::Authorization, &routes.authorization),
            (Endpoint::Discovery, &routes.discovery),
            (Endpoint::Cancellation, &routes.cancellation),
            (Endpoint::Revocation, &routes.revocation),
        ]
        .into_iter()
        .chain(routes.par.iter().map(|t| (Endpoint::PushedAuthorization, t)))
        .chain(routes.metadata.iter().map(|t| (Endpoint::Discovery, t)))
        .map(|(endpoint, template)| (endpoint, template.clone()))
        .collect();
        routes
    }

    /// The DTR-relevant endpoint a path names, with its realm ("" for an OP without realms).
    pub fn classify<'a>(&self, path: &'a str) -> Option<(Endpoint, &'a str)> {
        self.table
            .iter()
            .find_map(|(endpoint, template)| template.matches(path).map(|realm| (*endpoint, realm)))
    }

    pub fn path(&self, endpoint: Endpoint, realm: &str) -> String {
        match endpoint {
            Endpoint::Authorization => self.authorization.render(realm),
            Endpoint::PushedAuthorization => match &self.par {
                Some(par) => par.render(realm),
                None => String::new(),
            },
            Endpoint::Token => self.token.render(realm),
            Endpoint::Discovery => self.discovery.render(realm),
            Endpoint::Cancellation => self.cancellation.render(realm),
            Endpoint::Revocation => self.revocation.render(realm),
        }
    }

    /// The OP's revocation endpoint of a realm, where the proxy gives held grants back.
    pub fn revocation(&self, realm: &str) -> String {
        self.revocation.render(realm)
    }

    /// The issuer of a realm, e.g. `https://id.example.com/realms/acme`.
    pub fn issuer(&self, public_origin: &str, realm: &str) -> String {
        format!("{public_origin}{}", self.issuer.render(realm))
    }
}

/// The public URLs of the OP's endpoints, as RPs address them through the proxy.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    origin: String,
    routes: Routes,
}

impl PublicUrls {
    pub fn new(origin: String, routes: Routes) -> Self {
        Self { origin, routes }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The issuer of a realm, e.g. `https://id.example.com/realms/acme`.
    pub fn issuer(&self, realm: &str) -> String {
        self.routes.issuer(&self.origin, realm)
    }

    pub fn endpoint(&self, endpoint: Endpoint, realm: &str) -> String {
        format!("{}{}", self.origin, self.routes.path(endpoint, realm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keycloak_layout_captures_the_realm() {
        let routes = Routes::new(&PathTemplates::default());
        assert_eq!(
            routes.classify("/realms/acme/protocol/openid-connect/auth"),
            Some((Endpoint::Authorization, "acme"))
        );
        assert_eq!(
            routes.classify("/realms/acme/protocol/openid-connect/token"),
            Some((Endpoint::Token, "acme"))
        );
        assert_eq!(
            routes.classify("/realms/acme/.well-known/openid-configuration"),
            Some((Endpoint::Discovery, "acme"))
        );
        assert_eq!(routes.classify("/realms/a/b/protocol/openid-connect/token"), None);
        assert_eq!(routes.classify("/realms//protocol/openid-connect/token"), None);
        assert_eq!(
            routes.classify("/realms/acme/protocol/openid-connect/token/introspect"),
            None
        );
        // Pass-through paths, one ending as the token endpoint's last byte does.
        for path in [
            "/realms/acme/protocol/openid-connect/certs",
            "/realms/acme/protocol/openid-connect/x-token",
            "/",
            "",
        ] {
            assert_eq!(routes.classify(path), None, "{path}");
        }
        assert_eq!(
            routes.classify("/realms/acme/protocol/openid-connect/revoke"),
            Some((Endpoint::Revocation, "acme"))
        );
        assert_eq!(
            routes.classify("/realms/acme/protocol/openid-connect/ext/par/request"),
            Some((Endpoint::PushedAuthorization, "acme"))
        );
        for metadata in [
            "/realms/acme/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server/realms/acme",
        ] {
            assert_eq!(
                routes.classify(metadata),
                Some((Endpoint::Discovery, "acme")),
                "{metadata}"
            );
        }
        assert_eq!(
            routes.issuer("https://id.example.com", "acme"),
            "https://id.example.com/realms/acme"
        );
    }

    #[test]
    fn realmless_layout_matches_exactly() {
        let routes = Routes::new(&PathTemplates {
            issuer: "".into(),
            authorization: "/authorize".into(),
            token: "/token".into(),
            discovery: "/.well-known/openid-configuration".into(),
            revocation: "/revoke".into(),
            par: "/par".into(),
            oauth_metadata: "/.well-known/oauth-authorization-server".into(),
            oauth_metadata_root: String::new(),
            cancellation: "/deferred/cancel".into(),
        });
        assert_eq!(routes.classify("/token"), Some((Endpoint::Token, "")));
        assert_eq!(routes.classify("/token/x"), None);
        assert_eq!(routes.issuer("https://op.example", ""), "https://op.example");
    }
}
