//! `/api/v1`: JSON for integrations (ticketing, ITSM) and scripts, authenticated by an API token
//! (`Authorization: Bearer pst_…`) or the console session (then with `X-CSRF-Token` on every
//! POST). The OpenAPI 3 document at `/api/v1/openapi.json` is generated from these handlers.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::{caller, check_csrf, forbidden, Caller, Web, WebError};
use crate::access::{self, requests};
use crate::error::Error;
use crate::{audit, search, sessions, targets, users};

type ApiResult<T> = Result<Json<T>, WebError>;

/// An error answer.
#[derive(Serialize, ToSchema)]
pub struct ApiError {
    /// One line a person can act on.
    pub error: String,
}

/// The caller.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// User name.
    pub user: String,
    /// vendor, manager, auditor or admin.
    pub role: String,
    /// Organisation.
    pub org: Option<String>,
}

/// An access request.
#[derive(Serialize, ToSchema)]
pub struct ApiRequest {
    /// Id.
    pub id: i64,
    /// Requester.
    pub user: String,
    /// Target.
    pub target: String,
    /// Governing policy.
    pub policy: String,
    /// Why.
    pub reason: String,
    /// Seconds asked for.
    pub duration_secs: i64,
    /// Requested start (Unix seconds); none: as soon as approved.
    pub start_at: Option<i64>,
    /// Filed (Unix seconds).
    pub created_at: i64,
    /// pending, approved, denied, cancelled or expired.
    pub state: String,
    /// Approvals so far.
    pub approvals: i64,
    /// Approvals needed.
    pub required: i64,
    /// Who decided last.
    pub decided_by: Option<String>,
    /// Their comment.
    pub decision_comment: Option<String>,
    /// Grant issued.
    pub grant_id: Option<i64>,
}

impl From<requests::Request> for ApiRequest {
    fn from(r: requests::Request) -> Self {
        ApiRequest {
            id: r.id,
            user: r.user,
            target: r.target,
            policy: r.policy,
            reason: r.reason,
            duration_secs: r.duration,
            start_at: r.start_at,
            created_at: r.created_at,
            state: serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            approvals: r.approvals,
            required: r.required,
            decided_by: r.decided_by,
            decision_comment: r.decision_comment,
            grant_id: r.grant_id,
        }
    }
}

/// A grant.
#[derive(Serialize, ToSchema)]
pub struct ApiGrant {
    /// Id.
    pub id: i64,
    /// User.
    pub user: String,
    /// Target.
    pub target: String,
    /// Start (Unix seconds).
    pub valid_from: i64,
    /// End (Unix seconds, exclusive).
    pub valid_until: i64,
    /// Revoked (Unix seconds).
    pub revoked_at: Option<i64>,
    /// Issued by.
    pub created_by: String,
    /// Whether it admits a session now.
    pub live: bool,
}

/// A session.
#[derive(Serialize, ToSchema)]
pub struct ApiSession {
    /// Id (32 hex digits).
    pub id: String,
    /// User.
    pub user: String,
    /// Target.
    pub target: String,
    /// Client address.
    pub client_addr: String,
    /// Start (Unix seconds).
    pub started_at: i64,
    /// End (Unix seconds); none while live.
    pub ended_at: Option<i64>,
    /// Bytes from the client.
    pub bytes_up: i64,
    /// Bytes to the client.
    pub bytes_down: i64,
    /// How it ended.
    pub end_reason: Option<String>,
}

impl From<sessions::SessionRow> for ApiSession {
    fn from(s: sessions::SessionRow) -> Self {
        ApiSession {
            id: s.id,
            user: s.user,
            target: s.target,
            client_addr: s.client_addr,
            started_at: s.started_at,
            ended_at: s.ended_at,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            end_reason: s.end_reason,
        }
    }
}

/// A new request.
#[derive(Deserialize, ToSchema)]
pub struct NewRequest {
    /// Target name.
    pub target: String,
    /// Duration, e.g. `1h`, `90m`.
    pub duration: String,
    /// Why (a change ticket).
    pub reason: String,
    /// Start, `YYYY-MM-DD HH:MM` in the policy's time zone.
    pub start: Option<String>,
}

/// An approval or denial.
#[derive(Deserialize, ToSchema, Default)]
pub struct Decision {
    /// Comment (reason for a denial).
    pub comment: Option<String>,
}

/// Request list filter.
#[derive(Deserialize, IntoParams)]
pub struct RequestFilter {
    /// Only pending requests.
    pub pending: Option<bool>,
}

/// Session list filter.
#[derive(Deserialize, IntoParams)]
pub struct SessionFilter {
    /// Only live sessions.
    pub live: Option<bool>,
}

