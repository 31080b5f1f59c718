//! Response descriptions the OpenAPI document shares between operations: what the key check
//! (`crate::auth::http`) and the layers in front of every route (`super::layers`) answer,
//! written once so that every operation says it the same way.

/// 401 on every route that takes a key (`AuthError::Unauthorized`).
pub(super) const NO_KEY: &str = "Missing or malformed `Authorization: Bearer` header, or a key that is \
    unknown, revoked or expired, or whose tenant is disabled";

/// 403 on a tenant route that only reads: the scope check lets any tenant key read.
pub(super) const READ_FORBIDDEN: &str =
    "The operator's admin key was given; this route takes a tenant key";

/// 403 on a tenant route that creates, changes or cancels work (`submit` scope).
pub(super) const SUBMIT_FORBIDDEN: &str = "The key lacks the `submit` scope, or is the operator's \
    admin key (this route takes a tenant key)";

/// 403 on the tenant's own administration: dead letters and webhook endpoints (`admin` scope).
pub(super) const TENANT_ADMIN_FORBIDDEN: &str = "The key lacks the tenant `admin` scope, or is the \
    operator's admin key (this route takes a tenant key)";

/// 503 on every route that takes a key or reads the database (`AuthError::Unavailable`, and
/// `ApiError::Unavailable` from a pool timeout or a lost connection).
pub(super) const UNAVAILABLE: &str = "The database is not answering (to check the key or to serve \
    the request); try again shortly";

/// 422 from the layer that refuses text Postgres cannot store in the URI, on every route with a
/// path id or a query parameter.
pub(super) const UNSTORABLE_URI: &str = "A path id or a query parameter contains a NUL character \
    (`%00`), which cannot be stored; `error.param` names it";

/// 413 on the routes that read a JSON body through `jobs::parse_body`.
pub(super) const BODY_TOO_LARGE: &str =
    "The request body is larger than this server accepts (`server.max_body_bytes`)";

/// 408 from the timeout layer, listed on the routes whose work can outlast it.
pub(super) const TIMED_OUT: &str = "The request took longer than `server.request_timeout` and was \
    stopped; try again, or send less at once";
