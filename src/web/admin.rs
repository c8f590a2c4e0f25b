//! The admin pages and API (role admin): users (add with role and organisation, disable, reset
//! MFA showing the new enrolment once, SSH keys), targets (list; add after fetching the host key
//! or certificate thumbprint, which the admin confirms before it is pinned) and the policies with
//! the targets each governs (read-only). Every change is a core call (`users`, `targets`), audited
//! there with the admin as actor, exactly as the CLI does; forms carry the CSRF token.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::api::{acting, ApiError};
use super::pages::{layout, page_caller, page_error, window_text};
use super::{caller, check_csrf, esc, forbidden, time_html, Caller, Web, WebError};
use crate::access;
use crate::auth::totp;
use crate::error::{invalid, Error};
use crate::secret::Secret;
use crate::targets::{self, CredentialKind, NewTarget};
use crate::users::{self, NewUser, Role};

fn admin_only(c: &Caller, what: &str) -> Result<(), WebError> {
    if c.user.role == Role::Admin {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

/// Parses a JSON body after the caller was authenticated (so a stranger gets 401, not a parse
/// error).
pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WebError> {
    serde_json::from_slice(body).map_err(|e| WebError::Core(invalid(format!("invalid JSON body: {e}"))))
}

fn opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// API types

/// A user.
#[derive(Serialize, ToSchema)]
pub struct ApiUser {
    /// Login name.
    pub name: String,
    /// vendor, manager, auditor or admin.
    pub role: String,
    /// Organisation.
    pub org: Option<String>,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Expiry (Unix seconds).
    pub expires_at: Option<i64>,
    /// Whether a password is set.
    pub has_password: bool,
    /// Fingerprints of the user's SSH keys.
    pub keys: Vec<String>,
}

async fn api_user(web: &Web, u: users::User) -> Result<ApiUser, WebError> {
    let keys = users::keys(&web.app, u.id).await?.into_iter().map(|(fp, _)| fp).collect();
    Ok(ApiUser {
        name: u.name,
        role: u.role.to_string(),
        org: u.org,
        disabled: u.disabled,
        expires_at: u.expires_at,
        has_password: u.has_password,
        keys,
    })
}

/// A new user.
#[derive(Deserialize, ToSchema)]
pub struct NewUserBody {
    /// Login name (1-64 of letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// vendor, manager, auditor or admin.
    pub role: String,
    /// Organisation.
    pub org: Option<String>,
    /// Last day the account works, `YYYY-MM-DD`.
    pub expires: Option<String>,
    /// Password (8 characters at least); none: one is generated and returned once.
    pub password: Option<String>,
}

/// A user and its authenticator enrolment (shown once; never stored in clear).
#[derive(Serialize, ToSchema)]
pub struct ApiEnrolment {
    /// The user.
    pub user: ApiUser,
    /// `otpauth://` URI with the TOTP seed, for the authenticator app.
    pub otpauth_uri: String,
    /// The generated password, when none was given.
    pub password: Option<String>,
}

/// An SSH public key line.
#[derive(Deserialize, ToSchema)]
pub struct KeyBody {
    /// `ssh-ed25519 AAAA… comment`.
    pub key: String,
}

/// A key to remove.
#[derive(Deserialize, ToSchema)]
pub struct KeyRemoveBody {
    /// Its fingerprint (`SHA256:…`) or the key line.
    pub fingerprint: String,
}

/// A target.
#[derive(Serialize, ToSchema)]
pub struct ApiTarget {
    /// Name (`USER@NAME`).
    pub name: String,
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// Site tag.
    pub site: Option<String>,
    /// Zone tag.
    pub zone: Option<String>,
    /// Criticality tag.
    pub criticality: Option<String>,
    /// The governing policy (none: only admin grants).
    pub policy: Option<String>,
    /// The longest access the policy allows (seconds).
    pub max_duration_secs: Option<i64>,
    /// Approvals the policy needs.
    pub required_approvals: Option<i64>,
    /// Whether the caller may request access to it.
    pub requestable: bool,
    /// `host:port` (managers, auditors, admins).
    pub address: Option<String>,
    /// Account on the target (managers, auditors, admins).
    pub login: Option<String>,
    /// Pinned identity: SSH host key fingerprint or RDP certificate thumbprint (managers, auditors, admins).
    pub pinned: Option<String>,
}

/// What to contact.
#[derive(Deserialize, ToSchema)]
pub struct FetchBody {
    /// `ssh` (default) or `rdp`.
    pub protocol: Option<String>,
    /// `host:port`.
    pub address: String,
    /// SSH: allow legacy algorithms while fetching.
    pub legacy_crypto: Option<bool>,
}

/// The identity a target presented (not stored).
#[derive(Serialize, ToSchema)]
pub struct ApiFetched {
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// As contacted.
    pub address: String,
    /// SSH: the host key line to pin (give it back as `host_key`).
    pub host_key: Option<String>,
    /// SSH fingerprint or RDP certificate thumbprint: compare it with the target's console.
    pub fingerprint: String,
}

/// A new target; its identity is pinned as given (fetch it first and compare).
#[derive(Deserialize, ToSchema)]
pub struct NewTargetBody {
    /// Name.
    pub name: String,
    /// `ssh` (default) or `rdp`.
    pub protocol: Option<String>,
    /// `host:port`.
    pub address: String,
    /// Account on the target.
    pub login: String,
    /// The account's password (vaulted; never shown again).
    pub password: String,
    /// SSH: the host key line to pin.
    pub host_key: Option<String>,
    /// RDP: the certificate thumbprint to pin.
    pub cert_sha256: Option<String>,
    /// Site tag.
    pub site: Option<String>,
    /// Zone tag.
    pub zone: Option<String>,
    /// Criticality tag.
    pub criticality: Option<String>,
    /// SSH: allow legacy algorithms towards it.
    pub legacy_crypto: Option<bool>,
}

/// A policy and the targets it governs.
#[derive(Serialize, ToSchema)]
pub struct ApiPolicy {
    /// Name.
    pub name: String,
    /// File it was read from.
    pub file: String,
    /// Description.
    pub description: String,
    /// Approvals needed.
    pub required: i64,
    /// Longest access (seconds).
    pub max_duration_secs: i64,
    /// Number of maintenance windows (none: any time).
    pub windows: i64,
    /// Roles, organisations and users that may request.
    pub requesters: Vec<String>,
    /// Roles, organisations and users that may approve.
    pub approvers: Vec<String>,
    /// Targets it governs now.
    pub targets: Vec<String>,
}

fn who_list(w: &crate::policy::Who) -> Vec<String> {
    w.roles
        .iter()
        .map(|r| format!("role {r}"))
        .chain(w.orgs.iter().map(|o| format!("org {o}")))
        .chain(w.users.iter().map(|u| format!("user {u}")))
        .collect()
}

async fn policies_list(web: &Web) -> Result<Vec<ApiPolicy>, WebError> {
    let set = web.app.policies.current();
    let all = targets::list(&web.app).await?;
    Ok(set
        .policies
        .iter()
        .map(|p| ApiPolicy {
            name: p.name.clone(),
            file: p.file.display().to_string(),
            description: p.description.clone(),
            required: i64::from(p.required),
            max_duration_secs: p.max_duration,
            windows: p.windows.len() as i64,
            requesters: who_list(&p.requesters),
            approvers: who_list(&p.approvers),
            targets: all
                .iter()
                .filter(|t| set.for_target(t).is_some_and(|q| q.name == p.name))
                .map(|t| t.name.clone())
                .collect(),
        })
        .collect())
}

async fn targets_list(web: &Web, c: &Caller) -> Result<Vec<ApiTarget>, WebError> {
    let set = web.app.policies.current();
    let details = c.sees_all();
    let mut out = Vec::new();
    for t in targets::list(&web.app).await? {
        let p = set.for_target(&t);
        let requestable = p.is_some_and(|p| p.requesters.includes(&c.user));
        if !details && !requestable {
            continue;
        }
        out.push(ApiTarget {
            policy: p.map(|p| p.name.clone()),
            max_duration_secs: p.map(|p| p.max_duration),
            required_approvals: p.map(|p| i64::from(p.required)),
            requestable,
            address: details.then(|| t.address()),
            login: details.then(|| t.login.clone()),
            pinned: if details {
                if t.protocol == "rdp" {
                    t.cert_sha256.clone()
                } else {
                    t.host_key_fingerprint()
                }
            } else {
                None
            },
            name: t.name,
            protocol: t.protocol,
            site: t.site,
            zone: t.zone,
            criticality: t.criticality,
        });
    }
    Ok(out)
}

async fn add_target(web: &Web, c: &Caller, b: NewTargetBody) -> Result<targets::Target, WebError> {
    let protocol = opt(&b.protocol).unwrap_or_else(|| "ssh".into());
    if b.password.is_empty() {
        return Err(invalid("give the target account's password").into());
    }
    if protocol != "rdp" && opt(&b.host_key).is_none() {
        return Err(invalid("an SSH target's host key must be pinned: fetch it first and give it as host_key").into());
    }
    let t = targets::add(
        &web.app,
        &c.user.name,
        NewTarget {
            name: b.name.trim().to_string(),
            protocol,
            address: b.address.trim().to_string(),
            login: b.login.trim().to_string(),
            credential: (CredentialKind::Password, Secret::from_string(b.password)),
            host_key: opt(&b.host_key),
            site: opt(&b.site),
            zone: opt(&b.zone),
            criticality: opt(&b.criticality),
            legacy_crypto: b.legacy_crypto.unwrap_or(false),
            cert_sha256: opt(&b.cert_sha256),
            rdp_nla: true,
        },
    )
    .await?;
    Ok(t)
}

async fn add_user(web: &Web, c: &Caller, b: NewUserBody) -> Result<(users::User, Secret, Option<String>), WebError> {
    let role: Role = b.role.trim().parse()?;
    let expires_at = opt(&b.expires).map(|e| users::expiry_from_date(&e)).transpose()?;
    let given = b.password.filter(|p| !p.is_empty());
    let generated = given.is_none().then(|| crate::auth::random_token(20));
    let password = Secret::from_string(given.or_else(|| generated.clone()).unwrap_or_default());
    let name = b.name.trim().to_string();
    let enrol = users::add(
        &web.app,
        &c.user.name,
        NewUser { name: name.clone(), role, org: opt(&b.org), expires_at, password: Some(password) },
    )
    .await?;
    Ok((users::by_id(&web.app, enrol.user_id).await?, enrol.otpauth_uri, generated))
}

// ---------------------------------------------------------------------------------------------
// API handlers

#[utoipa::path(get, path = "/api/v1/users", tag = "admin",
    responses((status = 200, body = [ApiUser]), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn api_users(State(web): State<Web>, h: HeaderMap) -> Result<Json<Vec<ApiUser>>, WebError> {
    let c = caller(&web, &h).await?;
    admin_only(&c, "list users")?;
    let mut out = Vec::new();
    for u in users::list(&web.app).await?.into_iter().take(5000) {
        out.push(api_user(&web, u).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "admin", request_body = NewUserBody,
    responses((status = 201, body = ApiEnrolment), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn api_add_user(
    State(web): State<Web>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ApiEnrolment>), WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "add users")?;
    let b: NewUserBody = json_body(&body)?;
    let (u, uri, generated) = add_user(&web, &c, b).await?;
    let user = api_user(&web, u).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiEnrolment { user, otpauth_uri: uri.expose_str().unwrap_or("").to_string(), password: generated }),
    ))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/disable", tag = "admin", params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = ApiUser), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn api_disable(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ApiUser>, WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "disable users")?;
    users::disable(&web.app, &c.user.name, &name).await?;
    Ok(Json(api_user(&web, users::get(&web.app, &name).await?).await?))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/reset-mfa", tag = "admin", params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = ApiEnrolment), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn api_reset_mfa(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ApiEnrolment>, WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "reset MFA")?;
    let enrol = users::reset_mfa(&web.app, &c.user.name, &name).await?;
    let user = api_user(&web, users::get(&web.app, &name).await?).await?;
    Ok(Json(ApiEnrolment {
        user,
        otpauth_uri: enrol.otpauth_uri.expose_str().unwrap_or("").to_string(),
        password: None,
    }))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/keys", tag = "admin", params(("name" = String, Path, description = "User name")),
    request_body = KeyBody,
    responses((status = 200, body = ApiUser), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn api_add_key(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ApiUser>, WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "add keys")?;
    let b: KeyBody = json_body(&body)?;
    users::add_key(&web.app, &c.user.name, &name, b.key.trim()).await?;
    Ok(Json(api_user(&web, users::get(&web.app, &name).await?).await?))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/keys/remove", tag = "admin", params(("name" = String, Path, description = "User name")),
    request_body = KeyRemoveBody,
    responses((status = 200, body = ApiUser), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
async fn api_remove_key(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ApiUser>, WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "remove keys")?;
    let b: KeyRemoveBody = json_body(&body)?;
    users::remove_key(&web.app, &c.user.name, &name, b.fingerprint.trim()).await?;
    Ok(Json(api_user(&web, users::get(&web.app, &name).await?).await?))
}

#[utoipa::path(get, path = "/api/v1/targets", tag = "targets",
    responses((status = 200, body = [ApiTarget]), (status = 401, body = ApiError)))]
async fn api_targets(State(web): State<Web>, h: HeaderMap) -> Result<Json<Vec<ApiTarget>>, WebError> {
    let c = caller(&web, &h).await?;
    Ok(Json(targets_list(&web, &c).await?))
}

#[utoipa::path(post, path = "/api/v1/targets/fetch-identity", tag = "targets", request_body = FetchBody,
    responses((status = 200, body = ApiFetched), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn api_fetch(
    State(web): State<Web>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ApiFetched>, WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "fetch target identities")?;
    let b: FetchBody = json_body(&body)?;
    let protocol = opt(&b.protocol).unwrap_or_else(|| "ssh".into());
    let f = targets::fetch_identity(&web.app, &protocol, b.address.trim(), b.legacy_crypto.unwrap_or(false)).await?;
    Ok(Json(ApiFetched { protocol: f.protocol, address: f.address, host_key: f.host_key, fingerprint: f.fingerprint }))
}

#[utoipa::path(post, path = "/api/v1/targets", tag = "targets", request_body = NewTargetBody,
    responses((status = 201, body = ApiTarget), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 409, body = ApiError)))]