/// Search parameters.
#[derive(Deserialize, IntoParams)]
pub struct SearchParams {
    /// Words typed or shown in a session (a phrase).
    pub q: String,
    /// Target name glob.
    pub target: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Organisation.
    pub org: Option<String>,
}

/// A search hit line.
#[derive(Serialize, ToSchema)]
pub struct ApiHit {
    /// Seconds into the recording.
    pub offset: f64,
    /// in, out, cmd or note.
    pub kind: String,
    /// The line.
    pub text: String,
}

/// A session with hits.
#[derive(Serialize, ToSchema)]
pub struct ApiSearchResult {
    /// Session id.
    pub session: String,
    /// User.
    pub user: String,
    /// Organisation.
    pub org: Option<String>,
    /// Target.
    pub target: String,
    /// Start (Unix seconds).
    pub started_at: i64,
    /// How it ended.
    pub end_reason: Option<String>,
    /// Matching lines.
    pub hits: Vec<ApiHit>,
}

/// Audit page parameters.
#[derive(Deserialize, IntoParams)]
pub struct AuditParams {
    /// Events after this sequence number.
    pub after: Option<i64>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<i64>,
}

/// An audit event.
#[derive(Serialize, ToSchema)]
pub struct ApiAuditRecord {
    /// Position in the chain.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// Event type, e.g. `request.approved`.
    pub kind: String,
    /// Who.
    pub actor: String,
    /// The event.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Hash of the event before.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

fn csrf_header(h: &HeaderMap) -> Option<&str> {
    h.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

/// Authenticates a state change (with the CSRF check for console sessions).
pub(super) async fn acting(web: &Web, h: &HeaderMap) -> Result<Caller, WebError> {
    let c = caller(web, h).await?;
    check_csrf(&c, csrf_header(h))?;
    Ok(c)
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "account",
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiError)))]
async fn whoami(State(web): State<Web>, h: HeaderMap) -> ApiResult<WhoAmI> {
    let c = caller(&web, &h).await?;
    Ok(Json(WhoAmI { user: c.user.name, role: c.user.role.to_string(), org: c.user.org }))
}

#[utoipa::path(get, path = "/api/v1/requests", tag = "requests", params(RequestFilter),
    responses((status = 200, body = [ApiRequest]), (status = 401, body = ApiError)))]
