//! A deferred login from the command line, with the kit.
//!
//! ```text
//! DTR_ISSUER=https://id.example.com/realms/demo DTR_CLIENT_ID=onboarding-portal \
//! DTR_CLIENT_SECRET=… DTR_REDIRECT_URI=https://rp.example.com/cb \
//! cargo run -p dtr-rp --example deferred_login
//! ```
//!
//! It prints the URL to open in a browser (first line of stdout), then reads from stdin the URL
//! the browser was sent back to (the acknowledgment), exchanges the deferred code, and polls
//! until the verification is done, printing one JSON line per step. Without
//! `DTR_CLIENT_SECRET` the client is public and uses DPoP. `DTR_PAR=1` pushes the request
//! first; `DTR_PROFILE=ietf` speaks the IETF profile (draft-ietf-oauth-deferred-token-response)
//! instead of the OpenID one; `DTR_INSECURE=1` allows http URLs (local tests only).

use std::process::ExitCode;

use dtr_rp::{AuthorizationOptions, ClientAuth, ClientOptions, Dpop, DtrClient, PollResult, Profile};
use serde_json::json;

fn setting(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let secret = std::env::var("DTR_CLIENT_SECRET").ok();
    let mut options = ClientOptions::new(
        setting("DTR_CLIENT_ID")?,
        setting("DTR_REDIRECT_URI")?,
        match &secret {
            Some(secret) => ClientAuth::SecretBasic(secret.clone()),
            None => ClientAuth::None,
        },
    );
    if secret.is_none() {
        options.dpop = Dpop::PerProcess;
    }
    options.allow_insecure_http = std::env::var("DTR_INSECURE").as_deref() == Ok("1");
    options.profile = match std::env::var("DTR_PROFILE").as_deref() {
        Err(_) | Ok("openid") => Profile::OpenId,
        Ok("ietf") => Profile::Ietf,
        Ok(other) => return Err(format!("DTR_PROFILE={other}: openid or ietf").into()),
    };
    let rp = DtrClient::discover(&setting("DTR_ISSUER")?, options).await?;

    // 1. Send the user to the OP.
    let (url, pending) = rp
        .authorization_url(&AuthorizationOptions {
            scope: std::env::var("DTR_SCOPE").unwrap_or_else(|_| "openid profile email".into()),
            par: std::env::var("DTR_PAR").as_deref() == Ok("1"),
            ..Default::default()
        })
        .await?;
    println!("{url}");

    // 2. The acknowledgment: the URL the browser came back to.
    let landed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    let ack = rp.acknowledgment_from_url(landed.trim(), &pending)?;

    // 3. The deferred_auth_id (IETF: deferral_code), and who the user says they are (not
    // verified yet; the IETF profile has no interim ID token).
    let mut process = rp.exchange(&ack, &pending, None).await?;
    let sub = process.interim_claims.as_ref().map(|c| c.sub.clone());
    println!(
        "{}",
        json!({"step": "exchanged", "sub": sub, "interval": process.interval})
    );

    // 4. Poll until the verification service has decided (or the process expires).
    let result = rp
        .wait_for_tokens(&mut process, None, |waiting| {
            let (step, description) = match waiting {
                PollResult::Pending { description } => ("pending", description.clone()),
                PollResult::InteractionRequired { interaction_uri, .. } => {
                    // The verification needs the end-user again: show them the place.
                    ("interaction_required", Some(interaction_uri.clone()))
                }
                PollResult::SlowDown { description, .. } => ("slow_down", description.clone()),
                PollResult::Unavailable { description, .. } => ("unavailable", description.clone()),
                _ => ("waiting", None),
            };
            println!("{}", json!({"step": step, "description": description}));
        })
        .await?;
    match result {
        PollResult::Approved(tokens) => {
            let claims = &tokens.claims;
            println!(
                "{}",
                json!({
                    "step": "approved",
                    "sub": claims.sub,
                    "email": claims.other.get("email"),
                    "name": claims.other.get("name"),
                    "token_type": tokens.token_type(),
                })
            );
            Ok(true)
        }
        other => {
            println!("{}", json!({"step": format!("{other:?}")}));
            Ok(false)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
