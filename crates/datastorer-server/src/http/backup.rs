//! `GET /v1/backup` (admin): an online backup of the running server,
//! streamed as it is written (the engine's snapshot of one instant; saves
//! go on meanwhile). `curl -H "Authorization: Bearer KEY" URL/v1/backup -o
//! FILE` takes one; `datastorer restore-backup` restores it.
//!
//! Owns: the route and the streaming. Must not: read storage itself.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::fallback::resource;
use crate::auth::Role;
use crate::error::ApiError;
use crate::state::{AppState, Target};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Chunks of the file in flight between the writer and the response.
const CHUNKS_IN_FLIGHT: usize = 16;

/// Registers the backup route.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/backup").route(web::get().to(backup)));
}

/// Writes into the response: each buffer the backup writes becomes a chunk.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<web::Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(web::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn backup(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Admin)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let failed = tx.clone();
    let state_for_task = state.clone();
    actix_web::rt::spawn(async move {
        let result = state_for_task.ds.backup(ChannelWriter(tx)).await.map_err(ApiError::from);
        if let Err(e) = &result {
            // The stream ends without the end marker: the file is refused
            // by the restore, never taken for a whole backup.
            let _ = failed.send(Err(std::io::Error::other(e.message.clone()))).await;
        }
        let _ =
            state_for_task.audited(&who.name, "backup", Target::default(), |r| json!({ "report": r }), result).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("Content-Disposition", "attachment; filename=\"datastorer.dsbk\""))
        .streaming(body))
}
