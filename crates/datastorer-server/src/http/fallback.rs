//! What a request gets when no route takes it, and the helper every route
//! group registers its resources with (so a known path with another method
//! is a 405, not a 404).
//!
//! Owns: 404 and 405. Must not: import a route group.

use actix_web::{web, HttpResponse, Resource, ResponseError};

use crate::error::{ApiError, ErrorCode};

/// A resource at `path` that answers 405 to the methods it has no route for.
pub(crate) fn resource(path: &str) -> Resource {
    web::resource(path.to_owned()).default_service(web::to(method_not_allowed))
}

/// 404 for unknown routes.
pub(crate) async fn not_found() -> HttpResponse {
    ApiError::new(ErrorCode::NotFound, "no such route (see /v1/openapi.json)").error_response()
}

/// 405 for a known route with another method.
async fn method_not_allowed() -> HttpResponse {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take that method").error_response()
}