async fn api_add_target(
    State(web): State<Web>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ApiTarget>), WebError> {
    let c = acting(&web, &h).await?;
    admin_only(&c, "add targets")?;
    let b: NewTargetBody = json_body(&body)?;
    let t = add_target(&web, &c, b).await?;
    let row = targets_list(&web, &c)
        .await?
        .into_iter()
        .find(|x| x.name == t.name)
        .ok_or_else(|| Error::NotFound(format!("unknown target {:?}", t.name)))?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "admin",
    responses((status = 200, body = [ApiPolicy]), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn api_policies(State(web): State<Web>, h: HeaderMap) -> Result<Json<Vec<ApiPolicy>>, WebError> {
    let c = caller(&web, &h).await?;
    admin_only(&c, "read the policies")?;
    Ok(Json(policies_list(&web).await?))
}

/// The admin routes of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(
    api_users,
    api_add_user,
    api_disable,
    api_reset_mfa,
    api_add_key,
    api_remove_key,
    api_targets,
    api_fetch,
    api_add_target,
    api_policies
))]
pub(super) struct AdminApi;

pub(super) fn api_routes() -> Router<Web> {
    Router::new()
        .route("/users", get(api_users).post(api_add_user))
        .route("/users/{name}/disable", post(api_disable))
        .route("/users/{name}/reset-mfa", post(api_reset_mfa))
        .route("/users/{name}/keys", post(api_add_key))
        .route("/users/{name}/keys/remove", post(api_remove_key))
        .route("/targets", get(api_targets).post(api_add_target))
        .route("/targets/fetch-identity", post(api_fetch))
        .route("/policies", get(api_policies))
}

