//! The admin API server: HTTP/JSON on the site server's Unix socket (paths in [`crate::api`]),
//! a thin mapping onto the site server's actions. It is the only place that knows HTTP status
//! codes: [`SiteError`]s become them here. Access is the socket file's permissions (0600).

use crate::api::{
    AddAddress, AddDp, AddGroup, AddSite, AddressInfo, AddressSchedule, ApiError, CreatePackage,
    Done, Members, SenderKind, SetSchedule, SiteDetail, SiteInfo, Targets,
};
use crate::site_server::SiteServer;
use crate::site_server::error::SiteError;
use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// A refusal as the API answers it: an HTTP status and the one-line [`ApiError`].
struct Refusal(StatusCode, String);

impl From<SiteError> for Refusal {
    fn from(e: SiteError) -> Refusal {
        let status = match &e {
            SiteError::NoDp(_)
            | SiteError::NoSite(_)
            | SiteError::NoAddress { .. }
            | SiteError::NoSourceDp { .. }
            | SiteError::NoGroup(_)
            | SiteError::NoPackage(_)
            | SiteError::SourceUnreadable { .. } => StatusCode::NOT_FOUND,
            SiteError::Invalid(_) | SiteError::Snapshot { .. } => StatusCode::BAD_REQUEST,
            SiteError::Conflict(_) => StatusCode::CONFLICT,
            SiteError::Store(_) | SiteError::Library(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

/// A JSON body: a malformed one, or one with an unknown field, is refused in the API's JSON
/// error form naming the field.
struct Body<T>(T);

impl<St: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<St> for Body<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &St) -> Result<Body<T>, Refusal> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|e: JsonRejection| bad_request("request body", &e.body_text()))
    }
}

/// Path segments, refused in the JSON error form when they do not fit.
struct Seg<T>(T);

impl<St: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<St> for Seg<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Seg<T>, Refusal> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Seg(v))
            .map_err(|e: PathRejection| bad_request("request path", &e.body_text()))
    }
}

/// A query string; an unknown parameter is refused by name.
struct Q<T>(T);

impl<St: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<St> for Q<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Q<T>, Refusal> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e: QueryRejection| bad_request("query", &e.body_text()))
    }
}

fn bad_request(what: &str, reason: &str) -> Refusal {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    Refusal(
        StatusCode::BAD_REQUEST,
        format!("{what}: {reason}; use a `freight` of the same version as freightd"),
    )
}

