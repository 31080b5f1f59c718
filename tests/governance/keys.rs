//! Keys: revocation and rotation across two app instances, expiry, disabled tenants, scopes on
//! every route.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{ADMIN_KEY, T, api_only, ok, sluice, with_admin_key};
use crate::common::{Client, TestEnv, job};

/// Polls `GET /v1/jobs` with `c` until it answers `status`; returns how long that took.
async fn until_status(c: &Client, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (s, body) = c.get("/v1/jobs").await;
        if s == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {s} after {limit:?}, wanted {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two app instances with their own key caches over one database.
async fn two_instances(env: &TestEnv) -> (sluice::app::Running, sluice::app::Running) {
    (env.start(api_only()).await, env.start(api_only()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_in_every_instance_within_a_second() {
    let env = TestEnv::new().await;
    let (a, b) = two_instances(&env).await;
    let created = sluice::db::keys::create(
        &env.pool,
        &sluice::db::keys::NewKey::for_tenant("acme"),
        "test",
    )
    .await
    .unwrap();
    let (ca, cb) = (Client::new(&a, &created.key), Client::new(&b, &created.key));
    // Both caches hold the key.
    assert_eq!(ca.get("/v1/jobs").await.0, 200);
    assert_eq!(cb.get("/v1/jobs").await.0, 200);

    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    ok(&sluice(&cfg, &["keys", "revoke", &created.id]));
    let revoked = Instant::now();
    let (ta, tb) = tokio::join!(until_status(&ca, 401, T), until_status(&cb, 401, T));
    let since = revoked.elapsed();
    assert!(
        ta.max(tb) <= Duration::from_millis(1100),
        "refused after {ta:?} and {tb:?} (total {since:?})"
    );
    // Revoking by the key itself works as well (and changes nothing more).
    ok(&sluice(&cfg, &["keys", "revoke", &created.key]));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_works_through_its_grace_period_and_then_stops_everywhere() {
    let mut env = TestEnv::new().await;
    with_admin_key(&mut env);
    let (a, b) = two_instances(&env).await;
    let old = env.key("acme").await;
    let (oa, ob) = (Client::new(&a, &old), Client::new(&b, &old));
    assert_eq!(oa.get("/v1/jobs").await.0, 200);
    assert_eq!(ob.get("/v1/jobs").await.0, 200);

    let admin = Client::new(&a, ADMIN_KEY);
    let (s, rotated) = admin
        .post(
            &format!("/v1/admin/keys/{old}/rotate"),
            &json!({"grace": "4s"}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{rotated}");
    let rotated_at = Instant::now();
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let (na, nb) = (Client::new(&a, &new), Client::new(&b, &new));
    assert_eq!(na.post("/v1/jobs", &job("hi"), None).await.0, 200);
    assert_eq!(nb.get("/v1/jobs").await.0, 200);
    // Within the grace period the old key still works in both instances.
    assert_eq!(oa.get("/v1/jobs").await.0, 200);
    assert_eq!(ob.get("/v1/jobs").await.0, 200);
    let (_, _) = tokio::join!(until_status(&oa, 401, T), until_status(&ob, 401, T));
    let stopped = rotated_at.elapsed();
    assert!(
        stopped >= Duration::from_millis(3900) && stopped <= Duration::from_millis(5500),
        "the old key stopped {stopped:?} after a 4 s grace"
    );
    assert_eq!(na.get("/v1/jobs").await.0, 200, "the new key keeps working");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_and_disabled_tenants_keys_are_refused() {
    let env = TestEnv::new().await;
    let app = env.start(api_only()).await;
    let mut short = sluice::db::keys::NewKey::for_tenant("acme");
    short.expires_in = Some(chrono::Duration::milliseconds(300));
    let short = sluice::db::keys::create(&env.pool, &short, "test")
        .await
        .unwrap();
    let c = Client::new(&app, &short.key);
    until_status(&c, 401, Duration::from_secs(3)).await;

    let other = Client::new(&app, &env.key("globex").await);
    assert_eq!(other.get("/v1/jobs").await.0, 200);
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    ok(&sluice(&cfg, &["tenants", "disable", "globex"]));
    let took = until_status(&other, 401, T).await;
    assert!(took <= Duration::from_millis(1100), "{took:?}");
    let (_, body) = other.get("/v1/jobs").await;
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    env.cleanup().await;
}

/// Every `(method, path)` the API serves, read from the router's source: each `.route("…", …)`
/// under `src/api/`, with the methods its handler chain names.
fn routes() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files = vec![];
    let mut dirs = vec![std::path::PathBuf::from("src/api")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for chunk in text.split(".route(").skip(1) {
            let Some(path) = chunk
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let chain = chunk.split(".route(").next().unwrap_or("");
            // The last route of a file: its chain ends with the function that lists the routes
            // (the handlers after it, such as `set_budget(`, are not methods of the route).
            let chain = chain.split("\n}").next().unwrap_or(chain);
            let chain = chain.split(".fallback(").next().unwrap_or(chain);
            let chain = chain.split(".merge(").next().unwrap_or(chain);
            for m in ["get", "post", "put", "patch", "delete"] {
                let call = format!("{m}(");
                if chain.contains(&call) {
                    let concrete = path
                        .replace("{*model}", "gpt-4o-mini")
                        .split('/')
                        .map(|s| if s.starts_with('{') { "x_1" } else { s })
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push((m.to_uppercase(), concrete));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced_on_every_route() {
    let mut env = TestEnv::new().await;
    with_admin_key(&mut env);
    let app = env.start(api_only()).await;
    let key = |scopes: &[&str]| {
        let mut k = sluice::db::keys::NewKey::for_tenant("acme");
        k.scopes = scopes.iter().map(|s| s.to_string()).collect();
        let pool = env.pool.clone();
        async move {
            sluice::db::keys::create(&pool, &k, "test")
                .await
                .unwrap()
                .key
        }
    };
    let read = Client::new(&app, &key(&["read"]).await);
    let submit = Client::new(&app, &key(&["submit"]).await);
    let tenant_admin = Client::new(&app, &key(&["admin"]).await);
    let anonymous = Client::new(&app, "sk-sluice-not-a-key");
    let admin = Client::new(&app, ADMIN_KEY);
    let send = |c: &Client, method: &str, path: &str| {
        let req = c
            .http
            .request(method.parse().unwrap(), format!("{}{path}", c.base))
            .bearer_auth(&c.key)
            .json(&json!({}));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let routes = routes();
    assert!(
        routes.len() >= 15 && routes.iter().any(|(_, p)| p.starts_with("/v1/admin/")),
        "the walk found the router's routes: {routes:?}"
    );
    for (method, path) in &routes {
        if !path.starts_with("/v1/") {
            continue;
        }
        let what = format!("{method} {path}");
        assert_eq!(
            send(&anonymous, method, path).await,
            401,
            "{what} without a valid key"
        );
        let admin_route = path.starts_with("/v1/admin/");
        let tenant_admin_route =
            path.starts_with("/v1/dead_letters/") || path.starts_with("/v1/webhook_endpoints");
        let read_only = method == "GET";
        for (name, c, allowed) in [
            ("read", &read, read_only && !admin_route),
            (
                "submit",
                &submit,
                !admin_route && (read_only || !tenant_admin_route),
            ),
            (
                "admin scope",
                &tenant_admin,
                !admin_route && (read_only || tenant_admin_route),
            ),
            ("admin key", &admin, admin_route),
        ] {
            let status = send(c, method, path).await;
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{what} with a {name} key answered {status}"
                );
            } else {
                assert_eq!(status, 403, "{what} with a {name} key");
            }
        }
    }
    env.cleanup().await;
}