// ---------------------------------------------------------------------------------------------
// Pages

#[derive(Deserialize)]
struct Done {
    done: Option<String>,
}

fn done_line(d: &Done) -> String {
    match d.done.as_deref() {
        Some(m) if !m.is_empty() => {
            let m: String = m.chars().take(120).collect();
            format!("<p class=\"ok\" role=\"status\">{}</p>", esc(&m))
        }
        _ => String::new(),
    }
}

fn redirect_done(path: &str, msg: &str) -> Response {
    Redirect::to(&format!("{path}?done={}", urlenc(msg))).into_response()
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The caller of an admin page, or the answer to give instead.
async fn admin_page_caller(web: &Web, h: &HeaderMap, what: &str) -> Result<Caller, Response> {
    let c = page_caller(web, h).await?;
    admin_only(&c, what).map_err(page_error)?;
    Ok(c)
}

/// The caller of an admin form post (CSRF checked).
async fn admin_form_caller(web: &Web, h: &HeaderMap, csrf: Option<&str>, what: &str) -> Result<Caller, WebError> {
    let c = caller(web, h).await?;
    check_csrf(&c, csrf)?;
    admin_only(&c, what)?;
    Ok(c)
}

fn csrf_of(c: &Caller) -> String {
    esc(c.session.as_ref().map(|s| s.csrf.as_str()).unwrap_or(""))
}

async fn users_page(State(web): State<Web>, h: HeaderMap, Query(d): Query<Done>) -> Response {
    let c = match admin_page_caller(&web, &h, "administer users").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let csrf = csrf_of(&c);
        let now = web.app.clock.now();
        let mut body = done_line(&d);
        let _ = write!(
            body,
            "<section aria-labelledby=\"add-h\"><h2 id=\"add-h\">Add a user</h2><form method=\"post\" action=\"/admin/users\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label for=\"new-name\">Name</label><input id=\"new-name\" name=\"name\" required maxlength=\"64\">\
             <label for=\"new-role\">Role</label><select id=\"new-role\" name=\"role\"><option>vendor</option><option>manager</option>\
             <option>auditor</option><option>admin</option></select>\
             <label for=\"new-org\">Organisation</label><input id=\"new-org\" name=\"org\" maxlength=\"100\">\
             <label for=\"new-expires\">Last day (YYYY-MM-DD, optional)</label><input id=\"new-expires\" name=\"expires\" maxlength=\"10\">\
             <label for=\"new-password\">Password (optional: empty generates one, shown once)</label>\
             <input id=\"new-password\" name=\"password\" type=\"password\" autocomplete=\"new-password\">\
             <button type=\"submit\">Add user</button></form></section>\
             <section aria-labelledby=\"users-h\"><h2 id=\"users-h\">Users</h2><ul class=\"cards\">"
        );
        for u in users::list(&web.app).await?.into_iter().take(2000) {
            let keys = users::keys(&web.app, u.id).await?;
            let state = if u.disabled {
                "disabled"
            } else if !u.usable_at(now) {
                "expired"
            } else {
                "active"
            };
            let n = esc(&u.name);
            let _ = write!(
                body,
                "<li id=\"user-{n}\"><strong>{n}</strong> ({role}{org}), <span class=\"state\">{state}</span>{exp}",
                role = u.role,
                org = u.org.as_deref().map(|o| format!(", {}", esc(o))).unwrap_or_default(),
                exp = u.expires_at.map(|e| format!(", until {}", time_html(web.tz, e))).unwrap_or_default()
            );
            body.push_str("<ul>");
            for (fp, _) in &keys {
                let _ = write!(
                    body,
                    "<li><code>{fp}</code><form method=\"post\" action=\"/admin/users/{n}/keys/remove\" class=\"inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"fingerprint\" value=\"{fp}\">\
                     <button type=\"submit\">Remove key {fp} of {n}</button></form></li>",
                    fp = esc(fp)
                );
            }
            body.push_str("</ul>");
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/admin/users/{n}/keys\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label for=\"key-{n}\">SSH public key for {n}</label><input id=\"key-{n}\" name=\"key\" maxlength=\"16000\">\
                 <button type=\"submit\">Add key to {n}</button></form>\
                 <form method=\"post\" action=\"/admin/users/{n}/reset-mfa\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\">Reset MFA of {n}</button></form>"
            );
            if !u.disabled {
                let _ = write!(
                    body,
                    " <form method=\"post\" action=\"/admin/users/{n}/disable\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\" class=\"deny\">Disable {n}</button></form>"
                );
            }
            body.push_str("</li>");
        }
        body.push_str("</ul></section>");
        layout(&web, &c, "Users", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

/// The page that shows a new enrolment once.
async fn enrolment_page(
    web: &Web,
    c: &Caller,
    title: &str,
    name: &str,
    uri: &Secret,
    password: Option<&str>,
) -> Result<Response, WebError> {
    let mut body = format!(
        "<p role=\"status\">{}: scan the code with the authenticator app of {} now. It is shown only this once.</p>",
        esc(title),
        esc(name)
    );
    body.push_str(&totp::qr_svg(uri));
    let _ = write!(
        body,
        "<p>Or enter the URI:</p><pre><code id=\"otpauth-uri\">{}</code></pre>",
        esc(uri.expose_str().unwrap_or(""))
    );
    if let Some(p) = password {
        let _ =
            write!(body, "<p>Password (shown once):</p><pre><code id=\"new-password-shown\">{}</code></pre>", esc(p));
    }
    body.push_str("<p><a href=\"/admin/users\">Back to users</a></p>");
    layout(web, c, title, &body).await
}

#[derive(Deserialize)]
struct UserForm {
    csrf: Option<String>,
    name: Option<String>,
    role: Option<String>,
    org: Option<String>,
    expires: Option<String>,
    password: Option<String>,
}

async fn add_user_form(State(web): State<Web>, h: HeaderMap, Form(f): Form<UserForm>) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "add users").await?;
        let b = NewUserBody {
            name: f.name.unwrap_or_default(),
            role: f.role.unwrap_or_default(),
            org: f.org,
            expires: f.expires,
            password: f.password,
        };
        let (u, uri, generated) = add_user(&web, &c, b).await?;
        enrolment_page(&web, &c, &format!("User {} added ({})", u.name, u.role), &u.name, &uri, generated.as_deref())
            .await
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn disable_form(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<super::pages::CsrfForm>,
) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "disable users").await?;
        users::disable(&web.app, &c.user.name, &name).await?;
        Ok::<_, WebError>(())
    }
    .await;
    match res {
        Ok(()) => redirect_done("/admin/users", &format!("User {name} disabled.")),
        Err(e) => page_error(e),
    }
}

