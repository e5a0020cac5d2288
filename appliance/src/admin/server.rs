//! The admin API server: HTTP/JSON on the site server's Unix socket (paths in [`crate::api`]),
//! a thin mapping onto the site server's actions. It is the only place that knows HTTP status
//! codes: [`SiteError`]s become them here. Access is the socket file's permissions (0600).

use crate::api::{AddDp, AddGroup, ApiError, CreatePackage, Done, Members, SetSchedule, Targets};
use crate::site_server::SiteServer;
use crate::site_server::error::SiteError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// A refusal as the API answers it: an HTTP status and the one-line [`ApiError`].
struct Refusal(StatusCode, String);

impl From<SiteError> for Refusal {
    fn from(e: SiteError) -> Refusal {
        let status = match &e {
            SiteError::NoDp(_)
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

type S = State<Arc<SiteServer>>;
type R<T> = Result<Json<T>, Refusal>;

fn done(msg: String) -> R<Done> {
    Ok(Json(Done { done: msg }))
}

/// The routes of the admin API.
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
        .fallback(|| async {
            Refusal(
                StatusCode::NOT_FOUND,
                "no such admin API path; use a `freight` of the same version as freightd".into(),
            )
        })
        .with_state(site)
}

async fn dps(State(s): S) -> R<Vec<crate::api::DpInfo>> {
    Ok(Json(s.dps()?))
}
async fn add_dp(State(s): S, Json(a): Json<AddDp>) -> R<crate::api::DpInfo> {
    Ok(Json(s.add_dp(a)?))
}
async fn dp(State(s): S, Path(name): Path<String>) -> R<crate::api::DpDetail> {
    Ok(Json(s.dp_detail(&name)?))
}
async fn remove_dp(State(s): S, Path(name): Path<String>) -> R<Done> {
    s.remove_dp(&name)?;
    done(format!("removed DP {name}"))
}
async fn schedule(
    State(s): S,
    Path(name): Path<String>,
    Json(b): Json<SetSchedule>,
) -> R<crate::api::DpInfo> {
    Ok(Json(s.set_schedule(&name, &b.throttle)?))
}
async fn groups(State(s): S) -> R<Vec<crate::api::GroupInfo>> {
    Ok(Json(s.groups()?))
}
async fn add_group(State(s): S, Json(g): Json<AddGroup>) -> R<crate::api::GroupInfo> {
    Ok(Json(s.add_group(g)?))
}
async fn delete_group(State(s): S, Path(name): Path<String>) -> R<Done> {
    s.delete_group(&name)?;
    done(format!("deleted DP group {name}"))
}
async fn add_members(
    State(s): S,
    Path(name): Path<String>,
    Json(m): Json<Members>,
) -> R<crate::api::GroupInfo> {
    Ok(Json(s.add_group_members(&name, &m.dps)?))
}
async fn remove_member(
    State(s): S,
    Path((name, dp)): Path<(String, String)>,
) -> R<crate::api::GroupInfo> {
    Ok(Json(s.remove_group_member(&name, &dp)?))
}
async fn packages(State(s): S) -> R<Vec<crate::api::PackageInfo>> {
    Ok(Json(s.packages()?))
}
async fn create_package(State(s): S, Json(p): Json<CreatePackage>) -> R<crate::api::PackageInfo> {
    Ok(Json(s.create_package(p).await?))
}
async fn package(State(s): S, Path(id): Path<String>) -> R<crate::api::PackageDetail> {
    Ok(Json(s.package_detail(&id)?))
}
async fn update_package(State(s): S, Path(id): Path<String>) -> R<crate::api::PackageInfo> {
    Ok(Json(s.update_package(&id).await?))
}

#[derive(Deserialize)]
struct DpQuery {
    dp: Option<String>,
}

async fn remove_package(State(s): S, Path(id): Path<String>, Query(q): Query<DpQuery>) -> R<Done> {
    let n = s.remove_package(&id, q.dp.as_deref())?;
    done(match q.dp {
        Some(dp) => format!("removing {id} from DP {dp}"),
        None => format!("removing {id} from {n} DP(s) and deleting it"),
    })
}
async fn distribute(State(s): S, Path(id): Path<String>, Json(t): Json<Targets>) -> R<Done> {
    let n = s.distribute(&id, &t)?;
    done(format!("distributing {id} to {n} DP(s)"))
}
async fn redistribute(State(s): S, Path(id): Path<String>, Json(t): Json<Targets>) -> R<Done> {
    s.redistribute(&id, &t)?;
    done(format!("redistributing {id} to DP {}", t.dps.join(", ")))
}
async fn validate(State(s): S, Path(id): Path<String>, Json(t): Json<Targets>) -> R<Done> {
    let n = s.validate(&id, &t)?;
    done(format!("validating {id} on {n} DP(s)"))
}

#[derive(Deserialize)]
struct StatusQuery {
    package: Option<String>,
    since: Option<i64>,
}

async fn status(State(s): S, Query(q): Query<StatusQuery>) -> R<Vec<crate::api::PackageStatus>> {
    Ok(Json(s.status(q.package.as_deref())?))
}
async fn messages(State(s): S, Query(q): Query<StatusQuery>) -> R<Vec<crate::api::StatusMessage>> {
    Ok(Json(
        s.messages(q.package.as_deref(), q.since.unwrap_or(0))?,
    ))
}
async fn progress(State(s): S) -> R<Vec<crate::api::JobProgress>> {
    Ok(Json(s.jobs()?))
}
