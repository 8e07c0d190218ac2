//! The admin port against its OpenAPI document (docs/openapi/admin.json): every documented
//! operation is served and answers one of its documented statuses, and schemathesis
//! (scripts/api-schema-test.sh) generates valid and invalid requests from the document and
//! checks every answer, against a proxy on a real redis-server in front of the real OP with
//! real processes in it.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn document() -> Value {
    serde_json::from_str(dtr_proxy::endpoints::operator::OPENAPI).expect("the document is JSON")
}

/// Starts `count` processes of fresh users; their process ids.
async fn processes(proxy: &Proxy, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let user = unique(&format!("schema{i}-"));
        proxy.start_process(&dtr_client(), &user, None).await;
        let found = proxy
            .operator(Method::GET, &format!("/processes?sub={user}"), None)
            .await;
        ids.push(
            found.json["processes"][0]["process_id"]
                .as_str()
                .expect("process id")
                .to_owned(),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_with_a_documented_status() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let ids = processes(&proxy, 1).await;
    let document = document();
    let paths = document["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (template, operations) in paths {
        let path = template.replace("{process_id}", &ids[0]);
        for (method, operation) in operations.as_object().expect("operations") {
            if method == "parameters" {
                continue;
            }
            let documented: Vec<&String> = operation["responses"].as_object().expect("responses").keys().collect();
            let mut request = proxy.http.request(
                method.to_uppercase().parse().expect("method"),
                format!("{}{path}", proxy.admin),
            );
            if operation.get("security").is_some() {
                request = request.bearer_auth(OPERATOR_TOKEN);
            }
            if template.ends_with("/extend") {
                request = request.json(&json!({"extend_by": 1}));
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16().to_string();
            let text = response.text().await.expect("body");
            assert!(
                documented.contains(&&status),
                "{method} {template}: {status} is not documented ({documented:?}): {text}"
            );
            assert_ne!(text, "not found\n", "{method} {template} is not served");
            checked += 1;
        }
    }
    assert_eq!(checked, 10, "every operation of the document was tried");

    // And the other way round: the admin port's routes are all in the document.
    for (method, path) in dtr_proxy::serve::admin::ROUTES {
        let operation =
            &paths.get(*path).unwrap_or_else(|| panic!("{path} is not documented"))[method.to_ascii_lowercase()];
        assert!(operation.is_object(), "{method} {path} is not documented");
    }
    assert_eq!(
        dtr_proxy::serve::admin::ROUTES.len(),
        checked,
        "an operation of the document is not in the admin port's route list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_admin_port_true_to_its_document() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let ids = processes(&proxy, 4).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/api-schema-test.sh");
    let run = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&proxy.admin)
        .env("DTR_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("PROCESS_ID", &ids[0])
        .env("CANCEL_PROCESS_ID", &ids[1])
        .env("DENY_PROCESS_ID", &ids[2])
        .env("EXTEND_PROCESS_ID", &ids[3])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("schemathesis finished in time")
        .expect("run scripts/api-schema-test.sh");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "schemathesis found problems:\n{report}");
    println!("{report}");

    // The generated calls reached the real processes and did their work.
    let status = |id: &str| {
        let proxy = &proxy;
        let id = id.to_owned();
        async move { proxy.process(&id).await["status"].clone() }
    };
    assert_eq!(status(&ids[0]).await, "pending");
    assert_eq!(status(&ids[1]).await, "cancelled");
    assert_eq!(status(&ids[2]).await, "denied");
    let extended = proxy.process(&ids[3]).await;
    let created = extended["created_at"].as_u64().expect("created_at");
    assert!(
        extended["expires_at"].as_u64().expect("expires_at") > created + 86_400,
        "{extended}"
    );
    // Still serving.
    let health = proxy.http.get(format!("{}/healthz", proxy.admin)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