async fn reset_mfa_form(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<super::pages::CsrfForm>,
) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "reset MFA").await?;
        let enrol = users::reset_mfa(&web.app, &c.user.name, &name).await?;
        enrolment_page(&web, &c, &format!("TOTP of {name} replaced"), &name, &enrol.otpauth_uri, None).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct KeyForm {
    csrf: Option<String>,
    key: Option<String>,
    fingerprint: Option<String>,
}

async fn add_key_form(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<KeyForm>,
) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "add keys").await?;
        Ok::<_, WebError>(users::add_key(&web.app, &c.user.name, &name, f.key.as_deref().unwrap_or("").trim()).await?)
    }
    .await;
    match res {
        Ok(fp) => redirect_done("/admin/users", &format!("Key {fp} added to {name}.")),
        Err(e) => page_error(e),
    }
}

async fn remove_key_form(
    State(web): State<Web>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<KeyForm>,
) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "remove keys").await?;
        users::remove_key(&web.app, &c.user.name, &name, f.fingerprint.as_deref().unwrap_or("").trim()).await?;
        Ok::<_, WebError>(())
    }
    .await;
    match res {
        Ok(()) => redirect_done("/admin/users", &format!("Key removed from {name}.")),
        Err(e) => page_error(e),
    }
}

async fn targets_page(State(web): State<Web>, h: HeaderMap, Query(d): Query<Done>) -> Response {
    let c = match admin_page_caller(&web, &h, "administer targets").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let csrf = csrf_of(&c);
        let mut body = done_line(&d);
        let _ = write!(
            body,
            "<section aria-labelledby=\"fetch-h\"><h2 id=\"fetch-h\">Add a target</h2>\
             <p>First the gateway contacts the target and shows the identity it presents; you compare it with the target's \
             console and confirm before it is pinned.</p>\
             <form method=\"post\" action=\"/admin/targets/fetch\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label for=\"fetch-protocol\">Protocol</label><select id=\"fetch-protocol\" name=\"protocol\"><option>ssh</option><option>rdp</option></select>\
             <label for=\"fetch-address\">Address (host:port)</label><input id=\"fetch-address\" name=\"address\" required maxlength=\"300\">\
             <button type=\"submit\">Fetch identity</button></form></section>\
             <section aria-labelledby=\"targets-h\"><h2 id=\"targets-h\">Targets</h2><table><thead><tr><th scope=\"col\">Name</th>\
             <th scope=\"col\">Protocol</th><th scope=\"col\">Address</th><th scope=\"col\">Login</th><th scope=\"col\">Pinned identity</th>\
             <th scope=\"col\">Tags</th><th scope=\"col\">Policy</th></tr></thead><tbody>"
        );
        for t in targets_list(&web, &c).await? {
            let tags: Vec<String> = [&t.site, &t.zone, &t.criticality].iter().filter_map(|v| v.as_deref()).map(esc).collect();
            let _ = write!(
                body,
                "<tr id=\"target-{n}\"><td>{n}</td><td>{p}</td><td>{a}</td><td>{l}</td><td><code>{k}</code></td><td>{tags}</td><td>{pol}</td></tr>",
                n = esc(&t.name),
                p = esc(&t.protocol),
                a = esc(t.address.as_deref().unwrap_or("")),
                l = esc(t.login.as_deref().unwrap_or("")),
                k = esc(t.pinned.as_deref().unwrap_or("(none)")),
                tags = tags.join(", "),
                pol = esc(t.policy.as_deref().unwrap_or("(none: only admin grants)"))
            );
        }
        body.push_str("</tbody></table></section>");
        layout(&web, &c, "Targets", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct FetchForm {
    csrf: Option<String>,
    protocol: Option<String>,
    address: Option<String>,
}

async fn fetch_form(State(web): State<Web>, h: HeaderMap, Form(f): Form<FetchForm>) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "add targets").await?;
        let protocol = opt(&f.protocol).unwrap_or_else(|| "ssh".into());
        let address = f.address.as_deref().unwrap_or("").trim().to_string();
        let fetched = targets::fetch_identity(&web.app, &protocol, &address, false).await?;
        let csrf = csrf_of(&c);
        let what = if fetched.protocol == "rdp" { "Certificate thumbprint (SHA-256)" } else { "Host key fingerprint" };
        let pin_field = match &fetched.host_key {
            Some(k) => format!("<input type=\"hidden\" name=\"host_key\" value=\"{}\">", esc(k)),
            None => format!("<input type=\"hidden\" name=\"cert_sha256\" value=\"{}\">", esc(&fetched.fingerprint)),
        };
        let body = format!(
            "<p>{what} presented by <code>{addr}</code>:</p><pre><code id=\"fetched-fingerprint\">{fp}</code></pre>\
             <p>Compare it with the one the target's own console shows. Only if they match, fill in the rest and confirm: \
             the gateway then accepts only this identity from the target.</p>\
             <form method=\"post\" action=\"/admin/targets\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"protocol\" value=\"{proto}\"><input type=\"hidden\" name=\"address\" value=\"{addr}\">{pin_field}\
             <label for=\"t-name\">Name</label><input id=\"t-name\" name=\"name\" required maxlength=\"64\">\
             <label for=\"t-login\">Account on the target</label><input id=\"t-login\" name=\"login\" required maxlength=\"64\">\
             <label for=\"t-password\">Its password (vaulted)</label><input id=\"t-password\" name=\"password\" type=\"password\" autocomplete=\"off\" required>\
             <label for=\"t-site\">Site</label><input id=\"t-site\" name=\"site\" maxlength=\"64\">\
             <label for=\"t-zone\">Zone</label><input id=\"t-zone\" name=\"zone\" maxlength=\"64\">\
             <label for=\"t-criticality\">Criticality</label><input id=\"t-criticality\" name=\"criticality\" maxlength=\"64\">\
             <button type=\"submit\">Pin {fp} and add the target</button></form><p><a href=\"/admin/targets\">Cancel</a></p>",
            addr = esc(&fetched.address),
            fp = esc(&fetched.fingerprint),
            proto = esc(&fetched.protocol),
        );
        layout(&web, &c, "Confirm the target's identity", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct TargetForm {
    csrf: Option<String>,
    name: Option<String>,
    protocol: Option<String>,
    address: Option<String>,
    login: Option<String>,
    password: Option<String>,
    host_key: Option<String>,
    cert_sha256: Option<String>,
    site: Option<String>,
    zone: Option<String>,
    criticality: Option<String>,
}

async fn add_target_form(State(web): State<Web>, h: HeaderMap, Form(f): Form<TargetForm>) -> Response {
    let res = async {
        let c = admin_form_caller(&web, &h, f.csrf.as_deref(), "add targets").await?;
        let b = NewTargetBody {
            name: f.name.unwrap_or_default(),
            protocol: f.protocol,
            address: f.address.unwrap_or_default(),
            login: f.login.unwrap_or_default(),
            password: f.password.unwrap_or_default(),
            host_key: f.host_key,
            cert_sha256: f.cert_sha256,
            site: f.site,
            zone: f.zone,
            criticality: f.criticality,
            legacy_crypto: None,
        };
        add_target(&web, &c, b).await
    }
    .await;
    match res {
        Ok(t) => {
            let pinned = if t.protocol == "rdp" { t.cert_sha256.clone() } else { t.host_key_fingerprint() };
            redirect_done("/admin/targets", &format!("Target {} added; pinned {}.", t.name, pinned.unwrap_or_default()))
        }
        Err(e) => page_error(e),
    }
}

async fn policies_page(State(web): State<Web>, h: HeaderMap) -> Response {
    let c = match admin_page_caller(&web, &h, "read the policies").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let now = web.app.clock.now();
        let set = web.app.policies.current();
        let mut body = String::from("<p>Policies are files in the policies folder; change them there and reload (<code>penstock policy reload</code>).</p>");
        for p in policies_list(&web).await? {
            let window =
                set.policies.iter().find(|q| q.name == p.name).map(|q| window_text(&web, q, now)).unwrap_or_default();
            let _ = write!(
                body,
                "<article id=\"policy-{n}\" aria-labelledby=\"policy-{n}-h\"><h2 id=\"policy-{n}-h\">{n}</h2><dl>\
                 <dt>File</dt><dd><code>{file}</code></dd><dt>Description</dt><dd>{desc}</dd>\
                 <dt>Who may request</dt><dd>{req}</dd><dt>Who approves</dt><dd>{appr} ({required} needed)</dd>\
                 <dt>Longest access</dt><dd>{max}</dd><dt>Maintenance window</dt><dd>{window}</dd>\
                 <dt>Targets governed</dt><dd>{targets}</dd></dl></article>",
                n = esc(&p.name),
                file = esc(&p.file),
                desc = esc(&p.description),
                req = esc(&p.requesters.join(", ")),
                appr = esc(&p.approvers.join(", ")),
                required = p.required,
                max = access::fmt_duration(p.max_duration_secs),
                targets = if p.targets.is_empty() { "none".to_string() } else { esc(&p.targets.join(", ")) },
            );
        }
        let ungoverned: Vec<String> = targets::list(&web.app)
            .await?
            .into_iter()
            .filter(|t| set.for_target(t).is_none())
            .map(|t| esc(&t.name))
            .collect();
        let _ = write!(
            body,
            "<p id=\"ungoverned\">Targets no policy governs (reachable only with an admin grant): {}</p>",
            if ungoverned.is_empty() { "none".to_string() } else { ungoverned.join(", ") }
        );
        layout(&web, &c, "Policies", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/users") }))
        .route("/admin/users", get(users_page).post(add_user_form))
        .route("/admin/users/{name}/disable", post(disable_form))
        .route("/admin/users/{name}/reset-mfa", post(reset_mfa_form))
        .route("/admin/users/{name}/keys", post(add_key_form))
        .route("/admin/users/{name}/keys/remove", post(remove_key_form))
        .route("/admin/targets", get(targets_page).post(add_target_form))
        .route("/admin/targets/fetch", post(fetch_form))
        .route("/admin/policies", get(policies_page))
}