async fn list_requests(
    State(web): State<Web>,
    h: HeaderMap,
    Query(f): Query<RequestFilter>,
) -> ApiResult<Vec<ApiRequest>> {
    let c = caller(&web, &h).await?;
    let mine = (!c.sees_all()).then_some(c.user.id);
    let list = requests::list(&web.app, mine, f.pending.unwrap_or(false)).await?;
    Ok(Json(list.into_iter().map(ApiRequest::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/requests", tag = "requests", request_body = NewRequest,
    responses((status = 201, body = ApiRequest), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn create_request(
    State(web): State<Web>,
    h: HeaderMap,
    Json(n): Json<NewRequest>,
) -> Result<(StatusCode, Json<ApiRequest>), WebError> {
    let c = acting(&web, &h).await?;
    if c.user.role == users::Role::Auditor {
        return Err(forbidden("file requests"));
    }
    let duration = access::parse_duration(&n.duration)?;
    let r = requests::create(
        &web.app,
        &c.user,
        &requests::Ask { target: n.target, duration, reason: n.reason, start: n.start },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// A request the caller may see (another vendor's is "unknown", as if it did not exist).
async fn visible_request(web: &Web, c: &Caller, id: i64) -> Result<requests::Request, WebError> {
    let r = requests::get(&web.app, id).await?;
    if !c.sees_all() && r.user_id != c.user.id {
        return Err(Error::NotFound(format!("unknown request {id}")).into());
    }
    Ok(r)
}

#[utoipa::path(get, path = "/api/v1/requests/{id}", tag = "requests", params(("id" = i64, Path, description = "Request id")),
    responses((status = 200, body = ApiRequest), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn get_request(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>) -> ApiResult<ApiRequest> {
    let c = caller(&web, &h).await?;
    Ok(Json(visible_request(&web, &c, id).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/requests/{id}/approve", tag = "requests", params(("id" = i64, Path, description = "Request id")),
    request_body(content = Decision, description = "Optional comment"),
    responses((status = 200, body = ApiRequest), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn approve(
    State(web): State<Web>,
    h: HeaderMap,
    Path(id): Path<i64>,
    body: Option<Json<Decision>>,
) -> ApiResult<ApiRequest> {
    let c = acting(&web, &h).await?;
    if !c.may_act() {
        return Err(forbidden("approve requests"));
    }
    let d = body.map(|b| b.0).unwrap_or_default();
    Ok(Json(requests::approve(&web.app, &c.user, id, d.comment.as_deref()).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/requests/{id}/deny", tag = "requests", params(("id" = i64, Path, description = "Request id")),
    request_body(content = Decision, description = "Optional reason"),
    responses((status = 200, body = ApiRequest), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn deny(
    State(web): State<Web>,
    h: HeaderMap,
    Path(id): Path<i64>,
    body: Option<Json<Decision>>,
) -> ApiResult<ApiRequest> {
    let c = acting(&web, &h).await?;
    if !c.may_act() {
        return Err(forbidden("deny requests"));
    }
    let d = body.map(|b| b.0).unwrap_or_default();
    Ok(Json(requests::deny(&web.app, &c.user, id, d.comment.as_deref()).await?.into()))
}

/// Grants with user and target names.
pub(super) async fn grants_for(web: &Web, c: &Caller) -> Result<Vec<ApiGrant>, WebError> {
    let now = web.app.clock.now();
    let mine = (!c.sees_all()).then_some(c.user.id);
    let mut out = Vec::new();
    for g in access::list(&web.app, mine).await?.into_iter().take(500) {
        let user = users::by_id(&web.app, g.user_id).await.map(|u| u.name).unwrap_or_default();
        let target = targets::by_id(&web.app, g.target_id).await.map(|t| t.name).unwrap_or_default();
        out.push(ApiGrant {
            id: g.id,
            live: g.live_at(now),
            user,
            target,
            valid_from: g.valid_from,
            valid_until: g.valid_until,
            revoked_at: g.revoked_at,
            created_by: g.created_by,
        });
    }
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/grants", tag = "grants",
    responses((status = 200, body = [ApiGrant]), (status = 401, body = ApiError)))]
async fn list_grants(State(web): State<Web>, h: HeaderMap) -> ApiResult<Vec<ApiGrant>> {
    let c = caller(&web, &h).await?;
    Ok(Json(grants_for(&web, &c).await?))
}

#[utoipa::path(post, path = "/api/v1/grants/{id}/revoke", tag = "grants", params(("id" = i64, Path, description = "Grant id")),
    responses((status = 200, body = ApiGrant), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn revoke(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>) -> ApiResult<ApiGrant> {
    let c = acting(&web, &h).await?;
    if !c.may_act() {
        return Err(forbidden("revoke grants"));
    }
    let g = requests::revoke(&web.app, &c.user, id, true).await?;
    let now = web.app.clock.now();
    Ok(Json(ApiGrant {
        id: g.id,
        live: g.live_at(now),
        user: users::by_id(&web.app, g.user_id).await.map(|u| u.name).unwrap_or_default(),
        target: targets::by_id(&web.app, g.target_id).await.map(|t| t.name).unwrap_or_default(),
        valid_from: g.valid_from,
        valid_until: g.valid_until,
        revoked_at: g.revoked_at,
        created_by: g.created_by,
    }))
}

/// Sessions the caller may see.
pub(super) async fn sessions_for(web: &Web, c: &Caller, live: bool) -> Result<Vec<sessions::SessionRow>, WebError> {
    let mut list = sessions::list(&web.app, live).await?;
    if !c.sees_all() {
        list.retain(|s| s.user == c.user.name);
    }
    list.truncate(500);
    Ok(list)
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(SessionFilter),
    responses((status = 200, body = [ApiSession]), (status = 401, body = ApiError)))]
async fn list_sessions(
    State(web): State<Web>,
    h: HeaderMap,
    Query(f): Query<SessionFilter>,
) -> ApiResult<Vec<ApiSession>> {
    let c = caller(&web, &h).await?;
    Ok(Json(sessions_for(&web, &c, f.live.unwrap_or(false)).await?.into_iter().map(ApiSession::from).collect()))
}

/// Checks a full session id (32 hex digits).
pub(super) fn session_id(id: &str) -> Result<&str, WebError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(Error::Invalid(format!(
            "invalid session id {:?}: give all 32 hex digits",
            id.chars().take(40).collect::<String>()
        ))
        .into())
    }
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/kill", tag = "sessions", params(("id" = String, Path, description = "Session id (32 hex digits)")),
    responses((status = 200, body = ApiSession), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn kill(State(web): State<Web>, h: HeaderMap, Path(id): Path<String>) -> ApiResult<ApiSession> {
    let c = acting(&web, &h).await?;
    if !c.may_act() {
        return Err(forbidden("end sessions"));
    }
    let id = session_id(&id)?;
    sessions::request_kill(&web.app, &c.user.name, id).await?;
    let s = sessions::get(&web.app, id).await?.ok_or_else(|| Error::NotFound(format!("unknown session {id}")))?;
    Ok(Json(s.into()))
}

#[utoipa::path(get, path = "/api/v1/search", tag = "evidence", params(SearchParams),
    responses((status = 200, body = [ApiSearchResult]), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn search_sessions(
    State(web): State<Web>,
    h: HeaderMap,
    Query(p): Query<SearchParams>,
) -> ApiResult<Vec<ApiSearchResult>> {
    let c = caller(&web, &h).await?;
    if !c.sees_all() {
        return Err(forbidden("search recordings"));
    }
    if p.q.trim().is_empty() || p.q.len() > 200 {
        return Err(Error::Invalid("give 1-200 characters to search for".into()).into());
    }
    // A NUL byte made the store fail (500, found by schemathesis): no control characters.
    let fields = [Some(&p.q), p.target.as_ref(), p.user.as_ref(), p.org.as_ref()];
    if fields.iter().flatten().any(|f| f.chars().any(char::is_control)) {
        return Err(Error::Invalid("search terms and filters may not contain control characters".into()).into());
    }
    let q = search::Query { text: p.q, target: p.target, user: p.user, org: p.org, ..Default::default() };
    let found = search::search(&web.app, &q).await.map_err(Error::Other)?;
    Ok(Json(
        found
            .into_iter()
            .map(|s| ApiSearchResult {
                session: s.session,
                user: s.user,
                org: s.org,
                target: s.target,
                started_at: s.started_at,
                end_reason: s.end_reason,
                hits: s.hits.into_iter().map(|h| ApiHit { offset: h.offset, kind: h.kind, text: h.text }).collect(),
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "evidence", params(AuditParams),
    responses((status = 200, body = [ApiAuditRecord]), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn audit_log(
    State(web): State<Web>,
    h: HeaderMap,
    Query(p): Query<AuditParams>,
) -> ApiResult<Vec<ApiAuditRecord>> {
    let c = caller(&web, &h).await?;
    if !matches!(c.user.role, users::Role::Auditor | users::Role::Admin) {
        return Err(forbidden("read the audit log"));
    }
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let recs = audit::read(&web.app.store, p.after.unwrap_or(0).max(0), limit).await.map_err(Error::Db)?;
    Ok(Json(
        recs.into_iter()
            .map(|r| ApiAuditRecord {
                details: serde_json::from_str(r.details.get()).unwrap_or(serde_json::Value::Null),
                seq: r.seq,
                at: r.at,
                kind: r.kind,
                actor: r.actor,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
            .collect(),
    ))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Penstock API", description = "Requests, approvals, grants, sessions, search and audit of a Penstock gateway. \
        Authenticate with `Authorization: Bearer TOKEN` (`penstock token create`); every call acts with the token's user's role."),
    paths(whoami, list_requests, create_request, get_request, approve, deny, list_grants, revoke, list_sessions, kill, search_sessions, audit_log,
        super::audit::api_recordings, super::audit::api_recording, super::audit::api_evidence),
    modifiers(&BearerAuth),
    security(("token" = [])),
)]
struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::vendor::VendorApi::openapi());
    doc.merge(super::admin::AdminApi::openapi());
    // Every operation may answer 400 (a malformed id, query or body) and 401 (no or a bad token).
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            for (code, what) in [("400", "bad input"), ("401", "log in first")] {
                op.responses.responses.entry(code.to_string()).or_insert_with(|| {
                    utoipa::openapi::ResponseBuilder::new()
                        .description(what)
                        .content(
                            "application/json",
                            utoipa::openapi::content::Content::new(Some(utoipa::openapi::Ref::from_schema_name(
                                "ApiError",
                            ))),
                        )
                        .build()
                        .into()
                });
            }
        }
    }
    Json(doc)
}

/// Rejections of malformed input by axum's extractors (plain text, 415/422) become the API's
/// JSON error with 400, so every error of the API has one shape.
pub(super) async fn json_errors(res: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json || status == StatusCode::METHOD_NOT_ALLOWED {
        return res;
    }
    let status = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    let text = axum::body::to_bytes(res.into_body(), 4096).await.unwrap_or_default();
    let msg: String = String::from_utf8_lossy(&text).trim().chars().take(300).collect();
    let msg = if msg.is_empty() { status.canonical_reason().unwrap_or("bad request").to_string() } else { msg };
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn not_found() -> WebError {
    WebError::Core(Error::NotFound("no such API route".into()))
}

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/whoami", get(whoami))
        .route("/requests", get(list_requests).post(create_request))
        .route("/requests/{id}", get(get_request))
        .route("/requests/{id}/approve", post(approve))
        .route("/requests/{id}/deny", post(deny))
        .route("/grants", get(list_grants))
        .route("/grants/{id}/revoke", post(revoke))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}/kill", post(kill))
        .route("/search", get(search_sessions))
        .route("/audit", get(audit_log))
        .merge(super::audit::api_routes())
        .fallback(not_found)
}
