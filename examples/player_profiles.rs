//! Player profiles in an actix-web application, embedding datastorer.
//!
//! ```text
//! cargo run --example player_profiles            # listens on 127.0.0.1:8080, data in ./data/example
//! curl -X POST localhost:8080/players/42/join
//! curl -X POST localhost:8080/players/42/coins -H 'content-type: application/json' -d '{"delta": 25}'
//! curl -X POST localhost:8080/players/42/save    # answers once the save is durable
//! curl localhost:8080/players/42
//! curl -X POST localhost:8080/players/42/leave
//! ```
//!
//! Ctrl-C (or SIGTERM) stops accepting requests, then saves and releases
//! every joined player before the process exits.

use std::time::Duration;

use actix_web::{get, post, web, App, HttpResponse, HttpServer, ResponseError};
use datastorer::{AcquirePolicy, Config, Datastorer, Error, Migration, Priority, Store, StoreSpec};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    coins: u64,
    level: u32,
    inventory: Vec<String>,
}

#[derive(Deserialize)]
struct CoinChange {
    delta: i64,
}

/// Maps datastorer errors to HTTP answers.
#[derive(Debug)]
struct ApiError(Error);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for ApiError {
    fn error_response(&self) -> HttpResponse {
        let status = match &self.0 {
            Error::LeaseHeld { .. } => actix_web::http::StatusCode::CONFLICT,
            Error::InvalidName { .. } => actix_web::http::StatusCode::BAD_REQUEST,
            Error::SessionClosed { .. } => actix_web::http::StatusCode::GONE,
            Error::ShuttingDown => actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            _ => actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpResponse::build(status).json(json!({ "error": self.0.to_string() }))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

fn not_joined(id: u64) -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": format!("player {id} has not joined") }))
}

#[post("/players/{id}/join")]
async fn join(store: web::Data<Store<Profile>>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    // If another server still holds the profile, ask it to save and hand over.
    let session = store
        .open(id)
        .user_ids([id])
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(10) })
        .await?;
    Ok(HttpResponse::Ok().json(session.get().await?))
}

#[post("/players/{id}/coins")]
async fn coins(
    store: web::Data<Store<Profile>>,
    id: web::Path<u64>,
    change: web::Json<CoinChange>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let Some(session) = store.get(id) else { return Ok(not_joined(id)) };
    let delta = change.delta;
    let coins = session
        .update(move |p| {
            p.coins = p.coins.saturating_add_signed(delta);
            p.coins
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "coins": coins })))
}

#[post("/players/{id}/save")]
async fn save(store: web::Data<Store<Profile>>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let Some(session) = store.get(id) else { return Ok(not_joined(id)) };
    let outcome = session.save(Priority::Normal).await?;
    Ok(HttpResponse::Ok().json(json!({ "revision": outcome.revision })))
}

#[get("/players/{id}")]
async fn show(store: web::Data<Store<Profile>>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let Some(session) = store.get(id) else { return Ok(not_joined(id)) };
    Ok(HttpResponse::Ok().json(session.get().await?))
}

#[post("/players/{id}/leave")]
async fn leave(store: web::Data<Store<Profile>>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let Some(session) = store.get(id) else { return Ok(not_joined(id)) };
    let outcome = session.release(Priority::Normal).await?;
    Ok(HttpResponse::Ok().json(json!({ "released_at_revision": outcome.revision })))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let data_dir = std::env::var("DATA_DIR").unwrap_or_else(|_| "./data/example".into());
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| std::io::Error::other(format!("PORT={p:?} is not a port: {e}")))?,
        Err(_) => 8080,
    };

    // The engine starts once, outside the per-worker factory closure.
    let mut config = Config::sled(&data_dir);
    // We order shutdown ourselves: stop HTTP first, then save everything.
    config.handle_signals = false;
    let ds = Datastorer::start(config).await.map_err(std::io::Error::other)?;
    let spec = StoreSpec::new(Profile { coins: 0, level: 1, inventory: vec![] })
        // Version 0 profiles called the currency "gold".
        .migration(Migration::new("gold -> coins", |mut doc| {
            if let Some(o) = doc.as_object_mut() {
                if let Some(gold) = o.remove("gold") {
                    o.insert("coins".into(), gold);
                }
            }
            Ok(doc)
        }));
    let store = web::Data::new(ds.store("profiles", spec).map_err(std::io::Error::other)?);

    let server = HttpServer::new(move || {
        App::new().app_data(store.clone()).service(join).service(coins).service(save).service(show).service(leave)
    })
    .disable_signals()
    .bind(("127.0.0.1", port))?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop(true).await;
    });
    #[cfg(unix)]
    {
        let handle = server.handle();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        actix_web::rt::spawn(async move {
            term.recv().await;
            handle.stop(true).await;
        });
    }
    println!("player profiles on http://127.0.0.1:{port} (data in {data_dir}); Ctrl-C to stop");
    server.await?;

    let report = ds.shutdown().await;
    println!(
        "saved and released {} players ({} failed) in {:?}",
        report.release.released,
        report.release.failed.len(),
        report.took
    );
    Ok(())
}