/// Who is at the other end of the admin socket (`SO_PEERCRED`), for the audit trail.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The caller's user ID (`u32::MAX` if the kernel could not say).
    pub uid: u32,
    /// Its process ID, when known.
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Caller {
        match stream.io().peer_cred() {
            Ok(c) => Caller {
                uid: c.uid(),
                pid: c.pid(),
            },
            Err(_) => Caller {
                uid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Records every request that may change something (all but GET) with its caller and answer.
async fn audit(
    State(s): S,
    ConnectInfo(c): ConnectInfo<Caller>,
    req: Request,
    next: Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    if method != Method::GET {
        s.audit_admin(c.uid, c.pid, method.as_str(), &path, resp.status().as_u16());
    }
    resp
}

type S = State<Arc<SiteServer>>;
type R<T> = Result<Json<T>, Refusal>;

fn done(msg: String) -> R<Done> {
    Ok(Json(Done { done: msg }))
}

/// The routes of the admin API. Serve it with connect info ([`Caller`]), as `freightd` does:
/// `axum::serve(listener, router(site).into_make_service_with_connect_info::<Caller>())`.
pub fn router(site: Arc<SiteServer>) -> Router {
    Router::new()
        .route("/v1/dps", get(dps).post(add_dp))
        .route("/v1/dps/{name}", get(dp).delete(remove_dp))
        .route("/v1/dps/{name}/schedule", put(schedule))
        .route("/v1/dpgroups", get(groups).post(add_group))
        .route("/v1/dpgroups/{name}", delete(delete_group))
        .route("/v1/dpgroups/{name}/members", post(add_members))
        .route("/v1/dpgroups/{name}/members/{dp}", delete(remove_member))
        .route("/v1/packages", get(packages).post(create_package))
        .route("/v1/packages/{id}", get(package).delete(remove_package))
        .route("/v1/packages/{id}/update", post(update_package))
        .route("/v1/packages/{id}/distribute", post(distribute))
        .route("/v1/packages/{id}/redistribute", post(redistribute))
        .route("/v1/packages/{id}/validate", post(validate))
        .route("/v1/status", get(status))
        .route("/v1/messages", get(messages))
        .route("/v1/progress", get(progress))
        .route("/v1/sends", get(sends))
        .route("/v1/courier", get(courier_list))
        .route("/v1/courier/incoming", post(courier_receive))
        .route("/v1/courier/{id}/outgoing", post(courier_outgoing))
        .route("/v1/sites", get(sites))
        .route("/v1/sites/children", post(add_child))
        .route("/v1/sites/below", get(sites_below))
        .route("/v1/sites/parent", put(set_parent))
        .route("/v1/sites/{code}", get(site_detail).delete(remove_site))
        .route("/v1/addresses", get(addresses).post(add_address))
        .route("/v1/addresses/{site}", get(address).delete(remove_address))
        .route("/v1/addresses/{site}/schedule", put(address_schedule))
        .method_not_allowed_fallback(|| async {
            Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "this admin API path does not take that method; use a `freight` of the same version as freightd".into(),
            )
        })
        .fallback(|| async {
            Refusal(
                StatusCode::NOT_FOUND,
                "no such admin API path; use a `freight` of the same version as freightd".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(site.clone(), audit))
        .with_state(site)
}

async fn dps(State(s): S) -> R<Vec<crate::api::DpInfo>> {
    Ok(Json(s.dps()?))
}
async fn add_dp(State(s): S, Body(a): Body<AddDp>) -> R<crate::api::DpInfo> {
    Ok(Json(s.add_dp(a)?))
}
async fn dp(State(s): S, Seg(name): Seg<String>) -> R<crate::api::DpDetail> {
    Ok(Json(s.dp_detail(&name)?))
}
async fn remove_dp(State(s): S, Seg(name): Seg<String>) -> R<Done> {
    s.remove_dp(&name)?;
    done(format!("removed DP {name}"))
}
async fn schedule(
    State(s): S,
    Seg(name): Seg<String>,
    Body(b): Body<SetSchedule>,
) -> R<crate::api::DpInfo> {
    Ok(Json(s.set_schedule(&name, &b.throttle)?))
}
async fn groups(State(s): S) -> R<Vec<crate::api::GroupInfo>> {
    Ok(Json(s.groups()?))
}
async fn add_group(State(s): S, Body(g): Body<AddGroup>) -> R<crate::api::GroupInfo> {
    Ok(Json(s.add_group(g)?))
}
async fn delete_group(State(s): S, Seg(name): Seg<String>) -> R<Done> {
    s.delete_group(&name)?;
    done(format!("deleted DP group {name}"))
}
async fn add_members(
    State(s): S,
    Seg(name): Seg<String>,
    Body(m): Body<Members>,
) -> R<crate::api::GroupInfo> {
    Ok(Json(s.add_group_members(&name, &m.dps)?))
}
async fn remove_member(
    State(s): S,
    Seg((name, dp)): Seg<(String, String)>,
) -> R<crate::api::GroupInfo> {
    Ok(Json(s.remove_group_member(&name, &dp)?))
}
async fn packages(State(s): S) -> R<Vec<crate::api::PackageInfo>> {
    Ok(Json(s.packages()?))
}
async fn create_package(State(s): S, Body(p): Body<CreatePackage>) -> R<crate::api::PackageInfo> {
    Ok(Json(s.create_package(p).await?))
}
async fn package(State(s): S, Seg(id): Seg<String>) -> R<crate::api::PackageDetail> {
    Ok(Json(s.package_detail(&id)?))
}
async fn update_package(State(s): S, Seg(id): Seg<String>) -> R<crate::api::PackageInfo> {
    Ok(Json(s.update_package(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DpQuery {
    dp: Option<String>,
}

async fn remove_package(State(s): S, Seg(id): Seg<String>, Q(q): Q<DpQuery>) -> R<Done> {
    let n = s.remove_package(&id, q.dp.as_deref())?;
    done(match q.dp {
        Some(dp) => format!("removing {id} from DP {dp}"),
        None => format!("removing {id} from {n} DP(s) and deleting it"),
    })
}
async fn distribute(State(s): S, Seg(id): Seg<String>, Body(t): Body<Targets>) -> R<Done> {
    let n = s.distribute(&id, &t)?;
    done(format!("distributing {id} to {n} DP(s)"))
}
async fn redistribute(State(s): S, Seg(id): Seg<String>, Body(t): Body<Targets>) -> R<Done> {
    s.redistribute(&id, &t)?;
    done(format!("redistributing {id} to DP {}", t.dps.join(", ")))
}
async fn validate(State(s): S, Seg(id): Seg<String>, Body(t): Body<Targets>) -> R<Done> {
    let n = s.validate(&id, &t)?;
    done(format!("validating {id} on {n} DP(s)"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    package: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    package: Option<String>,
    since: Option<i64>,
    /// Only the audit trail (admin requests and refused peers) instead of everything else.
    #[serde(default)]
    audit: bool,
}

async fn status(State(s): S, Q(q): Q<StatusQuery>) -> R<Vec<crate::api::PackageStatus>> {
    Ok(Json(s.status(q.package.as_deref())?))
}
async fn messages(State(s): S, Q(q): Q<MessagesQuery>) -> R<Vec<crate::api::StatusMessage>> {
    Ok(Json(s.messages(
        q.package.as_deref(),
        q.since.unwrap_or(0),
        q.audit,
    )?))
}
async fn progress(State(s): S) -> R<Vec<crate::api::JobProgress>> {
    Ok(Json(s.jobs()?))
}

async fn sends(State(s): S) -> R<Vec<serde_json::Value>> {
    Ok(Json(s.sends()?))
}

async fn courier_list(State(s): S) -> R<Vec<serde_json::Value>> {
    Ok(Json(s.courier_list()?))
}
async fn courier_outgoing(
    State(s): S,
    Seg(id): Seg<i64>,
    Body(b): Body<crate::api::ParcelPath>,
) -> R<Done> {
    Ok(Json(s.create_outgoing(id, &b.path).await?))
}
async fn courier_receive(State(s): S, Body(b): Body<crate::api::ParcelPath>) -> R<Done> {
    Ok(Json(s.receive_incoming(&b.path).await?))
}

async fn sites(State(s): S) -> R<Vec<SiteInfo>> {
    Ok(Json(s.sites()?))
}
async fn sites_below(State(s): S) -> R<Vec<(String, String)>> {
    Ok(Json(s.sites_below()?))
}
async fn add_child(State(s): S, Body(a): Body<AddSite>) -> R<SiteInfo> {
    Ok(Json(s.add_child(a)?))
}
async fn set_parent(State(s): S, Body(a): Body<AddSite>) -> R<SiteInfo> {
    Ok(Json(s.set_parent(a)?))
}
async fn site_detail(State(s): S, Seg(code): Seg<String>) -> R<SiteDetail> {
    Ok(Json(s.site_detail(&code)?))
}
async fn remove_site(State(s): S, Seg(code): Seg<String>) -> R<Done> {
    let rel = s.remove_site(&code)?;
    done(format!("removed {} site {code}", rel.label()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KindQuery {
    kind: Option<SenderKind>,
}

async fn addresses(State(s): S) -> R<Vec<AddressInfo>> {
    Ok(Json(s.addresses()?))
}
async fn add_address(State(s): S, Body(a): Body<AddAddress>) -> R<AddressInfo> {
    Ok(Json(s.add_address(a)?))
}
async fn address(State(s): S, Seg(site): Seg<String>, Q(q): Q<KindQuery>) -> R<AddressInfo> {
    Ok(Json(s.address(&site, q.kind)?))
}
async fn address_schedule(
    State(s): S,
    Seg(site): Seg<String>,
    Q(q): Q<KindQuery>,
    Body(b): Body<AddressSchedule>,
) -> R<AddressInfo> {
    Ok(Json(s.set_address_schedule(&site, q.kind, &b)?))
}
async fn remove_address(State(s): S, Seg(site): Seg<String>, Q(q): Q<KindQuery>) -> R<Done> {
    let kind = s.remove_address(&site, q.kind)?;
    done(format!("removed the {kind} address to site {site}"))
}
